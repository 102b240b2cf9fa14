"""Grade the course's exercises: ``check("0.1")`` in a notebook, or from a terminal.

A check runs the exercise's grading tests (``tests/exercises``) in a fresh Python
process, so the learner's latest edits count without restarting the kernel, and a
function that waits forever cannot hang the notebook. Each test becomes one row: what
was checked, ✓ or ✗, and one line saying what went wrong.

    from course_lib.grading import check
    check("0.1")        # a table in JupyterLab; text in a terminal

    python -m course_lib.grading                    # every exercise, in exercises/
    python -m course_lib.grading --target solutions
    python -m course_lib.grading --target submissions/alice/exercises --json

``--target`` (or ``COURSE_TARGET``) names the graded package, ``exercises`` by default,
or a folder holding a copy of it, such as a learner's submission.

Each run grades against a fresh read-only copy of the grading tests and course_lib,
and reports what the code under test changed in it or in the course
(``GradeReport.tampering``): see course_lib.grading_run for what a run guards
against (a module that exits or hangs at import, processes left running, output
without end). It is no sandbox: grade untrusted folders in a container (README).

A run that takes more than a few seconds says so while it runs, and which check it is
on: a line updated in place under the cell in a notebook, lines on stderr in a
terminal. A check that hangs is stopped after ``_PER_TEST_TIMEOUT_S`` seconds; once
one has hung, the same exercise's later checks are stopped after
``_AFTER_HANG_TIMEOUT_S`` each (see the constants for why those numbers).
"""

from __future__ import annotations

__all__ = [
    "Check",
    "GradeReport",
    "GradingError",
    "Outcome",
    "Progress",
    "check",
    "grade",
    "hung_message",
    "main",
]

import argparse
import ast
import dataclasses
import enum
import html
import importlib.util
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from course_lib.grading_run import RunResult, Submission, run_submission
from course_lib.grading_sandbox import CourseSnapshot

# The plugin's row messages; here so that importing this module needs no pytest.
NOT_IMPLEMENTED = "not implemented yet"
TOO_LONG = "took too long (does it wait forever?)"
UNEXPECTED = "did not behave as expected"
# The check hung in real time and could not be stopped (its code swallowed the
# timeout, or blocked outside Python): the run was killed there.
STUCK = (
    "took too long and could not be stopped, so grading stopped here: does the code "
    "catch every exception (except BaseException:) or block outside Python?"
)
NOT_RUN = "not run: grading stopped at a check before it that took too long"


def hung_message(bound_s: float) -> str:
    """The row of a check stopped after ``bound_s`` seconds of real time: what to look for.

    The grading tests run on looptime's virtual clock, where sleeps and timeouts take
    no real time: what still hangs is code that never lets the clock move.
    """
    return (
        f"took too long: stopped after {bound_s:g} s. Look for an await nothing ever wakes, "
        "a loop spinning on sleep(0), or a blocking call such as time.sleep()"
    )


# Bounds on a hung check. The grading tests run on looptime's virtual clock, so on
# a model answer each takes well under a second of real time. Measured with
# `pytest --target solutions tests/exercises --durations` on a 2-core machine, the
# slowest check (a thousand tasks or restarts: the hard cases) took 0.16 s idle and
# 0.61 s at load average 8 with asyncio's debug mode off, as the grader runs them
# (1.11 s and 4.97 s with it on: see grading_run._command). pytest-timeout stops a check after
# _PER_TEST_TIMEOUT_S (8x the loaded figure) and the grader goes on to the others;
# once a check of an exercise has hung, that exercise's later checks are stopped
# after _AFTER_HANG_TIMEOUT_S each (4x). The cleanup after a check gets as long
# again (looptime's virtual clock is gone by then: a test's "cleanup takes 2 s" is
# 2 real seconds). So an exercise of N checks that all hang ends within
# 7.5 + 5 (N - 1) s plus pytest's start, and usually much sooner (most cleanups do
# not hang), not N x 5 s. A check still running _STUCK_GRACE_S past its bounds
# swallowed the timeout: the grader kills the run. The whole run has its own
# deadline (timeout_s) as a last resort.
_PER_TEST_TIMEOUT_S = 5.0
_AFTER_HANG_TIMEOUT_S = 2.5
_STUCK_GRACE_S = 5.0
_CHECK_TIMEOUT_S = 120.0
_CLI_TIMEOUT_S = 300.0
# Progress: the grader looks at the run 4 times a second (grading_run._POLL_S), and
# says it is still running once it has taken _SHOW_AFTER_S (a check of one exercise
# takes ~1.5 s in all).
_SHOW_AFTER_S = 3.0
_ORPHANS = "grading tests with no exercise marker, or that do not load"
_STOPPED = "did not finish: the grading run stopped here (did the code exit Python?)"
_STUB_TITLE = re.compile(r"""NotImplementedError\(\s*["']Exercise\s+(\d+\.\d+):\s*([^"']*)""")
# A docstring that opens "Exercise 0.1", and the def or class it belongs to.
_DOC_EXERCISE = re.compile(r"^\s*[rRuU]?(?:\"{3}|'{3})\s*Exercise\s+(\d+\.\d+)\b")
_DEF_OR_CLASS = re.compile(r"^\s*(?:async\s+def|def|class)\s+([A-Za-z_]\w*)")


