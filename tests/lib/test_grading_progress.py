"""course_lib.grading on a hanging attempt: bounds, what the learner sees meanwhile.

The first tests are pure (the status line, the notebook and terminal reporters); the
later ones grade a tiny course of their own in a subprocess, whose checks hang for
real (time.sleep), with bounds of a second or less.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from _grading_support import FAKE_CONFTEST

from course_lib import grading
from course_lib.grading import NOT_RUN, STUCK, Progress, grade, hung_message

# --- the status line --------------------------------------------------------------------


def test_the_status_line_names_the_running_check_and_when_it_is_stopped():
    progress = Progress(
        elapsed_s=7.2, done=1, total=4, exercise="0.1", running="Three sleeps.",
        running_s=2.4, bound_s=5.0, hung=(("0.1", "Two sleeps.", 5.0),),
    )  # fmt: skip
    assert progress.line("0.1") == (
        'Still checking 0.1 (7 s, 1/4 done): "Three sleeps." running for 2 s '
        "(stopped at 5 s if it hangs); 1 check hung so far"
    )
    # Grading every exercise: the line says which exercise the check is of.
    assert progress.line().startswith('Still checking (7 s, 1/4 done): 0.1 "Three sleeps."')
    assert Progress(elapsed_s=3.0).line("0.1") == "Still checking 0.1 (3 s): starting"


def _snapshots():
    """A run of exercise 0.1 seen four times a second: a quick check, then one that hangs."""
    out = []
    for tick in range(41):
        t = tick / 4
        if t < 1.5:
            out.append(Progress(t, 0, 3, "0.1", "Quick.", t - 1.0 if t >= 1 else 0.0, 5.0))
        elif t < 6.5:
            out.append(Progress(t, 1, 3, "0.1", "Hangs.", t - 1.5, 5.0))
        else:  # stopped at 5 s; the next check hangs too: 2 s, then the run ends
            out.append(
                Progress(t, 2, 3, "0.1", "Hangs too.", t - 6.5, 2.0, (("0.1", "Hangs.", 5.0),))
            )
    return out


def test_the_terminal_hears_nothing_from_a_quick_run_then_lines_naming_the_check():
    stream = io.StringIO()
    status = grading._StderrStatus("0.1", stream=stream)
    quick = [p for p in _snapshots() if p.elapsed_s < grading._SHOW_AFTER_S]
    for progress in quick:
        status(progress)
    assert stream.getvalue() == "", "a run that ends within seconds says nothing"
    for progress in _snapshots()[len(quick) :]:
        status(progress)
    lines = stream.getvalue().splitlines()
    assert lines[0] == (
        'grading: Still checking 0.1 (3 s, 1/3 done): "Hangs." running for 2 s '
        "(stopped at 5 s if it hangs)"
    )
    assert 'grading: "Hangs." hung: stopped after 5 s' in lines
    # A new check that has run a second is told at once; otherwise a line every 5 s.
    assert any('"Hangs too." running for 1 s (stopped at 2 s' in line for line in lines)
    assert len(lines) <= 5, lines
    # The run is over: the hang seen last is told, and nothing says it is still running.
    hung = (("0.1", "Hangs.", 5.0), ("0.1", "Hangs too.", 2.0))
    status(Progress(10.5, 3, 3, hung=hung, finished=True))
    assert stream.getvalue().splitlines()[len(lines) :] == [
        'grading: "Hangs too." hung: stopped after 2 s'
    ]


class _FakeHandle:
    def __init__(self, shown, calls):
        self.calls = calls
        calls.append(("display", shown))

    def update(self, shown):
        self.calls.append(("update", shown))


def test_a_notebook_gets_one_line_updated_in_place_then_a_last_word(monkeypatch):
    display_module = pytest.importorskip("IPython.display")
    calls: list = []

    def fake_display(shown, *, display_id=False):
        assert display_id is True, "a display handle, so that the line updates in place"
        return _FakeHandle(shown, calls)

    monkeypatch.setattr(display_module, "display", fake_display)
    status = grading._NotebookStatus("0.1")
    for progress in _snapshots():
        status(progress)
    status.finish()
    assert [kind for kind, _ in calls].count("display") == 1, "one line, not one per update"
    texts = [repr(shown) for _, shown in calls]
    assert texts[0].startswith("⏳ Still checking 0.1 (3 s, 1/3 done): \"Hangs.\" running")
    assert any('"Hangs too."' in text and "1 check hung so far" in text for text in texts)
    assert texts[-1] == "Checked 0.1 in 10 s: 1 check hung and was stopped."
    assert "<div" in calls[-1][1]._repr_html_()


def test_nothing_is_shown_in_a_notebook_for_a_quick_run(monkeypatch):
    display_module = pytest.importorskip("IPython.display")
    monkeypatch.setattr(display_module, "display", lambda *a, **k: pytest.fail("displayed"))
    status = grading._NotebookStatus("0.1")
    status(Progress(1.0, 3, 4))
    status.finish()


def test_the_grader_imports_ipython_only_inside_a_kernel():
    code = (
        "import sys, course_lib.grading as g\n"
        "assert isinstance(g._status(True, '0.1'), g._StderrStatus)\n"
        "assert g._status(False, '0.1') is None\n"
        "print('IPython' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


# --- hanging for real: a tiny course of its own ------------------------------------------


_TESTS_91 = '''
import pytest

MODULE = "ch99_fake"
pytestmark = pytest.mark.exercise("9.1")

def test_quick(ex):
    """Answers at once."""
    assert ex.answer() == 42

def test_hang_1(ex):
    """Hangs first."""
    ex.hang()

def test_hang_2(ex):
    """Hangs again."""
    ex.hang()

def test_hang_3(ex):
    """Hangs a third time."""
    ex.hang()

def test_quick_again(ex):
    """Still answers."""
    assert ex.answer() == 42
'''

_TESTS_92 = '''
import pytest

MODULE = "ch99_fake"
pytestmark = pytest.mark.exercise("9.2")

def test_hang(ex):
    """Another exercise's hang."""
    ex.hang()
