"""Grade a class: every learner's folder, in parallel, into one table (CSV, HTML, JSON).

    python -m course_lib.grading --class submissions/            # -> submissions-grades/
    python -m course_lib.grading --class submissions/ --exercise 0.1 --jobs 2 --out grades/

``submissions/`` holds one folder per learner, named after them. A learner's folder
either holds an ``exercises/`` folder (``alice/exercises/ch00_warmup.py``, as handed
in from a clone of the course) or is that package itself (``bob/ch00_warmup.py``,
the folder's contents handed in loose); ``exercises/`` wins when both are there. A
folder that is neither gets a row saying so and why, and is not graded; files next
to the folders (``carol.zip``) are named on stderr and skipped.

Each folder is graded as ``grade()`` grades one (see course_lib.grading_run for what
that guards against), in a pool of ``--jobs`` threads, each waiting on its own pytest
process, against one :class:`CourseSnapshot` taken before the first: whatever a
submission does to the course's files, the next one is graded with what the teacher
had. A change to the course itself is blamed on the folders that were being graded
when it happened; when several were, each is graded again, alone, to tell which.

One line per finished folder on stderr (``[ 3/30] alice: 14/18 solved, 61/72 checks,
23.4 s``), then ``grades.csv``, ``grades.html`` (self-contained, a collapsible row of
checks per learner) and ``grades.json`` in ``--out`` (default: ``<SUBMISSIONS>-grades``
beside the submissions folder, never inside it).

Exit codes: 0 once the table is written, whatever the grades (a folder that could not
be graded is a row that says so); 2 for a usage error (no such folder, no folder in
it, an unknown exercise, --jobs below 1); 1 when the grader cannot run or the table
cannot be written; 130 when interrupted (the table holds the folders graded so far).
"""

from __future__ import annotations

__all__ = ["ClassReport", "Learner", "Status", "find_learners", "grade_class", "main"]

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from course_lib import grading
from course_lib.grading import GradingError
from course_lib.grading_run import Submission
from course_lib.grading_sandbox import CourseSnapshot
from course_lib.grading_table import ClassReport, Learner, Status

_PACKAGE = "exercises"
_COURSE_CHANGE = "the course's "  # run_submission's prefix for a change to the course itself
_OUT_FILES = ("grades.csv", "grades.html", "grades.json")


# --- which folders, and where their package is ---------------------------------------


def find_learners(
    submissions: Path, modules: Sequence[str], *, out: Path | None = None
) -> tuple[list[Learner], list[str]]:
    """The learners' folders in ``submissions``, each with its package or a reason;
    and the names of the files beside them (skipped)."""
    learners, skipped = [], []
    for entry in sorted(submissions.iterdir(), key=lambda p: _natural(p.name)):
        if entry.name.startswith((".", "__")) or (out and entry.resolve() == out.resolve()):
            continue
        if not entry.is_dir():
            skipped.append(entry.name)
            continue
        learner = Learner(entry.name, entry)
        learner.package, learner.reason = _package_of(entry, modules)
        if learner.package is None:
            learner.status = Status.NOT_A_SUBMISSION
        learners.append(learner)
    return learners, skipped


def _package_of(folder: Path, modules: Sequence[str]) -> tuple[Path | None, str]:
    if (folder / _PACKAGE).is_dir():
        return folder / _PACKAGE, ""
    if (folder / "__init__.py").is_file() or any((folder / f"{m}.py").is_file() for m in modules):
        return folder, ""
    reason = f"neither an {_PACKAGE}/ folder nor the course's modules ({modules[0]}.py, …) in it"
    deeper = sorted(
        p.relative_to(folder).as_posix() for p in folder.glob(f"*/{_PACKAGE}") if p.is_dir()
    )
    if deeper:
        reason += f"; found {deeper[0]}/: move it up a level"
    return None, reason


def _natural(name: str) -> list:
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part.casefold())
        for part in re.split(r"(\d+)", name)
        if part
    ]


# --- grading them ------------------------------------------------------------------


class _Interrupted(Exception):
    """Raised from a run's progress callback: the teacher pressed Ctrl-C."""