class GradingError(RuntimeError):
    """The grader itself could not run (not an exercise failing: that is a report)."""


class Outcome(enum.Enum):
    """What happened to one grading test."""

    PASSED = "passed"
    FAILED = "failed"  # the check ran and the behaviour was wrong
    ERROR = "error"  # setting up or cleaning up went wrong, e.g. the module does not import
    SKIPPED = "skipped"  # not counted either way
    NOT_RUN = "not run"  # never started: the run stopped before it (counted, not passed)


@dataclasses.dataclass(frozen=True)
class Check:
    """One behaviour checked: ``Check("0.1", "No awaitables gives []", passed=True)``."""

    exercise: str
    description: str
    passed: bool
    message: str = ""
    outcome: Outcome | None = None  # PASSED or FAILED, from `passed`, when not given
    test: str = ""  # the pytest node id, for tooling; never shown to the learner

    def __post_init__(self) -> None:
        if self.outcome is None:
            object.__setattr__(self, "outcome", Outcome.PASSED if self.passed else Outcome.FAILED)


@dataclasses.dataclass(frozen=True)
class Exercise:
    """An exercise as the course declares it: its id, stub module, title and test file."""

    id: str
    module: str = ""
    title: str = ""
    test_file: str = ""

    @property
    def chapter(self) -> str:
        return self.id.split(".")[0]


