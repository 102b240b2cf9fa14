"""Every plausible wrong answer in tests/wrong_answers/ is caught, with a specific hint.

A grading test that passes on the stub checks nothing (test_integrity.py); one that
passes on a wrong answer a learner is likely to write teaches the bug. Each folder in
tests/wrong_answers/ is graded on its one exercise through the machinery ``check()``
uses, and must fail with a message that names what is wrong (see the README there).
"""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from course_lib import grading
from course_lib.grading import NOT_IMPLEMENTED, GradeReport

ROOT = Path(grading.__file__).resolve().parents[1]
WRONG = ROOT / "tests" / "wrong_answers"


def _declared(folder: Path) -> tuple[str, str]:
    """``(EXERCISE, EXPECT)`` read from the folder's module, without importing it."""
    (module,) = folder.glob("ch*.py")
    found = {}
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            found |= {t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)}
    return str(found["EXERCISE"]), str(found["EXPECT"])


FOLDERS = sorted(p for p in WRONG.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))


@pytest.fixture(scope="module")
def reports(request: pytest.FixtureRequest) -> dict[str, GradeReport]:
    """The grade of every folder whose test is selected, two at a time (two cores)."""
    selected = {
        item.callspec.params["folder"].name
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    }
    folders = [f for f in FOLDERS if f.name in selected]

    # Read here, not in the threads: ast.parse in two threads at once fails on 3.11
    # ("AST constructor recursion depth mismatch"), and grade() parses too.
    exercises = [_declared(f)[0] for f in folders]

    def one(folder: Path, exercise: str) -> GradeReport:
        return grading.grade(folder, [exercise], timeout_s=120)

    with ThreadPoolExecutor(2) as pool:
        graded = pool.map(one, folders, exercises)
        return dict(zip([f.name for f in folders], graded, strict=True))


def test_there_are_wrong_answers_for_every_exercise():
    covered: dict[str, int] = {}
    for folder in FOLDERS:
        exercise, _ = _declared(folder)
        covered[exercise] = covered.get(exercise, 0) + 1
    exercises = grading.discover(ROOT / "tests" / "exercises")
    thin = {e: covered.get(e, 0) for e in exercises if covered.get(e, 0) < 3}
    assert not thin, f"exercises tried against fewer than three wrong answers: {thin}"


# The module fixture grades every selected folder (~1-2 s each) before the first test.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_a_wrong_answer_is_caught_with_a_specific_hint(folder: Path, reports):
    exercise, expect = _declared(folder)
    report = reports[folder.name]
    failed = [c for c in report.checks if not c.passed]
    listing = "\n".join(f"  {'ok ' if c.passed else 'NO '} {c.description}: {c.message}"
                        for c in report.checks)
    assert failed, f"{folder.name} passes every check of exercise {exercise}:\n{listing}"
    assert not any(c.message == NOT_IMPLEMENTED for c in failed), (
        f"{folder.name} is graded as a stub; does it define every name?\n{listing}"
    )
    assert any(expect.lower() in f"{c.description} {c.message}".lower() for c in failed), (
        f"{folder.name}: no failing check says {expect!r}:\n{listing}"
    )
