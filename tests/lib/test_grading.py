"""course_lib.grading: the rows a learner reads, the table, the runner and the CLI.

The first tests are pure (message shaping, rendering); the later ones start a
grading subprocess each, a second or two apiece.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import looptime
import pytest
from _grading_support import FAKE_CONFTEST

from course_lib import grading
from course_lib._grading_plugin import human_message, import_message
from course_lib.grading import (
    NOT_IMPLEMENTED,
    TOO_LONG,
    UNEXPECTED,
    Check,
    GradeReport,
    Outcome,
    check,
    grade,
)

ROOT = Path(grading.__file__).resolve().parents[1]


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # the test wants whatever it raised
        return exc
    raise AssertionError("did not raise")


# --- message shaping --------------------------------------------------------------------


def test_a_stub_says_not_implemented_yet():
    assert human_message(NotImplementedError("Exercise 0.1: gather_in_order")) == NOT_IMPLEMENTED


def test_a_stub_inside_a_task_group_still_says_not_implemented_yet():
    group = ExceptionGroup("unhandled errors in a TaskGroup", [NotImplementedError("x")])
    assert human_message(group) == NOT_IMPLEMENTED


def test_the_assertion_message_is_the_test_authors_words_without_introspection():
    def failing():
        got = [1, 2]
        assert got == [2, 1], f"got {got!r}: in the order they finished?\nsecond line"

    exc = _raised(failing)
    assert "assert" in str(exc)  # pytest rewrote it: the introspection is there...
    assert human_message(exc) == "got [1, 2]: in the order they finished?"  # ...and gone


def test_an_assertion_without_a_message_says_it_did_not_behave_as_expected():
    def failing():
        got = [1, 2]
        assert got == [2, 1]

    assert human_message(_raised(failing)) == UNEXPECTED
    assert human_message(AssertionError()) == UNEXPECTED


def test_an_assertion_the_learners_code_raised_is_reported_as_raised():
    exc = AssertionError("queue must not be empty")
    assert human_message(exc, raised_by_learner=True) == (
        "raised AssertionError: queue must not be empty"
    )


def test_a_pytest_timeout_says_when_it_stopped_the_check_and_what_to_look_for():
    exc = _raised(lambda: pytest.fail("Timeout (>5.0s) from pytest-timeout."))
    message = human_message(exc)
    assert message == grading.hung_message(5)
    assert message.startswith("took too long: stopped after 5 s.")
    # What hangs in real time on a virtual clock: the three things to look for.
    assert "await nothing ever wakes" in message and "sleep(0)" in message
    assert "time.sleep()" in message
    assert len(message) <= 160, "one line in the table"


def test_looptime_giving_up_says_it_took_too_long():
    assert human_message(looptime.IdleTimeoutError("idle")) == TOO_LONG
    assert human_message(looptime.LoopTimeoutError("end")) == TOO_LONG


def test_other_exceptions_name_their_type_and_first_line():
    assert human_message(TypeError("bad operand\nmore detail")) == "raised TypeError: bad operand"
    assert human_message(KeyError()) == "raised KeyError"


def test_an_exception_group_names_what_is_inside():
    group = ExceptionGroup("errors", [ValueError("broken"), KeyError("k")])
    assert human_message(group) == "raised ExceptionGroup of ValueError: broken and 1 more"


def test_did_not_raise_reads_as_a_sentence():
    def failing():
        with pytest.raises(ValueError):
            pass

    assert human_message(_raised(failing)) == "did not raise ValueError"


def test_long_messages_are_cut_to_one_short_line():
    message = human_message(RuntimeError("x" * 1000))
    assert len(message) <= 160 and message.endswith("…")


def test_import_errors_name_the_learners_file():
    path = "exercises/ch00_warmup.py"
    syntax = SyntaxError("invalid syntax", (path, 12, 5, "def f(:\n"))
    assert import_message(syntax, path) == f"{path} has a syntax error on line 12: invalid syntax"
    missing = ModuleNotFoundError("No module named ...", name="exercises.ch00_warmup")
    assert import_message(missing, path, module="exercises.ch00_warmup") == f"{path} was not found"
    name_error = NameError("name 'asyncoi' is not defined")
    assert import_message(name_error, path, module="exercises.ch00_warmup", line=3) == (
        f"{path} could not be imported (line 3): it raised NameError: "
        "name 'asyncoi' is not defined"
    )


def test_a_library_the_module_imports_is_not_the_module_missing():
    path = "exercises/ch00_warmup.py"
    missing = ModuleNotFoundError("No module named 'trio'", name="trio")
    message = import_message(missing, path, module="exercises.ch00_warmup")
    assert message == f"{path} could not be imported: it raised ModuleNotFoundError: " + (
        "No module named 'trio'"
    )


# --- the report -------------------------------------------------------------------------


def _report() -> GradeReport:
    exercises = (
        grading.Exercise("0.1", "ch00_warmup", "gather_in_order"),
        grading.Exercise("1.2", "ch01_tasks", "first_done"),
    )
    checks = (
        Check("0.1", "Results come back in the order given.", True),
        Check("0.1", "Three <1-second> sleeps take 1 second.", False, "took 3.0 s"),
        Check("1.2", "Returns the first result.", False, NOT_IMPLEMENTED),
        Check("1.2", "Works on Redis.", False, "no redis-server", Outcome.SKIPPED),
    )
    return GradeReport("exercises", exercises, checks)


def test_counts_leave_skipped_checks_out():
    report = _report()
    assert (report.passed, report.total, report.ok) == (1, 3, False)
    assert report.summary == "0/2 exercises solved, 1/3 checks passed"
    assert GradeReport("x", report.exercises[:1], report.checks[:1]).ok


def test_a_check_knows_its_outcome_from_passed():
    assert Check("0.1", "d", True).outcome is Outcome.PASSED
    assert Check("0.1", "d", False).outcome is Outcome.FAILED


def test_the_text_table_shows_descriptions_marks_and_messages_aligned():
    text = str(_report())
    assert text == repr(_report())
    assert "Chapter 0 · warmup" in text and "Chapter 1 · tasks" in text
    assert "Exercise 0.1 · gather_in_order: not solved yet (1/2 checks passed)" in text
    assert "✓  Results come back in the order given." in text
    assert "✗  Returns the first result." in text and NOT_IMPLEMENTED in text
    assert "–  Works on Redis." in text
    messages = [line.index("took 3.0 s") for line in text.splitlines() if "took 3.0" in line]
    columns = [line.index(NOT_IMPLEMENTED) for line in text.splitlines() if NOT_IMPLEMENTED in line]
    assert messages == columns, "the message column is aligned"
    assert text.endswith("0/2 exercises solved, 1/3 checks passed")
    assert "Traceback" not in text


def test_one_exercise_is_a_plain_table_without_chapters():
    report = GradeReport("exercises", _report().exercises[:1], _report().checks[:2])
    assert str(report).splitlines()[0].startswith("Exercise 0.1 · gather_in_order")
    assert "Chapter" not in str(report)


def test_the_html_table_escapes_and_marks():
    page = _report()._repr_html_()
    assert page.startswith("<table") and page.endswith("</table>")
    assert "Three &lt;1-second&gt; sleeps" in page and "<1-second>" not in page
    assert "✓" in page and "✗" in page and NOT_IMPLEMENTED in page
    assert "Traceback" not in page


def test_the_json_report_lists_every_check():
    data = _report().to_json()
    assert [e["id"] for e in data["exercises"]] == ["0.1", "1.2"]
    assert data["exercises"][1]["checks"][1]["outcome"] == "skipped"
    assert (data["passed"], data["total"], data["ok"]) == (1, 3, False)


# --- discovery and arguments ------------------------------------------------------------


def test_exercises_are_discovered_from_the_grading_tests():
    known = grading.discover(ROOT / "tests" / "exercises")
    assert "0.1" in known
    assert known["0.1"].module == "ch00_warmup"
    assert known["0.1"].title == "gather_in_order"
    assert list(known) == sorted(known, key=grading._id_key)


def test_titles_name_what_each_exercise_defines():
    known = grading.discover(ROOT / "tests" / "exercises")
    assert known["2.3"].title == "Deadline"  # a class
    assert known["4.1"].title == "claim and ack"  # two functions, in the stub's order


def _course_copy(tmp_path: Path) -> Path:
    """The course's grading tests, stubs and model answers, as a learner's checkout."""
    for folder in ("tests/exercises", "exercises", "solutions"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__py*"))
    return tmp_path / "tests" / "exercises"


def test_the_title_stays_once_the_learner_has_replaced_the_stubs_raise(tmp_path):
    tests = _course_copy(tmp_path)
    stub = tmp_path / "exercises" / "ch00_warmup.py"
    # Solved: the raise NotImplementedError("Exercise 0.1: gather_in_order") is gone.
    stub.write_text((ROOT / "solutions" / "ch00_warmup.py").read_text())
    assert "NotImplementedError" not in stub.read_text()
    report = GradeReport("exercises", (grading.discover(tests)["0.1"],), ())
    assert str(report).startswith("Exercise 0.1 · gather_in_order: not solved yet"), str(report)


def test_the_title_survives_a_stub_without_its_docstring_or_that_does_not_parse(tmp_path):
    tests = _course_copy(tmp_path)
    (tmp_path / "exercises" / "ch00_warmup.py").write_text(
        "async def gather_in_order(*aws):\n    return [await a for a in aws]\n\ndef broken(:\n"
    )
    assert grading.discover(tests)["0.1"].title == "gather_in_order"  # from solutions/


def test_a_docstring_after_a_signature_over_several_lines_names_its_def():
    source = textwrap.dedent(
        '''
        class Pool:
            """Exercise 9.2: a pool."""

            def helper(self):
                """Not an exercise."""

        async def wait_all(
            tasks: list[int],
            *,
            timeout_s: float | None = None,
        ) -> bool:
            r"""Exercise 9.1: wait."""
            raise NotImplementedError("Exercise 9.1: wait_all")
        '''
    )
    assert grading._docstring_owners(source) == [("9.2", "Pool"), ("9.1", "wait_all")]


def test_exercise_ids_sort_as_numbers():
    assert sorted(["0.10", "0.9", "10.1", "2.1", "?"], key=grading._id_key) == [
        "0.9", "0.10", "2.1", "10.1", "?",
    ]  # fmt: skip


def test_an_unknown_exercise_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown exercise '9\.9'.*0\.1"):
        check("9.9")


def test_targets_are_package_names_or_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert grading._resolve_target("solutions") == ("solutions", None)
    (tmp_path / "alice").mkdir()
    assert grading._resolve_target("alice") == ("alice", tmp_path / "alice")
    assert grading._resolve_target(tmp_path / "alice") == ("alice", tmp_path / "alice")
    with pytest.raises(ValueError, match="no such folder"):
        grading._resolve_target("./bob")
    with pytest.raises(ValueError, match="neither"):
        grading._resolve_target("not a name")
    monkeypatch.setenv("COURSE_TARGET", "solutions")
    assert grading._resolve_target(None) == ("solutions", None)


# --- grading for real, in a subprocess --------------------------------------------------


def _submission(tmp_path: Path, who: str, source: Path = ROOT / "solutions") -> Path:
    # Named "exercises" like the repository's own package, as a learner would hand it in.
    folder = tmp_path / "submissions" / who / "exercises"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def test_a_submitted_folder_is_graded_instead_of_the_repositorys_package(tmp_path):
    folder = _submission(tmp_path, "alice")
    report = check("0.1", target=folder)
    assert report.ok, str(report)  # the repository's exercises/ are stubs: it graded the copy
    assert report.passed == report.total > 0
    assert report.target == str(folder)


def test_a_module_that_does_not_import_says_which_file_and_line(tmp_path):
    folder = _submission(tmp_path, "bob")
    module = folder / "ch00_warmup.py"
    module.write_text(module.read_text() + "\ndef broken(:\n    pass\n")
    report = check("0.1", target=folder)
    assert not report.ok and report.passed == 0
    lines = len(module.read_text().splitlines())
    for row in report.checks:
        assert row.message.startswith(f"{module} has a syntax error on line {lines - 1}"), row
    assert "Traceback" not in str(report) and "def broken" not in str(report)


def test_a_partly_solved_exercise_fails_only_the_checks_it_should(tmp_path):
    folder = _submission(tmp_path, "carol")
    # Empty calls work; anything else raises before awaiting the coroutines, which then
    # warn "never awaited": that must not fail the passing check run after them.
    (folder / "ch00_warmup.py").write_text(
        textwrap.dedent(
            """
            async def gather_in_order(*aws):
                if aws:
                    raise NotImplementedError("Exercise 0.1: gather_in_order")
                return []
            """
        )
    )
    report = check("0.1", target=folder)
    by_description = {row.description: row for row in report.checks}
    assert by_description["No awaitables at all gives an empty list."].passed, str(report)
    assert report.passed == 1, str(report)
    assert {row.message for row in report.checks if not row.passed} == {NOT_IMPLEMENTED}


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "course_lib.grading", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def test_the_cli_prints_json_from_any_folder(tmp_path):
    result = _run_cli("--target", "solutions", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["target"] == "solutions" and data["ok"]
    assert data["solved"] == len(data["exercises"]) > 0
    assert all(c["passed"] for e in data["exercises"] for c in e["checks"])


def test_the_cli_exits_0_when_nothing_is_solved(tmp_path):
    result = _run_cli("--target", str(_submission(tmp_path, "dan", ROOT / "exercises")), cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert NOT_IMPLEMENTED in result.stdout
    assert "exercises solved" in result.stdout and "checks passed" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--exercise", "9.9"],
        ["--target", "./no/such/folder"],
        ["--bogus"],
        ["--timeout", "0"],
        ["--timeout", "-5"],
        ["--timeout", "nan"],
    ],
)
def test_the_cli_exits_2_on_a_usage_error(args, capsys):
    with pytest.raises(SystemExit) as info:
        sys.exit(grading.main(args))
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err


# --- hangs: a tiny course of its own ------------------------------------------------------

_FAKE_TESTS = '''
import pytest

MODULE = "ch99_fake"
pytestmark = pytest.mark.exercise("9.1")

def test_quick(ex):
    """Answers at once."""
    assert ex.answer() == 42

def test_hangs(ex):
    """Comes back."""
    ex.hang()

def test_after(ex):
    """Runs after the hang."""
    assert ex.answer() == 42
'''

_FAKE_MODULE = '''
import os, subprocess, sys, time

def answer():
    return 42

def hang():
    pidfile = os.environ.get("FAKE_CHILD_PIDFILE")
    if pidfile:  # something the learner's code started: the kill must reach it too
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open(pidfile, "w") as f:
            f.write(str(child.pid))
    time.sleep(600)
'''


@pytest.fixture
def fake_course(tmp_path: Path) -> Path:
    tests = tmp_path / "tests" / "exercises"
    tests.mkdir(parents=True)
    (tests / "conftest.py").write_text(FAKE_CONFTEST)
    (tests / "test_ch99_fake.py").write_text(_FAKE_TESTS)
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ch99_fake.py").write_text(_FAKE_MODULE)
    return tests


def test_a_hung_check_times_out_and_the_others_still_run(fake_course):
    report = grade(
        fake_course.parents[1] / "fakepkg", tests_dir=fake_course, per_test_timeout_s=1
    )
    rows = {row.description: row for row in report.checks}
    assert rows["Answers at once."].passed
    assert rows["Comes back."].message == grading.hung_message(1)
    assert rows["Runs after the hang."].passed


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie is dead, only not yet reaped


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc to see what is alive")
def test_a_run_past_its_deadline_is_killed_with_everything_it_started(
    fake_course, tmp_path, monkeypatch
):
    pidfile = tmp_path / "child.pid"
    monkeypatch.setenv("FAKE_CHILD_PIDFILE", str(pidfile))
    start = time.monotonic()
    package = fake_course.parents[1] / "fakepkg"
    report = grade(package, tests_dir=fake_course, timeout_s=8, per_test_timeout_s=60)
    assert time.monotonic() - start < 20
    rows = {row.description: row for row in report.checks}
    assert rows["Answers at once."].passed, str(report)
    assert rows["Comes back."].message == TOO_LONG
    # It never started: it did not take too long, it was not run.
    assert rows["Runs after the hang."].message == grading.NOT_RUN
    assert not report.ok
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the grader left the learner's child process running"


def test_a_run_that_hangs_before_any_test_reports_every_exercise_as_too_long(fake_course):
    (fake_course / "conftest.py").write_text("import time\ntime.sleep(600)\n" + FAKE_CONFTEST)
    package = fake_course.parents[1] / "fakepkg"
    report = grade(package, tests_dir=fake_course, timeout_s=3)
    assert [(r.exercise, r.passed, r.message) for r in report.checks] == [("9.1", False, TOO_LONG)]


def test_a_grader_that_cannot_run_says_why(fake_course):
    (fake_course / "conftest.py").write_text("raise RuntimeError('conftest is broken')\n")
    package = fake_course.parents[1] / "fakepkg"
    with pytest.raises(grading.GradingError, match="conftest is broken"):
        grade(package, tests_dir=fake_course)