@dataclasses.dataclass(frozen=True)
class GradeReport:
    """The checks of one or more exercises against one target, shown as a table.

        report = check("0.1")
        report.ok, f"{report.passed}/{report.total}"  # (False, '1/4')
    """

    target: str
    exercises: tuple[Exercise, ...]
    checks: tuple[Check, ...]
    # What the run changed that it must not have ("the course's tests/... changed"):
    # its grades cannot be trusted.
    tampering: tuple[str, ...] = ()

    @property
    def counted(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.outcome is not Outcome.SKIPPED)

    @property
    def passed(self) -> int:
        return sum(c.passed for c in self.counted)

    @property
    def total(self) -> int:
        return len(self.counted)

    @property
    def ok(self) -> bool:
        """Every exercise in the report is solved, and nothing was tampered with."""
        return (
            bool(self.exercises)
            and not self.tampering
            and all(self.solved(e.id) for e in self.exercises)
        )

    def checks_of(self, exercise_id: str) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.exercise == exercise_id)

    def solved(self, exercise_id: str) -> bool:
        counted = [c for c in self.checks_of(exercise_id) if c.outcome is not Outcome.SKIPPED]
        return bool(counted) and all(c.passed for c in counted)

    @property
    def summary(self) -> str:
        solved = sum(self.solved(e.id) for e in self.exercises)
        text = (
            f"{solved}/{len(self.exercises)} exercises solved, "
            f"{self.passed}/{self.total} checks passed"
        )
        if self.tampering:
            text += f"; tampering detected: {'; '.join(self.tampering)}"
        return text

    def _heading(self, exercise: Exercise) -> str:
        counted = [c for c in self.checks_of(exercise.id) if c.outcome is not Outcome.SKIPPED]
        passed = sum(c.passed for c in counted)
        state = "solved" if self.solved(exercise.id) else "not solved yet"
        title = f" · {exercise.title}" if exercise.title else ""
        return f"Exercise {exercise.id}{title}: {state} ({passed}/{len(counted)} checks passed)"

    def __str__(self) -> str:
        width = max((len(c.description) for c in self.checks), default=0)
        lines: list[str] = []
        chapter = None
        several = len(self.exercises) > 1
        for exercise in self.exercises:
            if several and exercise.chapter != chapter:
                chapter = exercise.chapter
                topic = _chapter_topic(exercise.module)
                lines += ["", f"Chapter {chapter}{f' · {topic}' if topic else ''}"]
            lines.append(("  " if several else "") + self._heading(exercise))
            indent = "    " if several else "  "
            for c in self.checks_of(exercise.id):
                lines.append(f"{indent}{_mark(c)}  {c.description:<{width}}  {c.message}".rstrip())
        if several:
            lines += ["", self.summary]
        elif self.tampering:
            lines += ["", f"tampering detected: {'; '.join(self.tampering)}"]
        return "\n".join(lines).lstrip("\n")

    __repr__ = __str__

    def _repr_html_(self) -> str:
        rows: list[str] = []
        for exercise in self.exercises:
            rows.append(
                '<tr><th colspan="3" style="text-align:left">'
                f"{html.escape(self._heading(exercise))}</th></tr>"
            )
            for c in self.checks_of(exercise.id):
                color = {True: "#1a7f37", False: "#cf222e"}[c.passed]
                if c.outcome is Outcome.SKIPPED:
                    color = "#6e7781"
                rows.append(
                    f'<tr><td style="color:{color};font-weight:bold">{_mark(c)}</td>'
                    f'<td style="text-align:left">{html.escape(c.description)}</td>'
                    f'<td style="text-align:left">{html.escape(c.message)}</td></tr>'
                )
        foot = (
            f'<tr><td colspan="3" style="text-align:left">{html.escape(self.summary)}</td></tr>'
            if len(self.exercises) > 1
            else ""
        )
        return f'<table class="course-grade">{"".join(rows)}{foot}</table>'

    def to_json(self) -> dict:
        """The report for tooling: ``python -m course_lib.grading --json``."""
        return {
            "target": self.target,
            "exercises": [
                {
                    "id": e.id,
                    "title": e.title,
                    "module": e.module,
                    "solved": self.solved(e.id),
                    "checks": [
                        {**dataclasses.asdict(c), "outcome": c.outcome.value}
                        for c in self.checks_of(e.id)
                    ],
                }
                for e in self.exercises
            ],
            "solved": sum(self.solved(e.id) for e in self.exercises),
            "passed": self.passed,
            "total": self.total,
            "ok": self.ok,
            "tampering": list(self.tampering),
        }


@dataclasses.dataclass(frozen=True)
class Progress:
    """Where a grading run is, a few times a second: ``grade(..., progress=callback)``."""

    elapsed_s: float
    done: int = 0  # checks finished
    total: int = 0  # checks to run; 0 until pytest has collected them
    exercise: str = ""  # the exercise of the check running now, if any
    running: str = ""  # the check running now: its description, as in the table
    running_s: float = 0.0  # for how long
    bound_s: float = 0.0  # when it is stopped if still running (0: not known)
    hung: tuple[tuple[str, str, float], ...] = ()  # (exercise, check, bound) stopped so far
    finished: bool = False  # the last one: the run is over

    def line(self, what: str = "") -> str:
        """``Still checking 0.1 (7 s, 1/4 done): "…" running for 2 s (stopped at 5 s if…)``.

        ``what``: the exercises the run grades ("0.1"), or "" for all of them.
        """
        done = f", {self.done}/{self.total} done" if self.total else ""
        text = f"Still checking {what}{' ' if what else ''}({self.elapsed_s:.0f} s{done})"
        if self.running:
            which = "" if what == self.exercise else f"{self.exercise} "
            text += f': {which}"{self.running}" running for {self.running_s:.0f} s'
            if self.bound_s:
                text += f" (stopped at {self.bound_s:g} s if it hangs)"
        elif not self.total:
            text += ": starting"
        if self.hung:
            text += f"; {_count(len(self.hung), 'check')} hung so far"
        return text


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _mark(c: Check) -> str:
    return "–" if c.outcome is Outcome.SKIPPED else ("✓" if c.passed else "✗")