'''

_TESTS_STUCK = '''
import pytest

MODULE = "ch99_fake"
pytestmark = pytest.mark.exercise("9.3")

def test_swallows(ex):
    """Swallows the timeout."""
    ex.swallow()

def test_after(ex):
    """Comes after."""
    assert ex.answer() == 42
'''

_TESTS_IN_A_TASK = '''
import pytest

MODULE = "ch99_fake"
pytestmark = pytest.mark.exercise("9.4")

def test_hangs_in_a_task(ex):
    """Hangs in a task it started."""
    ex.hang_in_a_task()

def test_after(ex):
    """Comes after."""
    assert ex.answer() == 42
'''

_MODULE = '''
import asyncio
import time

def answer():
    """Exercise 9.1: the answer."""
    return 42

def hang():
    time.sleep(600)

def hang_in_a_task():
    # The timeout lands in the child (blocked in time.sleep), whose task keeps it as its
    # exception; the main task spins on sleep(0) as if nothing happened.
    async def child():
        time.sleep(600)

    async def main():
        task = asyncio.ensure_future(child())
        while True:
            await asyncio.sleep(0)

    asyncio.run(main())

def swallow():
    while True:
        try:
            time.sleep(600)
        except BaseException:  # the timeout too: the grader must kill the run
            pass