def grade_class(
    learners: list[Learner],
    exercise_ids: Sequence[str] | None,
    *,
    jobs: int,
    timeout_s: float,
    snapshot: CourseSnapshot,
    on_done: Callable[[Learner, int, int], None] = lambda learner, done, total: None,
    stop: threading.Event | None = None,
    say: Callable[[str], None] = lambda text: None,
) -> None:
    """Grade each learner that has a package, ``jobs`` at a time, filling in the rows.

    ``on_done(learner, done, total)`` is called (from the calling thread) as each
    finishes. Setting ``stop`` ends the running grades within a fraction of a second
    and leaves the rest INTERRUPTED. Changes to the course are then attributed.
    """
    stop = stop or threading.Event()
    course = _CourseFiles(snapshot)
    todo = [learner for learner in learners if learner.package is not None]

    def one(learner: Learner) -> Learner:
        _grade_one(learner, exercise_ids, timeout_s, snapshot, course, stop)
        return learner

    pool = concurrent.futures.ThreadPoolExecutor(jobs, thread_name_prefix="grading-class")
    try:
        futures = [pool.submit(one, learner) for learner in todo]
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            on_done(future.result(), done, len(todo))
    except BaseException:
        stop.set()  # the runs under way stop at their next look (4 times a second)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    _blame_course_changes(todo, exercise_ids, timeout_s, snapshot, course, stop, say)


def _grade_one(
    learner: Learner,
    exercise_ids: Sequence[str] | None,
    timeout_s: float,
    snapshot: CourseSnapshot,
    course: _CourseFiles,
    stop: threading.Event,
) -> None:
    def progress(p: grading.Progress) -> None:
        if stop.is_set() and not p.finished:
            raise _Interrupted

    assert learner.package is not None
    label = learner.package.relative_to(learner.folder.parent).as_posix()
    before, start = course.state(), time.time()
    clock = time.monotonic()
    try:
        report = grading.grade(
            Submission(_PACKAGE, learner.package.resolve(), label),
            exercise_ids,
            timeout_s=timeout_s,
            progress=progress,
            snapshot=snapshot,
        )
    except _Interrupted:
        learner.status = Status.INTERRUPTED
        learner.reason = "grading was interrupted"
    except Exception as exc:  # one broken folder never spoils the others
        learner.status = Status.FAILED
        learner.reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
    else:
        # The run reports changes to the course seen when it ended, whoever made them:
        # _blame_course_changes decides whose they are.
        own = tuple(t for t in report.tampering if not t.startswith(_COURSE_CHANGE))
        learner.report = dataclasses.replace(report, tampering=own)
        learner.status = Status.TAMPERED if own else Status.GRADED
    learner.seconds = time.monotonic() - clock
    learner.window = (start, time.time())
    learner.course_changes = course.diff(before, course.state())


def _blame_course_changes(
    learners: list[Learner],
    exercise_ids,
    timeout_s,
    snapshot,
    course: _CourseFiles,
    stop: threading.Event,
    say: Callable[[str], None],
) -> None:
    """A change to the course is in the window of every run under way when it was made:
    if that is one run, it is that learner's; if several, each is graded again alone,
    and those whose run changes the course again are blamed (all of them, if none)."""
    suspects: dict[str, list[Learner]] = {}
    for learner in learners:
        for change in learner.course_changes:
            suspects.setdefault(change, []).append(learner)
    alone: dict[str, bool] = {}
    for change, who in suspects.items():
        if len(who) > 1 and not stop.is_set():
            names = ", ".join(w.name for w in who)
            say(
                f"the course's {change} while {names} were graded: each again, alone, to tell which"
            )
            for learner in who:
                if learner.name not in alone:
                    again = dataclasses.replace(learner, course_changes=[])
                    _grade_one(again, exercise_ids, timeout_s, snapshot, course, stop)
                    alone[learner.name] = bool(again.course_changes)
        culprits = [w for w in who if alone.get(w.name, True)] or who
        for learner in culprits:
            if learner.report is None:
                continue
            others = [w.name for w in culprits if w is not learner]
            text = _COURSE_CHANGE + change
            if others:
                text += f" (while {', '.join(others)} was graded too: one of them did it)"
            tampering = (*learner.report.tampering, text)
            learner.report = dataclasses.replace(learner.report, tampering=tampering)
            learner.status = Status.TAMPERED


class _CourseFiles:
    """The course's own files a run must leave alone, as they are now (not as copied)."""

    def __init__(self, snapshot: CourseSnapshot) -> None:
        self.root = snapshot.root
        self.paths = sorted(snapshot.watched)

    def state(self) -> dict[Path, tuple | None]:
        found: dict[Path, tuple | None] = {}
        for path in self.paths:
            try:
                stat = path.stat()
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                found[path] = None
                continue
            found[path] = (stat.st_mtime_ns, stat.st_size, digest)
        return found

    def diff(self, before: dict, after: dict) -> list[str]:
        changes = []
        for path in self.paths:
            if before.get(path) != after.get(path):
                shown = path.relative_to(self.root).as_posix()
                changes.append(f"{shown} {'deleted' if after.get(path) is None else 'changed'}")
        return changes