def _chapter_topic(module: str) -> str:
    # "ch02_timeouts" -> "timeouts"
    return module.partition("_")[2].replace("_", " ") if module.startswith("ch") else ""


# --- public entry points ----------------------------------------------------------------


ProgressCallback = Callable[[Progress], None]


def check(
    exercise_id: str,
    *,
    target: str | os.PathLike | None = None,
    timeout_s: float = _CHECK_TIMEOUT_S,
    progress: bool | ProgressCallback = True,
) -> GradeReport:
    """Run exercise ``exercise_id``'s checks and return the table (a notebook shows it).

    Never raises because the exercise fails; raises ValueError for an unknown id.
    A run that takes more than a few seconds says so while it runs (``progress``).
    """
    return grade(target, [str(exercise_id)], timeout_s=timeout_s, progress=progress)


def grade(
    target: str | os.PathLike | Submission | None = None,
    exercise_ids: Iterable[str] | None = None,
    *,
    timeout_s: float = _CHECK_TIMEOUT_S,
    per_test_timeout_s: float = _PER_TEST_TIMEOUT_S,
    after_hang_timeout_s: float = _AFTER_HANG_TIMEOUT_S,
    tests_dir: Path | None = None,
    progress: bool | ProgressCallback = False,
    snapshot: CourseSnapshot | None = None,
) -> GradeReport:
    """Grade ``target`` on the given exercises (all by default).

    ``per_test_timeout_s`` stops a hung check; once one has hung, the same exercise's
    later checks are stopped after ``after_hang_timeout_s``. ``progress``: True says
    that a slow run is still running, and on which check (a line updated in place in
    a notebook, lines on stderr elsewhere); a callable gets a :class:`Progress` a few
    times a second. ``tests_dir`` replaces the repository's ``tests/exercises`` (for
    testing the grader). pytest runs from a fresh read-only copy of the grading tests
    and course_lib, made from ``snapshot`` (one :class:`CourseSnapshot` for a whole
    class of submissions) or else read from the course now; what the run changed in
    it or in the course is reported (``GradeReport.tampering``). ``target`` may be a
    :class:`~course_lib.grading_run.Submission`: a folder imported under a name of its
    own, named in messages by its label (a class: ``alice/ch00_warmup.py``).
    """
    tests_dir = Path(tests_dir).resolve() if tests_dir else _course_root() / "tests" / "exercises"
    known = discover(tests_dir)
    wanted = list(known) if exercise_ids is None else [str(i) for i in exercise_ids]
    unknown = [i for i in wanted if i not in known]
    if unknown:
        raise ValueError(
            f"unknown exercise {', '.join(map(repr, unknown))}; "
            f"the exercises are: {', '.join(known) or 'none'}"
        )
    if isinstance(target, Submission):
        name, folder, label = target.name, target.folder, target.label
    else:
        name, folder = _resolve_target(target)
        label = _label(name, folder)
    status = _status(progress, ", ".join(wanted) if exercise_ids is not None else "")
    if not timeout_s > 0:
        raise ValueError(f"the timeout must be a number of seconds above 0, not {timeout_s!r}")
    rows, tampering = _run(
        name,
        folder,
        wanted,
        select=exercise_ids is not None,
        tests_dir=tests_dir,
        timeout_s=timeout_s,
        per_test_timeout_s=per_test_timeout_s,
        after_hang_timeout_s=after_hang_timeout_s,
        progress=status,
        label=label,
        snapshot=snapshot,
        test_files=_test_files(tests_dir, wanted) if exercise_ids is not None else (),
    )
    if isinstance(status, _Status):
        status.finish()
    exercises = tuple(known[i] for i in wanted)
    rows = _attribute_load_errors(rows, exercises)
    if exercise_ids is None:  # rows with no known exercise (no marker...) still show
        extra = sorted({c.exercise for c in rows} - set(known), key=_id_key)
        exercises += tuple(Exercise(i, title=_ORPHANS if i == "?" else "") for i in extra)
    # Only what the table shows counts: another chapter's broken test file is not 0.1's.
    shown = {e.id for e in exercises}
    rows = [r for r in rows if r.exercise in shown]
    return GradeReport(label or name, exercises, tuple(rows), tampering)


