"""The course's exercises hang together: stubs, solutions and grading tests.

A grading test that passes on a stub checks nothing; one that fails on the solution
grades the learner against a wrong answer. Both are found here, by running every
grading test against ``exercises`` and against ``solutions`` through the very
machinery ``check()`` uses (two subprocesses, run side by side).
"""

from __future__ import annotations

import ast
import importlib
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from course_lib import grading
from course_lib.grading import NOT_IMPLEMENTED, GradeReport

ROOT = Path(grading.__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "exercises"
STUB_ID = re.compile(r"""NotImplementedError\(\s*f?["']Exercise\s+(\d+\.\d+)\b""")


def _modules(package: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / package).glob("ch*.py"))


@pytest.fixture(scope="module")
def runs() -> dict[str, GradeReport]:
    with ThreadPoolExecutor(2) as pool:
        futures = {t: pool.submit(grading.grade, t) for t in ("exercises", "solutions")}
        return {t: f.result() for t, f in futures.items()}


def _listing(rows) -> str:
    return "\n".join(f"  {r.exercise} {r.test}: {r.message or r.outcome.value}" for r in rows)


def test_every_grading_test_fails_on_the_stubs(runs):
    passing = [r for r in runs["exercises"].checks if r.passed]
    assert not passing, "these tests pass on the stub, so they check nothing:\n" + _listing(
        passing
    )


def test_on_the_stubs_every_check_says_not_implemented_yet(runs):
    # What a learner sees first: a test failing on a stub for another reason (a bug in
    # the test, a fixture error) would greet them with a puzzling message.
    other = [r for r in runs["exercises"].checks if not r.passed and r.message != NOT_IMPLEMENTED]
    assert not other, "on the stubs these fail for another reason:\n" + _listing(other)


def test_every_grading_test_passes_on_the_solutions(runs):
    failing = [r for r in runs["solutions"].checks if not r.passed]
    assert not failing, "these tests fail on the solutions:\n" + _listing(failing)


def test_no_check_is_skipped(runs):
    skipped = [r for t in runs for r in runs[t].checks if r.outcome.value == "skipped"]
    assert not skipped, "grading tests must run everywhere:\n" + _listing(skipped)


def test_every_grading_test_loads_and_names_its_exercise(runs):
    known = grading.discover(TESTS)  # once: it parses every test file and its module
    orphans = [r for r in runs["solutions"].checks if r.exercise not in known]
    assert not orphans, (
        "these grading tests did not load, or have no pytest.mark.exercise(...):\n"
        + _listing(orphans)
    )


def test_every_exercise_has_grading_tests(runs):
    stub_ids = {
        m for name in _modules("exercises")
        for m in STUB_ID.findall((ROOT / "exercises" / f"{name}.py").read_text())
    }  # fmt: skip
    graded = {r.exercise for r in runs["exercises"].checks}
    assert stub_ids, "no stub raises NotImplementedError('Exercise N.M: ...')"
    assert not stub_ids - graded, f"exercises with no grading test: {sorted(stub_ids - graded)}"
    assert not graded - stub_ids, (
        f"grading tests for exercises no stub declares: {sorted(graded - stub_ids)}"
    )


@pytest.mark.parametrize("module", _modules("exercises"))
def test_every_exercise_module_has_a_solution_with_the_same_names(module):
    assert (ROOT / "solutions" / f"{module}.py").is_file(), f"solutions/{module}.py is missing"
    stub = importlib.import_module(f"exercises.{module}")
    solution = importlib.import_module(f"solutions.{module}")
    assert hasattr(stub, "__all__"), f"exercises/{module}.py has no __all__"
    assert sorted(stub.__all__) == sorted(getattr(solution, "__all__", [])), (
        f"exercises/{module}.py and solutions/{module}.py export different names"
    )


@pytest.mark.parametrize("module", _modules("exercises"))
def test_every_exercise_module_has_a_grading_test_file(module):
    path = TESTS / f"test_{module}.py"
    assert path.is_file(), f"tests/exercises/test_{module}.py is missing"
    assert grading._module_constant(ast.parse(path.read_text())) == module, (
        f'{path.name} must say MODULE = "{module}"'
    )


def test_every_solution_has_an_exercise():
    assert set(_modules("solutions")) <= set(_modules("exercises")), "a solution with no stub"


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")), ids=lambda p: p.name)
def test_every_grading_test_has_a_description(path):
    # The docstring's first line is what the learner reads in the check() table.
    tree = ast.parse(path.read_text())
    undocumented = [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test")
        and not ast.get_docstring(node)
    ]
    assert not undocumented, f"{path.name}: tests without a docstring: {undocumented}"