# --- command line ------------------------------------------------------------------


def default_jobs() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_out(submissions: Path) -> Path:
    """``<submissions>-grades`` beside it: not inside, where it would be a learner."""
    submissions = submissions.resolve()
    if not submissions.name:
        return Path.cwd() / "grades"
    return submissions.with_name(f"{submissions.name}-grades")


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``python -m course_lib.grading --class DIR``: see the module's docstring."""

    def usage(message: str) -> int:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2

    def say(text: str) -> None:
        print(f"grading: {text}", file=sys.stderr, flush=True)

    submissions = Path(args.class_dir).expanduser()
    if args.target is not None:
        return usage("--class grades every folder in DIR: leave --target out")
    if not submissions.is_dir():
        return usage(f"--class {args.class_dir}: no such folder")
    jobs = args.jobs if args.jobs is not None else default_jobs()
    if jobs < 1:
        return usage(f"--jobs {jobs}: give 1 or more")
    out = Path(args.out).expanduser() if args.out else default_out(submissions)
    try:
        root = grading._course_root()
        known = grading.discover(root / "tests" / "exercises")
        unknown = [i for i in args.exercise or () if i not in known]
        if unknown:
            return usage(
                f"unknown exercise {', '.join(map(repr, unknown))}; "
                f"the exercises are: {', '.join(known)}"
            )
        modules = sorted({x.module for x in known.values() if x.module})
        learners, skipped = find_learners(submissions, modules, out=out)
        if not learners:
            return usage(f"--class {args.class_dir}: no folder in it (one per learner)")
        snapshot = CourseSnapshot.take(root)
    except GradingError as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
    ids = list(args.exercise) if args.exercise else None
    exercises = tuple(known[i] for i in (ids or known))
    report = ClassReport(submissions.resolve(), exercises, learners, jobs, skipped=skipped)
    for name in skipped:
        say(f"skipped {name}: not a folder (one folder per learner)")
    graded = sum(learner.package is not None for learner in learners)
    say(
        f"{graded} folders to grade in {submissions} with {jobs} jobs "
        f"({'every exercise' if ids is None else 'exercises ' + ', '.join(ids)})"
    )
    for learner in learners:
        if learner.package is None:
            say(f"not grading {learner.name}: {learner.reason}")
    start = time.monotonic()
    width = len(str(graded))

    def done(learner: Learner, n: int, total: int) -> None:
        row = report.row(learner)
        what = (
            f"{row['solved']} solved, {row['checks']} checks"
            if learner.report
            else learner.status.value
        )
        if learner.status is Status.TAMPERED:
            what += ", TAMPERING DETECTED"
        elif learner.status is Status.FAILED:
            what += f": {learner.reason}"
        say(
            f"[{n:>{width}}/{total}] {learner.name}: {what}, {learner.seconds:.1f} s "
            f"({time.monotonic() - start:.0f} s in all)"
        )

    code = 0
    try:
        grade_class(
            learners,
            ids,
            jobs=jobs,
            timeout_s=args.timeout,
            snapshot=snapshot,
            on_done=done,
            say=say,
        )
    except KeyboardInterrupt:
        report.interrupted, code = True, 130
        say("interrupted: writing the folders graded so far")
    report.seconds = time.monotonic() - start
    try:
        _write(out, report)
    except OSError as exc:
        print(f"{parser.prog}: cannot write the table to {out}: {exc}", file=sys.stderr)
        return 1
    tampered = [x.name for x in learners if x.status is Status.TAMPERED]
    say(
        f"graded {graded} folders in {report.seconds:.0f} s; wrote "
        f"{', '.join(str(out / f) for f in _OUT_FILES)}"
    )
    if tampered:
        say(f"tampering detected in: {', '.join(tampered)} (see the note in their rows)")
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    return code


def _write(out: Path, report: ClassReport) -> None:
    out.mkdir(parents=True, exist_ok=True)
    texts = (
        report.csv(),
        report.html(),
        json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n",
    )
    for name, text in zip(_OUT_FILES, texts, strict=True):
        partial = out / f".{name}.partial"
        partial.write_text(text, encoding="utf-8", newline="")
        partial.replace(out / name)
