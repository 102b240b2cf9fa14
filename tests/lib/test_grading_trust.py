"""course_lib.grading: one submission cannot change what it or the next is graded with.

Each test grades hostile stubs (_hostile.py) against a copy of the course in tmp_path,
never the repository's own files, then a plain stub: a forged pass would show as
checks passed. A few seconds apiece.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _hostile import submission

from course_lib import grading
from course_lib.grading import grade
from course_lib.grading_sandbox import CourseSnapshot

ROOT = Path(grading.__file__).resolve().parents[1]


@pytest.fixture
def course(tmp_path: Path) -> Path:
    """A copy of the course the hostile code may reach; returns its tests/exercises."""
    copy = tmp_path / "course"
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("course_lib", "tests/exercises", "exercises", "solutions"):
        shutil.copytree(ROOT / folder, copy / folder, ignore=ignore)
    for file in ("pyproject.toml", "tests/conftest.py", "tests/_redis_server.py",
                 "tests/_redis_cluster.py"):
        shutil.copy(ROOT / file, copy / file)
    return copy / "tests" / "exercises"


def _honest(report: grading.GradeReport) -> None:
    assert report.total == 7 and report.passed == 0, str(report)  # stubs: nothing passes


@pytest.mark.parametrize(
    "case", ["patch_recorder", "atexit_forges_rows", "edit_tests_delete_solution"]
)
def test_a_submission_cannot_forge_its_grade_or_change_the_next_ones(course, tmp_path, case):
    first = grade(submission(tmp_path, case), ["0.1"], tests_dir=course)
    _honest(first)
    assert first.tampering and not first.ok, str(first)
    assert "tampering detected: " in str(first) and first.to_json()["tampering"]
    # The course it was graded from is as it was: the next submission is graded honestly.
    assert (course / "test_ch00_warmup.py").read_bytes() == (
        ROOT / "tests/exercises/test_ch00_warmup.py"
    ).read_bytes()
    assert (course.parents[1] / "solutions" / "ch00_warmup.py").is_file()
    second = grade(submission(tmp_path, "patch_recorder", who="next"), ["0.1"], tests_dir=course)
    _honest(second)


def test_a_change_to_the_course_itself_is_reported_and_a_snapshot_keeps_the_next_honest(
    course, tmp_path, monkeypatch
):
    monkeypatch.setenv("HOSTILE_COURSE", str(course.parents[1]))
    snapshot = CourseSnapshot.take(
        course.parents[1], lib=ROOT / "course_lib", tests=course
    )
    first = grade(submission(tmp_path, "edit_the_course"), ["0.1"], tests_dir=course)
    assert "the course's tests/exercises/test_ch00_warmup.py changed" in first.tampering
    # The course's tests now pass anything; graded from the snapshot taken before, a
    # plain stub still fails (a class of learners is graded this way).
    plain = submission(tmp_path, "solved", who="plain")
    shutil.rmtree(plain)
    shutil.copytree(ROOT / "exercises", plain, ignore=shutil.ignore_patterns("__pycache__"))
    _honest(grade(plain, ["0.1"], tests_dir=course, snapshot=snapshot))