def _attribute_load_errors(rows: list[Check], exercises: Sequence[Exercise]) -> list[Check]:
    # A test file that does not load has no tests, so no marker to say whose it was:
    # show the error under each exercise that file grades.
    out = []
    for row in rows:
        owners = [e.id for e in exercises if row.exercise == "?" and e.test_file
                  and Path(row.test).name == e.test_file]  # fmt: skip
        out += [dataclasses.replace(row, exercise=i) for i in owners] if owners else [row]
    return out


# ast.parse is not thread-safe on CPython 3.11 (seen on 3.11.7): the AST converter keeps its
# recursion depth in shared module state, so two threads parsing at once fail with
# "SystemError: AST constructor recursion depth mismatch" (grade() runs in threads,
# e.g. grading stubs and solutions side by side).
_PARSE_LOCK = threading.Lock()


def _parse(path: Path) -> ast.Module:
    with _PARSE_LOCK:
        return ast.parse(path.read_text(encoding="utf-8"), str(path))


def discover(tests_dir: Path) -> dict[str, Exercise]:
    """Every exercise id the grading tests mark, in course order, without running them.

    Read from the test files' source (``pytest.mark.exercise("0.1")``) so that an
    unknown id is refused at once. Titles come from the course itself, next to
    ``tests_dir``, whatever the target: see :func:`_titles`.
    """
    found: dict[str, Exercise] = {}
    root = tests_dir.parents[1]
    for path in sorted(tests_dir.glob("test_*.py")):
        tree = _parse(path)
        module = _module_constant(tree)
        titles = _titles(root, module) if module else {}
        for ex_id in _marked_ids(tree):
            found.setdefault(ex_id, Exercise(ex_id, module, titles.get(ex_id, ""), path.name))
    return {i: found[i] for i in sorted(found, key=_id_key)}


