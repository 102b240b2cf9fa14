"""course_lib.grading against careless and hostile submissions (issue 13).

Each test grades a copy of the model answers with one thing done to it (_hostile.py),
or a tiny course of its own, in a subprocess: a few seconds apiece.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _grading_support import FAKE_CONFTEST
from _hostile import submission

from course_lib import grading
from course_lib.grading import grade

ROOT = Path(grading.__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")


def _rows(report: grading.GradeReport, exercise: str) -> list[grading.Check]:
    return [c for c in report.checks if c.exercise == exercise]


# --- grades that come out wrong -----------------------------------------------------------


def test_a_module_missing_from_a_submission_is_not_found_whatever_is_installed(tmp_path):
    # The editable install maps `exercises` to the course's own folder: a module the
    # submission lacks must not be taken from there.
    folder = submission(tmp_path, "missing_module")
    report = grade(folder, ["4.1", "0.1"])
    assert report.solved("0.1"), str(report)
    assert _rows(report, "4.1") and not report.solved("4.1")
    for row in _rows(report, "4.1"):
        assert row.message.endswith("exercises/ch04_distributed.py was not found"), str(report)


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("sys_exit_at_import", "it raised SystemExit: 0"),
        ("base_exception_at_import", "it raised BaseException: bye"),
        ("keyboard_interrupt_at_import", "it raised KeyboardInterrupt"),
        ("os_exit_at_import", "it exited Python"),
    ],
)
def test_an_exit_at_import_fails_only_that_modules_exercises(tmp_path, monkeypatch, case, said):
    monkeypatch.chdir(tmp_path)  # messages name the file from here: short enough to read whole
    submission(tmp_path, case)
    report = grade(Path(case) / "exercises", ["0.1", "1.1"])
    assert report.solved("1.1"), str(report)
    rows = _rows(report, "0.1")
    assert rows and not any(row.passed for row in rows)
    for row in rows:
        assert row.message.startswith(f"{case}/exercises/ch00_warmup.py could not be imported")
        assert said in row.message, str(report)
        assert row.outcome is grading.Outcome.FAILED


def test_a_hang_at_import_is_imported_once_and_fails_its_module_at_once(tmp_path, monkeypatch):
    folder = submission(tmp_path, "hang_at_import")
    imports = tmp_path / "imports.txt"
    monkeypatch.setenv("HOSTILE_IMPORTS", str(imports))
    seen: list[grading.Progress] = []
    report = grade(folder, ["3.1", "3.4", "4.1"], per_test_timeout_s=1, progress=seen.append)
    assert report.solved("4.1"), str(report)  # a later chapter is graded, not "too long"
    rows = _rows(report, "3.1") + _rows(report, "3.4")
    assert len(rows) > 2 and not any(row.passed for row in rows)
    for row in rows:
        assert row.message.startswith(f"{folder / 'ch03_scheduling.py'} took too long to import")
    assert imports.read_text().splitlines() == ["imported"], "imported once, not per check"
    # While it hung, the progress named the check and its bound (item 7 of issue 13).
    hanging = [p for p in seen if p.exercise == "3.1" and p.running]
    assert hanging and hanging[-1].bound_s == 1
    assert hanging[-1].line("").startswith("Still checking")


def test_an_import_that_swallows_the_timeout_is_killed_and_the_rest_graded(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(grading, "_STUCK_GRACE_S", 1.0)
    monkeypatch.chdir(tmp_path)  # messages name the file from here: short enough to read whole
    submission(tmp_path, "stuck_at_import")
    report = grade(Path("stuck_at_import/exercises"), ["3.1", "4.1"], per_test_timeout_s=1)
    assert report.solved("4.1"), str(report)
    rows = _rows(report, "3.1")
    assert rows and not any(row.passed for row in rows)
    for row in rows:
        assert "took too long to import and could not be stopped" in row.message, str(report)


# --- resources: a tiny course of its own ---------------------------------------------------

_FAKE_TESTS = '''
import pytest

MODULE = "ch99_fake"
pytestmark = pytest.mark.exercise("9.1")

def test_flood(ex):
    """Prints a lot."""
    ex.flood()

def test_setsid_child(ex):
    """Starts a server in its own session."""
    ex.setsid_child()

def test_forked_child(ex):
    """Forks a child that keeps running."""
    ex.forked_child()

def test_exits(ex):
    """Exits Python, perhaps."""
    ex.exit_now()

def test_after(ex):
    """Answers at once."""
    assert ex.answer() == 42
'''

_FAKE_MODULE = '''
import os, subprocess, sys, time

def answer():
    return 42

def flood():
    if os.environ.get("FAKE_FLOOD_MB"):
        line = "x" * 1_000_000 + "\\n"
        for _ in range(int(os.environ["FAKE_FLOOD_MB"])):
            sys.stdout.write(line)
        raise AssertionError("printed too much")

def exit_now():
    if os.environ.get("FAKE_EXIT"):
        os._exit(3)

def _record(pid):
    with open(os.environ["FAKE_PIDS"], "a") as f:
        f.write(f"{pid}\\n")

def setsid_child():
    if os.environ.get("FAKE_PIDS"):
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
        )
        _record(child.pid)

def forked_child():
    if os.environ.get("FAKE_PIDS"):
        pid = os.fork()
        if pid == 0:
            while True:
                time.sleep(1)
        _record(pid)
'''


@pytest.fixture
def fake_course(tmp_path: Path) -> Path:
    tests = tmp_path / "course" / "tests" / "exercises"
    tests.mkdir(parents=True)
    (tests / "conftest.py").write_text(FAKE_CONFTEST)
    (tests / "test_ch99_fake.py").write_text(_FAKE_TESTS)
    package = tmp_path / "course" / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "ch99_fake.py").write_text(_FAKE_MODULE)
    return tests


_MEASURE = """
import json, resource, sys
from pathlib import Path
from course_lib import grading
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
report = grading.grade(Path(sys.argv[1]), tests_dir=Path(sys.argv[2]))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"grown_kib": after - before, "summary": report.summary}))
"""


@pytest.mark.skipif(not LINUX, reason="ru_maxrss in KiB")
def test_the_graders_memory_stays_flat_whatever_the_code_prints(fake_course):
    package = fake_course.parents[1] / "fakepkg"
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(package), str(fake_course)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT), "FAKE_FLOOD_MB": "200"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    measured = json.loads(result.stdout.splitlines()[-1])
    assert measured["summary"].endswith("4/5 checks passed"), measured
    # The code printed 200 MB; the grader keeps a bounded tail of it.
    assert measured["grown_kib"] < 64 * 1024, measured


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not LINUX, reason="reads /proc; a subreaper is Linux's")
def test_nothing_a_submission_starts_outlives_its_grading_and_check_returns_when_done(
    fake_course, tmp_path, monkeypatch
):
    pids = tmp_path / "pids.txt"
    monkeypatch.setenv("FAKE_PIDS", str(pids))
    package = fake_course.parents[1] / "fakepkg"
    start = time.monotonic()
    report = grade(package, tests_dir=fake_course, timeout_s=90)
    # The forked child sleeps on: the rows were done long before the deadline.
    assert time.monotonic() - start < 90, "waited for the deadline though every row was done"
    assert report.passed == report.total == 5, str(report)
    started = [int(line) for line in pids.read_text().split()]
    assert len(started) == 2
    deadline = time.monotonic() + 10
    while any(map(_alive, started)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(_alive, started)), "a process the submission started outlived grading"


def test_an_exit_during_a_check_fails_that_check_and_the_rest_are_graded(
    fake_course, monkeypatch
):
    monkeypatch.setenv("FAKE_EXIT", "1")
    report = grade(fake_course.parents[1] / "fakepkg", tests_dir=fake_course)
    rows = {row.description: row for row in report.checks}
    assert not rows["Exits Python, perhaps."].passed
    assert "exited Python" in rows["Exits Python, perhaps."].message
    assert rows["Answers at once."].passed, str(report)
    assert report.passed == 4, str(report)