'''


def _course(tmp_path: Path, **test_files: str) -> Path:
    tests = tmp_path / "tests" / "exercises"
    tests.mkdir(parents=True)
    (tests / "conftest.py").write_text(FAKE_CONFTEST)
    for name, text in test_files.items():
        (tests / f"{name}.py").write_text(text)
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ch99_fake.py").write_text(_MODULE)
    # The course's own stub: where the titles come from, whatever the target.
    (tmp_path / "exercises").mkdir()
    (tmp_path / "exercises" / "ch99_fake.py").write_text(_MODULE)
    return tests


def test_after_one_hang_an_exercises_later_hangs_are_stopped_sooner_and_said_meanwhile(
    tmp_path,
):
    tests = _course(tmp_path, test_ch99_a=_TESTS_91, test_ch99_b=_TESTS_92)
    seen: list[Progress] = []
    stream = io.StringIO()
    terminal = grading._StderrStatus("", stream=stream)
    terminal.show_after_s = terminal.slow_s = 0.2  # lines however fast this machine is

    def progress(snapshot: Progress) -> None:
        seen.append(snapshot)
        terminal(snapshot)

    report = grade(
        tmp_path / "fakepkg",
        tests_dir=tests,
        per_test_timeout_s=1,
        after_hang_timeout_s=0.5,
        progress=progress,
    )
    rows = {row.description: row for row in report.checks}
    assert rows["Answers at once."].passed and rows["Still answers."].passed, str(report)
    assert rows["Hangs first."].message == hung_message(1)
    # The same exercise's later hangs: the shorter bound, not the full one each.
    assert rows["Hangs again."].message == hung_message(0.5)
    assert rows["Hangs a third time."].message == hung_message(0.5)
    # Another exercise keeps the full bound: its code may be fine.
    assert rows["Another exercise's hang."].message == hung_message(1)
    assert "Exercise 9.1 · answer: not solved yet (2/5 checks passed)" in str(report)

    # Meanwhile: which check runs, for how long, its bound, and what hung so far.
    assert any(p.running == "Hangs first." and p.bound_s == 1 for p in seen)
    assert any(p.running == "Hangs again." and p.bound_s == 0.5 for p in seen)
    assert seen[-1].total == 6
    assert ("9.1", "Hangs first.", 1.0) in seen[-1].hung
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    told = stream.getvalue()
    assert '9.1 "Hangs first." running for' in told
    assert 'grading: 9.1 "Hangs first." hung: stopped after 1 s' in told


def test_a_check_that_swallows_the_timeout_is_killed_and_the_rest_not_run(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(grading, "_STUCK_GRACE_S", 1.0)
    tests = _course(tmp_path, test_ch99_stuck=_TESTS_STUCK)
    # The whole run's deadline is far: the grader must see the stuck check by itself.
    report = grade(tmp_path / "fakepkg", tests_dir=tests, per_test_timeout_s=1, timeout_s=120)
    rows = {row.description: row for row in report.checks}
    assert rows["Swallows the timeout."].message == STUCK, str(report)
    assert rows["Comes after."].message == NOT_RUN
    assert "except BaseException" in STUCK


def test_a_timeout_that_lands_in_a_task_the_check_started_is_raised_again(tmp_path):
    tests = _course(tmp_path, test_ch99_task=_TESTS_IN_A_TASK)
    report = grade(tmp_path / "fakepkg", tests_dir=tests, per_test_timeout_s=1, timeout_s=120)
    rows = {row.description: row for row in report.checks}
    # Not STUCK (killed, the checks after it lost): stopped, and the next check ran.
    assert rows["Hangs in a task it started."].message == hung_message(1), str(report)
    assert rows["Comes after."].passed


_TESTS_CLEANUP = '''
import time
import pytest

MODULE = "ch99_fake"
pytestmark = pytest.mark.exercise("9.5")

@pytest.fixture
def stuck_cleanup():
    yield
    time.sleep(600)  # as pytest-asyncio's loop waits for a task that ignores cancel()

def test_fails_then_its_cleanup_hangs(ex, stuck_cleanup):
    """Fails, then its cleanup hangs."""
    assert ex.answer() == 41, "the answer is off by one"

def test_passes_then_its_cleanup_hangs(ex, stuck_cleanup):
    """Passes, then its cleanup hangs."""
    assert ex.answer() == 42

def test_after(ex):
    """Comes after."""
    assert ex.answer() == 42
'''


def test_the_cleanup_after_a_check_has_a_bound_too(tmp_path):
    # pytest-timeout stops its timer when a check fails: a cleanup that then hung
    # was only ended by killing the run, and the checks after it were lost.
    tests = _course(tmp_path, test_ch99_cleanup=_TESTS_CLEANUP)
    report = grade(
        tmp_path / "fakepkg", tests_dir=tests, per_test_timeout_s=1, after_hang_timeout_s=1
    )
    rows = {row.description: row for row in report.checks}
    assert rows["Fails, then its cleanup hangs."].message == "the answer is off by one"
    assert rows["Passes, then its cleanup hangs."].message == hung_message(1), str(report)
    assert rows["Comes after."].passed, str(report)
