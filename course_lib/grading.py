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
"""

from __future__ import annotations

__all__ = ["Check", "GradeReport", "GradingError", "Outcome", "check", "grade", "main"]

import argparse
import ast
import dataclasses
import enum
import html
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

# The plugin's row messages; here so that importing this module needs no pytest.
NOT_IMPLEMENTED = "not implemented yet"
TOO_LONG = "took too long (does it wait forever?)"
UNEXPECTED = "did not behave as expected"

_PLUGIN = "course_lib._grading_plugin"
# One hung check must not use up the whole run: pytest-timeout fails it and the
# grader goes on to the others. The whole run has its own deadline (timeout_s).
_PER_TEST_TIMEOUT_S = 15.0
_CHECK_TIMEOUT_S = 120.0
_CLI_TIMEOUT_S = 300.0
_ORPHANS = "grading tests with no exercise marker, or that do not load"
_STOPPED = "did not finish: the grading run stopped here (did the code exit Python?)"
_STUB_TITLE = re.compile(r"""NotImplementedError\(\s*["']Exercise\s+(\d+\.\d+):\s*([^"']*)""")


class GradingError(RuntimeError):
    """The grader itself could not run (not an exercise failing: that is a report)."""


class Outcome(enum.Enum):
    """What happened to one grading test."""

    PASSED = "passed"
    FAILED = "failed"  # the check ran and the behaviour was wrong
    ERROR = "error"  # setting up or cleaning up went wrong, e.g. the module does not import
    SKIPPED = "skipped"  # not counted either way


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
        """Every exercise in the report is solved."""
        return bool(self.exercises) and all(self.solved(e.id) for e in self.exercises)

    def checks_of(self, exercise_id: str) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.exercise == exercise_id)

    def solved(self, exercise_id: str) -> bool:
        counted = [c for c in self.checks_of(exercise_id) if c.outcome is not Outcome.SKIPPED]
        return bool(counted) and all(c.passed for c in counted)

    @property
    def summary(self) -> str:
        solved = sum(self.solved(e.id) for e in self.exercises)
        return (
            f"{solved}/{len(self.exercises)} exercises solved, "
            f"{self.passed}/{self.total} checks passed"
        )

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
        }


def _mark(c: Check) -> str:
    return "–" if c.outcome is Outcome.SKIPPED else ("✓" if c.passed else "✗")


def _chapter_topic(module: str) -> str:
    # "ch02_timeouts" -> "timeouts"
    return module.partition("_")[2].replace("_", " ") if module.startswith("ch") else ""


# --- public entry points ----------------------------------------------------------------


def check(
    exercise_id: str,
    *,
    target: str | os.PathLike | None = None,
    timeout_s: float = _CHECK_TIMEOUT_S,
) -> GradeReport:
    """Run exercise ``exercise_id``'s checks and return the table (a notebook shows it).

    Never raises because the exercise fails; raises ValueError for an unknown id.
    """
    return grade(target, [str(exercise_id)], timeout_s=timeout_s)


def grade(
    target: str | os.PathLike | None = None,
    exercise_ids: Iterable[str] | None = None,
    *,
    timeout_s: float = _CHECK_TIMEOUT_S,
    per_test_timeout_s: float = _PER_TEST_TIMEOUT_S,
    tests_dir: Path | None = None,
) -> GradeReport:
    """Grade ``target`` on the given exercises (all by default).

    ``tests_dir`` replaces the repository's ``tests/exercises`` (for testing the grader);
    pytest runs from its grandparent folder.
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
    name, folder = _resolve_target(target)
    rows = _run(
        name,
        folder,
        wanted,
        select=exercise_ids is not None,
        tests_dir=tests_dir,
        timeout_s=timeout_s,
        per_test_timeout_s=per_test_timeout_s,
    )
    exercises = tuple(known[i] for i in wanted)
    rows = _attribute_load_errors(rows, exercises)
    if exercise_ids is None:  # rows with no known exercise (no marker...) still show
        extra = sorted({c.exercise for c in rows} - set(known), key=_id_key)
        exercises += tuple(Exercise(i, title=_ORPHANS if i == "?" else "") for i in extra)
    # Only what the table shows counts: another chapter's broken test file is not 0.1's.
    shown = {e.id for e in exercises}
    rows = [r for r in rows if r.exercise in shown]
    return GradeReport(_label(name, folder), exercises, tuple(rows))


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
    unknown id is refused at once; titles come from the stubs' NotImplementedError.
    """
    found: dict[str, Exercise] = {}
    stubs = tests_dir.parents[1] / "exercises"
    for path in sorted(tests_dir.glob("test_*.py")):
        tree = _parse(path)
        module = _module_constant(tree)
        titles = _stub_titles(stubs / f"{module}.py") if module else {}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "exercise"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                ex_id = str(node.args[0].value)
                found.setdefault(ex_id, Exercise(ex_id, module, titles.get(ex_id, ""), path.name))
    return {i: found[i] for i in sorted(found, key=_id_key)}