def _marked_ids(tree: ast.Module) -> Iterator[str]:
    """The ids of every ``pytest.mark.exercise("N.M")`` in a test file, in order."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "exercise"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            yield str(node.args[0].value)


def _test_files(tests_dir: Path, ids: Sequence[str]) -> tuple[str, ...]:
    """The names of the test files that mark any of ``ids`` (``test_ch00_warmup.py``)."""
    wanted = set(ids)
    return tuple(path.name for path in sorted(tests_dir.glob("test_*.py"))
                 if wanted & set(_marked_ids(_parse(path))))  # fmt: skip


def _module_constant(tree: ast.Module) -> str:
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "MODULE" for t in node.targets)
            and isinstance(node.value, ast.Constant)
        ):
            return str(node.value.value)
    return ""


def _titles(root: Path, module: str) -> dict[str, str]:
    """``{"0.1": "gather_in_order", "4.1": "claim and ack"}``: what each exercise defines.

    The names of the defs and classes whose docstring opens "Exercise N.M", in the
    course's stub (``exercises/``) and model answer (``solutions/``). Not the stub's
    ``NotImplementedError("Exercise 0.1: gather_in_order")``: that is the line a
    learner deletes first, and the title must not go with it. That text is the last
    resort, for an exercise no docstring names.
    """
    names: dict[str, list[str]] = {}
    for folder in ("exercises", "solutions"):
        for ex_id, name in _docstring_owners(_source(root / folder / f"{module}.py")):
            if name not in names.setdefault(ex_id, []):
                names[ex_id].append(name)
    titles = {ex_id: _joined(found) for ex_id, found in names.items()}
    for ex_id, title in _STUB_TITLE.findall(_source(root / "exercises" / f"{module}.py")):
        titles.setdefault(ex_id, title.strip())
    return titles


def _source(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _docstring_owners(source: str) -> list[tuple[str, str]]:
    # Line by line rather than with ast: the learner's copy may not parse right now,
    # and the title must not depend on that. The owner of a docstring is the nearest
    # def or class above it (a signature spread over lines has no other def in it).
    owners = []
    lines = source.splitlines()
    for i, line in enumerate(lines):
        doc = _DOC_EXERCISE.match(line)
        if doc is None:
            continue
        owner = next(filter(None, map(_DEF_OR_CLASS.match, reversed(lines[:i]))), None)
        if owner is not None:
            owners.append((doc[1], owner[1]))
    return owners


def _joined(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _id_key(ex_id: str) -> tuple:
    # "0.10" after "0.9"; anything odd ("?", a typo in a marker) after every number.
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in ex_id.split("."))


# --- locating the course and the target -------------------------------------------------


def _course_root() -> Path:
    root = Path(__file__).resolve().parents[1]
    if not (root / "tests" / "exercises").is_dir():
        raise GradingError(
            f"course_lib is loaded from {root}, which has no tests/exercises folder: grading "
            "needs the course repository. Install it from a clone with `pip install -e .`."
        )
    return root


def _label(name: str, folder: Path | None) -> str:
    if folder is None:
        return name
    try:
        return str(folder.relative_to(Path.cwd()))
    except ValueError:
        return str(folder)


def _resolve_target(target: str | os.PathLike | None) -> tuple[str, Path | None]:
    """``(package name, folder or None)`` for a package name or a folder path.

    A bare name is a package name unless a folder by that name is right here; anything
    with a slash is a folder. A folder is imported under its own name, from itself.
    """
    if target is None:
        target = os.environ.get("COURSE_TARGET") or "exercises"
    text = os.fspath(target)
    looks_like_path = (
        not isinstance(target, str)
        or any(sep and sep in text for sep in (os.sep, os.altsep))
        or text.startswith((".", "~"))
    )
    if looks_like_path or Path(text).is_dir():
        folder = Path(text).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"--target {text}: no such folder")
        if "." in folder.name or not folder.name:
            raise ValueError(f"--target {text}: the folder name must be a package name")
        return folder.name, folder
    if not all(part.isidentifier() for part in text.split(".")):
        raise ValueError(f"--target {text!r} is neither a package name nor a folder")
    return text, None


# --- running pytest ---------------------------------------------------------------------


def _run(
    name: str,
    folder: Path | None,
    exercise_ids: Sequence[str],
    *,
    select: bool,
    tests_dir: Path,
    timeout_s: float,
    per_test_timeout_s: float,
    after_hang_timeout_s: float = 0.0,
    progress: ProgressCallback | None = None,
    label: str = "",
    snapshot: CourseSnapshot | None = None,
    test_files: Sequence[str] = (),
) -> tuple[list[Check], tuple[str, ...]]:
    """The rows of one run (grading_run.run_submission), and what it tampered with."""
    if importlib.util.find_spec("pytest") is None:
        raise GradingError("grading needs pytest: pip install -e '.[dev]'")
    if folder is None and (tests_dir.parents[1] / name).is_dir():
        # The course's own package ("exercises", "solutions"): pinned to its folder, as a
        # submission is, since the run's current folder is a copy of the course without it.
        folder = tests_dir.parents[1] / name
    watch = _Watch(progress)
    result = run_submission(
        Submission(name, folder, label or name),
        exercise_ids,
        select=select,
        tests_dir=tests_dir,
        timeout_s=timeout_s,
        per_test_timeout_s=per_test_timeout_s,
        after_hang_timeout_s=after_hang_timeout_s,
        watch=watch,
        snapshot=snapshot,
        stuck_grace_s=_STUCK_GRACE_S,
        test_files=test_files,
    )
    watch.finish()
    if not result.rows and result.code not in (0, 1, 5):
        if result.stopped:
            return [Check(i, "all checks", False, TOO_LONG) for i in exercise_ids], ()
        if not result.collection_errors:
            tail = "\n".join(result.output.strip().splitlines()[-15:])
            raise GradingError(f"the grading run failed (pytest exit code {result.code}):\n{tail}")
    return _checks(result), tuple(result.tampering)


class _Watch:
    """Looks at the rows while the run goes on: what runs now, and is it stuck?"""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.start = time.monotonic()
        self.data: dict | None = None
        self.settled: dict[str, dict] = {}  # rows of an earlier attempt of the same run
        self.seen: dict[str, float] = {}  # test -> when first seen running (monotonic)

    def poll(self, now: float, data: dict | None, *, finished: bool = False) -> None:
        self.data = data or self.data
        if self.progress is not None:
            snapshot = self.snapshot(now)
            self.progress(dataclasses.replace(snapshot, finished=True) if finished else snapshot)

    def _current(self) -> dict | None:
        return (self.data or {}).get("current")

    def snapshot(self, now: float) -> Progress:
        tests = {**self.settled, **{t["test"]: t for t in (self.data or {}).get("tests", [])}}
        rows = list(tests.values())
        current = self._current()
        hung = tuple(
            (t["exercise"] or "?", t["description"], t["hung_s"]) for t in rows if "hung_s" in t
        )
        progress = Progress(
            elapsed_s=now - self.start,
            done=sum(t["outcome"] is not None for t in rows),
            total=len(rows),
            hung=hung,
        )
        if current is None:
            return progress
        started = self.seen.setdefault(current["test"], now)
        return dataclasses.replace(
            progress,
            exercise=current["exercise"] or "?",
            running=current["description"],
            running_s=now - started,
            bound_s=current.get("bound") or 0.0,
        )

    def stuck(self, now: float, grace_s: float = _STUCK_GRACE_S) -> bool:
        """The running check is well past the bound pytest-timeout should have stopped it at."""
        current = self._current()
        if not current or not current.get("bound"):
            return False
        started = self.seen.setdefault(current["test"], now)
        allowed = current["bound"] + current.get("teardown_s", 0.0) + grace_s
        return now - started > allowed

    def finish(self) -> None:
        if self.progress is not None:
            self.poll(time.monotonic(), None, finished=True)


def _checks(result: RunResult) -> list[Check]:
    checks = []
    stopped = result.stopped
    current = (result.current or {}).get("test")
    for row in result.rows:
        if row["outcome"] is None:  # collected, never finished
            if not stopped:
                message = _STOPPED
            elif current is None:  # stopped between checks (or before the first)
                message = TOO_LONG
            elif row["test"] == current:
                message = STUCK if stopped == "stuck" else TOO_LONG
            else:
                message = NOT_RUN
            outcome = "not run" if message == NOT_RUN else "failed"
            row = {**row, "outcome": outcome, "message": message}
        outcome = Outcome(row["outcome"])
        exercise = row["exercise"] or "?"
        passed = outcome is Outcome.PASSED
        checks.append(
            Check(exercise, row["description"], passed, row["message"], outcome, row["test"])
        )
    for error in result.collection_errors:
        description = f"load {error['test']}"
        checks.append(
            Check("?", description, False, error["message"], Outcome.ERROR, error["test"])
        )
    return checks


# --- saying that a slow run is still running -------------------------------------------


class _Status:
    """Turns the :class:`Progress` snapshots of one run into what the learner sees.

    Nothing for a run that ends within ``show_after_s`` (most do); then a line at least
    every ``every_s`` seconds, and at once when a check has run for ``slow_s`` or one
    was stopped for hanging. ``_emit`` shows it: a subclass per place.
    """

    show_after_s = _SHOW_AFTER_S
    every_s = 5.0
    slow_s = 1.0

    def __init__(self, what: str = "") -> None:
        self.what = what  # "0.1", or "" for every exercise
        self.shown = False
        self.last_line_at = -1e9
        self.told_running = ""
        self.told_hung = 0
        self.last: Progress | None = None

    def __call__(self, progress: Progress) -> None:
        self.last = progress
        if progress.elapsed_s < self.show_after_s or (progress.finished and not self.shown):
            return
        for exercise, description, bound in progress.hung[self.told_hung :]:
            self._emit_hung(exercise, description, bound)
        self.told_hung = len(progress.hung)
        if progress.finished:
            return
        slow_check = bool(progress.running) and progress.running_s >= self.slow_s
        due = progress.elapsed_s - self.last_line_at >= self.every_s
        if not self.shown or due or (slow_check and self.told_running != progress.running):
            self.told_running = progress.running
            self.last_line_at = progress.elapsed_s
            self.shown = True
            self._emit(progress.line(self.what))

    def finish(self) -> None:
        """The run is over: a last word, if anything was said."""

    def _emit(self, line: str) -> None:
        raise NotImplementedError

    def _emit_hung(self, exercise: str, description: str, bound: float) -> None:
        pass


class _StderrStatus(_Status):
    """Lines on stderr, for a terminal: ``python -m course_lib.grading`` or check() in a REPL."""

    def __init__(self, what: str = "", stream=None) -> None:
        super().__init__(what)
        self.stream = stream

    def _print(self, text: str) -> None:
        print(f"grading: {text}", file=self.stream or sys.stderr, flush=True)

    def _emit(self, line: str) -> None:
        self._print(line)

    def _emit_hung(self, exercise: str, description: str, bound: float) -> None:
        which = "" if exercise == self.what else f"{exercise} "
        self._print(f'{which}"{description}" hung: stopped after {bound:g} s')


class _NotebookStatus(_Status):
    """One line under the cell, updated in place (an IPython display handle)."""

    every_s = 0.5  # in place: an update costs nothing on screen

    def __init__(self, what: str = "") -> None:
        super().__init__(what)
        self.handle = None

    def _emit(self, line: str) -> None:
        # Imported here, never at module level: grading works without IPython.
        from IPython.display import display

        shown = _StatusLine(f"⏳ {line}")
        if self.handle is None:
            self.handle = display(shown, display_id=True)
        else:
            self.handle.update(shown)

    def finish(self) -> None:
        if self.handle is None or self.last is None:
            return
        hung = len(self.last.hung)
        text = f"Checked {self.what or 'every exercise'} in {self.last.elapsed_s:.0f} s"
        if hung:
            text += f": {_count(hung, 'check')} hung and {'was' if hung == 1 else 'were'} stopped"
        self.handle.update(_StatusLine(text + "."))


class _StatusLine:
    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return f'<div class="course-grade-status">{html.escape(self.text)}</div>'


def _in_notebook() -> bool:
    if "ipykernel" not in sys.modules:  # not a kernel: do not import IPython to find out
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _status(progress: bool | ProgressCallback, what: str) -> ProgressCallback | None:
    if progress is False or progress is None:
        return None
    if progress is True:
        return _NotebookStatus(what) if _in_notebook() else _StderrStatus(what)
    return progress


# --- command line -----------------------------------------------------------------------


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):  # nan and inf too
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m course_lib.grading``: 0 whatever the grades, 2 for a usage error
    (``--class``: see course_lib.grading_class for its exit codes)."""
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.grading",
        description="Grade the course's exercises and print a table of the checks.",
    )
    parser.add_argument(
        "--target",
        default=None,
        help="package to grade: exercises (default, or $COURSE_TARGET), solutions, "
        "or the path of a folder holding a copy of exercises/",
    )
    parser.add_argument(
        "--exercise", action="append", metavar="ID", help="grade only exercise ID (repeatable)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON for tooling")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=_CLI_TIMEOUT_S,
        metavar="S",
        help=f"give up on the whole run after S seconds (default {_CLI_TIMEOUT_S:g})",
    )
    group = parser.add_argument_group(
        "a class", "grade one folder per learner into a table (see course_lib.grading_class)"
    )
    group.add_argument(
        "--class", dest="class_dir", metavar="DIR",
        help="grade every learner's folder in DIR, in parallel; write grades.csv, "
        "grades.html and grades.json (exit 0 once written, whatever the grades)",
    )  # fmt: skip
    group.add_argument("--out", metavar="DIR", help="where to write them (default: DIR-grades)")
    group.add_argument(
        "--jobs", type=int, metavar="N", help="folders graded at once (default: the cores)"
    )
    args = parser.parse_args(argv)
    if args.class_dir is not None:
        from course_lib import grading_class  # it imports this module

        return grading_class.main(args, parser)
    if args.out is not None or args.jobs is not None:
        parser.error("--out and --jobs go with --class")
    try:
        report = grade(args.target, args.exercise, timeout_s=args.timeout, progress=True)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except GradingError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(f"Grading {report.target}\n")
        print(report)
        if len(report.exercises) == 1:
            print(f"\n{report.summary}")
    return 0


if __name__ == "__main__":
    # A Windows console or a pipe may not speak UTF-8: a "?" beats a UnicodeEncodeError.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="replace")
    sys.exit(main())