def _module_constant(tree: ast.Module) -> str:
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "MODULE" for t in node.targets)
            and isinstance(node.value, ast.Constant)
        ):
            return str(node.value.value)
    return ""


def _stub_titles(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return {m[0]: m[1].strip() for m in _STUB_TITLE.findall(path.read_text(encoding="utf-8"))}


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
) -> list[Check]:
    if importlib.util.find_spec("pytest") is None:
        raise GradingError("grading needs pytest: pip install -e '.[dev]'")
    cwd = tests_dir.parents[1]
    with tempfile.TemporaryDirectory(prefix="course-grading-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [
            sys.executable, "-m", "pytest", str(tests_dir),
            "-p", _PLUGIN, "--target", name, "--grading-json", str(out),
            "-q", "--tb=line", "--color=no", "-p", "no:cacheprovider",
            "--continue-on-collection-errors", "--rootdir", str(cwd), "--confcutdir", str(cwd),
            "-o", f"timeout={per_test_timeout_s:g}",
            # Grading tests are neither notebooks nor property-based runs that need
            # hypothesis's reporting; importing those two plugins took most of a check.
            "-p", "no:nbval", "-p", "no:hypothesispytest",
        ]  # fmt: skip
        for ex_id in exercise_ids if select else ():
            cmd += ["--exercise", ex_id]
        if folder is not None:
            cmd += ["--grading-package-dir", str(folder)]
        code, output, timed_out = _call(cmd, cwd, _environment(name, folder), timeout_s)
        data = _read(out)
    if data is None or (not data["tests"] and code not in (0, 1, 5)):
        if timed_out:
            return [Check(i, "all checks", False, TOO_LONG) for i in exercise_ids]
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise GradingError(f"the grading run failed (pytest exit code {code}):\n{tail}")
    return _checks(data, timed_out)


def _environment(name: str, folder: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["COURSE_TARGET"] = name
    # Options from the learner's shell (say PYTEST_ADDOPTS=-x) would change what runs.
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    # The plugin must come from this very course_lib; a submitted folder's parent goes
    # first so that its modules can import each other (the plugin pins the package
    # itself, since `python -m` puts the current folder ahead of PYTHONPATH).
    paths = [str(Path(__file__).resolve().parents[1])]
    if folder is not None:
        paths.insert(0, str(folder.parent))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def _call(cmd: list[str], cwd: Path, env: dict[str, str], timeout_s: float):
    """Run ``cmd``; ``(exit code, output, timed out)``. Kills it all at the deadline."""
    posix = os.name == "posix"
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        # Its own process group, so that the kill reaches whatever the learner's code
        # started too (a subprocess, a server) and the notebook gets its prompt back.
        start_new_session=posix,
    )
    try:
        output, _ = proc.communicate(timeout=timeout_s)
        return proc.returncode, output, False
    except subprocess.TimeoutExpired:
        _kill(proc, posix)
        output, _ = proc.communicate()
        return proc.returncode, output, True
    except BaseException:  # KeyboardInterrupt: "interrupt the kernel" must stop it too
        _kill(proc, posix)
        proc.wait()
        raise


def _kill(proc: subprocess.Popen, posix: bool) -> None:
    try:
        if posix:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except ProcessLookupError:
        pass


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _checks(data: dict, timed_out: bool) -> list[Check]:
    checks = []
    for row in data["tests"]:
        if row["outcome"] is None:  # collected, never finished
            row = {**row, "outcome": "failed", "message": TOO_LONG if timed_out else _STOPPED}
        outcome = Outcome(row["outcome"])
        exercise = row["exercise"] or "?"
        passed = outcome is Outcome.PASSED
        checks.append(
            Check(exercise, row["description"], passed, row["message"], outcome, row["test"])
        )
    for error in data.get("collection_errors", []):
        description = f"load {error['test']}"
        checks.append(
            Check("?", description, False, error["message"], Outcome.ERROR, error["test"])
        )
    return checks


# --- command line -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m course_lib.grading``: 0 whatever the grades, 2 for a usage error."""
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
        type=float,
        default=_CLI_TIMEOUT_S,
        metavar="S",
        help=f"give up on the whole run after S seconds (default {_CLI_TIMEOUT_S:g})",
    )
    args = parser.parse_args(argv)
    try:
        report = grade(args.target, args.exercise, timeout_s=args.timeout)
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
