"""One grading run of one submission: pytest in a sandbox, watched, and cleaned up after.

    result = run_submission(Submission("exercises", folder), ["0.1"], tests_dir=...)
    result.rows, result.stopped, result.tampering

``course_lib.grading`` turns the rows into a report; a class of learners can call
:func:`run_submission` from several threads at once (each run has its own temporary
folder, pipes and processes; pass one :class:`CourseSnapshot` to them all).

What it guards against, and how:

- the code under test must not change what it is graded with: pytest runs from a
  fresh read-only copy of the grading tests and course_lib (grading_sandbox), and the
  rows come back over a pipe, not a file the code could rewrite at exit. What the
  run changed in the copy or in the course, or rows sent twice, is reported.
- nothing it starts outlives the run: pytest runs under _grading_supervisor.py, which
  kills pytest's process group and, on Linux, every orphan (it is their subreaper).
  The run is over when pytest is, not when the last process holding a pipe exits.
- whatever it prints, the grader keeps the last ``_OUTPUT_TAIL_BYTES`` of it.
- a module that kills Python or hangs past every bound while being imported fails
  its own rows ("exited Python", "could not be stopped"), and the run goes on with
  the other modules (``--grading-skip-module``, and ``--deselect`` for the rows done).
"""

from __future__ import annotations

__all__ = ["RunResult", "Submission", "run_submission"]

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from course_lib.grading_sandbox import CourseSnapshot, remove

_PLUGIN = "course_lib._grading_plugin"
_SUPERVISOR = "course_lib/_grading_supervisor.py"
_POLL_S = 0.25
# The grader keeps this much of what the run printed: enough for the error of a
# grader that cannot start, never the gigabytes of a `while True: print(...)`.
_OUTPUT_TAIL_BYTES = 64 * 1024
# A line of rows is ~40 KB for the whole course; one longer than this is not ours.
_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# After SIGTERM the supervisor kills and reaps in milliseconds; then SIGKILL the group.
_TERM_GRACE_S = 5.0

EXITED_IN_CHECK = "did not finish: the code exited Python during this check (os._exit()?)"
EXITED_AT_IMPORT = "{path} could not be imported: it exited Python (os._exit()?) while imported"
STUCK_AT_IMPORT = (
    "{path} took too long to import and could not be stopped: does it catch every "
    "exception (except BaseException:) or block outside Python when imported?"
)


@dataclasses.dataclass(frozen=True)
class Submission:
    """What is graded: ``Submission("exercises", Path("alice/exercises"), "alice/exercises")``.

    ``folder`` None: the package ``name`` as Python finds it (an installed package).
    """

    name: str
    folder: Path | None = None
    label: str = ""  # how messages name it: "alice/exercises" in "alice/exercises/ch00.py"


@dataclasses.dataclass(frozen=True)
class RunResult:
    """Rows as the plugin wrote them (dicts), and how the run ended."""

    rows: list[dict[str, Any]]
    collection_errors: list[dict[str, str]]
    current: dict[str, Any] | None  # the check running when the run was stopped
    stopped: str  # "", "deadline" or "stuck"
    code: int | None  # pytest's exit code (the last attempt's)
    output: str  # the tail of what the run printed
    tampering: list[str]  # what the run changed that it must not have
    data_seen: bool  # the plugin said anything at all


Callback = Callable[[float, dict | None], None]


def run_submission(
    submission: Submission,
    exercise_ids: Sequence[str],
    *,
    select: bool,
    tests_dir: Path,
    timeout_s: float,
    per_test_timeout_s: float,
    after_hang_timeout_s: float = 0.0,
    watch: Any = None,
    snapshot: CourseSnapshot | None = None,
    stuck_grace_s: float = 5.0,
    test_files: Sequence[str] = (),
) -> RunResult:
    """Grade ``submission`` once; ``watch``: a grading._Watch (progress, stuck checks).

    ``test_files``: the names of the grading test files to collect (all of them when
    empty). Collecting only the files of the exercises asked for halves a one-exercise
    check (0.7 s against 1.5 s for 0.1): the other chapters' files and their imports.
    """
    root = tests_dir.parents[1]
    if snapshot is None:
        lib = Path(__file__).resolve().parent
        snapshot = CourseSnapshot.take(root, lib=lib, tests=tests_dir, skip=submission.folder)
    deadline = time.monotonic() + timeout_s
    settled: dict[str, dict[str, Any]] = {}  # rows of earlier attempts, by test id
    order: list[str] = []
    skip_modules: list[str] = []
    errors: list[dict[str, str]] = []
    tampering: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="course-grading-"))
    try:
        course = snapshot.materialize(tmp / "course")
        while True:
            done = [test for test, row in settled.items() if row["outcome"] is not None]
            cmd = _command(course, submission, exercise_ids, select, per_test_timeout_s,
                           after_hang_timeout_s, skip_modules, done, test_files)  # fmt: skip
            if watch is not None:  # the last attempt's "current" is not running any more
                watch.settled, watch.data = dict(settled), None
            attempt = _attempt(cmd, course, submission, deadline, watch, stuck_grace_s)
            data = attempt.data or {}
            for row in data.get("tests", []):
                if row["test"] not in order:
                    order.append(row["test"])
                settled[row["test"]] = row
            errors = errors or data.get("collection_errors", [])
            tampering += attempt.tampering
            current = data.get("current") or {}
            importing = current.get("importing")
            died = not attempt.final and attempt.data is not None
            running = settled.get(current.get("test", ""))
            if died and not attempt.stopped and not importing and running is not None:
                # The code exited Python during a check: that check fails, the rest go on.
                running.update(outcome="failed", message=EXITED_IN_CHECK)
                continue
            resumable = attempt.stopped in ("", "stuck") and importing and died
            if not resumable or importing["module"] in skip_modules:
                break
            # The module killed the run while imported: its rows fail, the rest go on.
            template = STUCK_AT_IMPORT if attempt.stopped else EXITED_AT_IMPORT
            message = template.format(path=importing["path"])
            for test in order:
                row = settled[test]
                if row.get("module") == importing["module"] and row["outcome"] is None:
                    settled[test] = {**row, "outcome": "failed", "message": message}
            skip_modules.append(importing["module"])
            if time.monotonic() >= deadline:
                break
        tampering += [f"the grading copy's {c}" for c in snapshot.changes(course)]
    finally:
        remove(tmp)
    tampering += [f"the course's {c}" for c in snapshot.changes()]
    rows = [settled[t] for t in order]
    last_current = (attempt.data or {}).get("current")
    return RunResult(rows, errors, last_current, attempt.stopped, attempt.code, attempt.output,
                     tampering, attempt.data is not None or bool(rows))  # fmt: skip


def _command(
    course: Path,
    submission: Submission,
    exercise_ids: Sequence[str],
    select: bool,
    per_test_timeout_s: float,
    after_hang_timeout_s: float,
    skip_modules: Sequence[str],
    done: Sequence[str],
    test_files: Sequence[str] = (),
) -> list[str]:
    tests = course / "tests" / "exercises"
    paths = [str(tests / name) for name in test_files] or [str(tests)]
    cmd = [
        sys.executable, "-S", str(course / _SUPERVISOR),
        sys.executable, "-m", "pytest", *paths,
        "-p", _PLUGIN, f"--target={submission.name}",
        "-q", "--tb=line", "--color=no", "-p", "no:cacheprovider",
        "--continue-on-collection-errors", "--rootdir", str(course), "--confcutdir", str(course),
        # What the code prints goes straight to the grader, which keeps its tail:
        # captured, pytest would hold it whole and print it again with the failure.
        "--capture=no", "--show-capture=no",
        # On the command line, so that a PYTEST_TIMEOUT in the learner's shell
        # does not change it.
        f"--timeout={per_test_timeout_s:g}",
        # asyncio's debug mode (on for the course's own test runs) records a
        # traceback for every task and callback: the checks with a thousand tasks
        # took 8x as long with it, and the bounds in grading.py would not fit them.
        # What the checks judge does not depend on it.
        "-o", "asyncio_debug=false",
        f"--grading-after-hang-timeout={after_hang_timeout_s:g}",
        # Grading tests are neither notebooks nor property-based runs that need
        # hypothesis's reporting; importing those two plugins took most of a check.
        # Nor do they run on anyio, in xdist workers or with platformdirs' fixtures:
        # not importing those takes a one-exercise check from 0.66 s to 0.46 s.
        "-p", "no:nbval", "-p", "no:hypothesispytest", "-p", "no:anyio", "-p", "no:xdist",
        "-p", "no:xdist.looponfail", "-p", "no:platformdirs",
    ]  # fmt: skip
    # Every value in the same word as its option: pytest looks for its configuration
    # file above every word that names a folder, before it knows the plugin's options.
    if (course / "pyproject.toml").is_file():
        cmd.append(f"--config-file={course / 'pyproject.toml'}")
    cmd += [f"--exercise={ex_id}" for ex_id in (exercise_ids if select else ())]
    if submission.folder is not None:
        cmd.append(f"--grading-package-dir={submission.folder}")
    if submission.label:
        cmd.append(f"--grading-label={submission.label}")
    cmd += [f"--grading-skip-module={module}" for module in skip_modules]
    cmd += [f"--deselect={test}" for test in done]
    return cmd


def _environment(course: Path, submission: Submission) -> dict[str, str]:
    env = dict(os.environ)
    env["COURSE_TARGET"] = submission.name
    # Options from the learner's shell (say PYTEST_ADDOPTS=-x) would change what runs.
    for name in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "PYTHONSTARTUP", "PYTHONINSPECT"):
        env.pop(name, None)
    # The copy's course_lib first (the editable install would find the course's own);
    # then a submitted folder's parent, so that its modules can import each other (the
    # plugin pins the package itself, since `python -m` puts the current folder first).
    paths = [str(course)]
    if submission.folder is not None:
        paths.append(str(submission.folder.parent))
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # nothing to write into: the copy is read-only
    return env


@dataclasses.dataclass
class _Attempt:
    data: dict | None
    final: bool
    stopped: str
    code: int | None
    output: str
    tampering: list[str]


class _Tail(threading.Thread):
    """Reads a pipe to its end, keeping only the last ``limit`` bytes."""

    def __init__(self, fd: int, limit: int = _OUTPUT_TAIL_BYTES) -> None:
        super().__init__(name="grading-output", daemon=True)
        self.fd, self.limit = fd, limit
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0

    def run(self) -> None:
        with open(self.fd, "rb", buffering=0, closefd=True) as pipe:
            while chunk := pipe.read(65536):
                self.chunks.append(chunk)
                self.size += len(chunk)
                while self.size - len(self.chunks[0]) >= self.limit:
                    self.size -= len(self.chunks.popleft())

    def text(self) -> str:
        return b"".join(self.chunks)[-self.limit :].decode("utf-8", "replace")


class _Rows(threading.Thread):
    """Reads the plugin's JSON lines; keeps the last one, and notices forgeries."""

    def __init__(self, fd: int) -> None:
        super().__init__(name="grading-rows", daemon=True)
        self.fd = fd
        self.last: bytes | None = None
        self.finals = 0
        self.after_final = False
        self.garbled = False

    def run(self) -> None:
        pending = b""
        with open(self.fd, "rb", buffering=0, closefd=True) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._line(line)
                if len(pending) > _MAX_MESSAGE_BYTES:
                    self.garbled, pending = True, b""
        if pending.strip():
            self.garbled = True

    def _line(self, line: bytes) -> None:
        if self.finals:
            self.after_final = True
            return
        self.last = line
        if b'"final": true' in line:
            self.finals += 1

    def data(self) -> dict | None:
        line = self.last
        if line is None:
            return None
        try:
            data = json.loads(line)
        except ValueError:
            self.garbled = True
            return None
        return data if isinstance(data, dict) and isinstance(data.get("tests"), list) else None


class _FileRows:
    """Windows, which passes no pipe but stdout's to a child: the rows from a file."""

    finals = 0
    after_final = garbled = False

    def __init__(self, path: Path) -> None:
        self.path = path

    def start(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass

    def data(self) -> dict | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("tests"), list):
            return None
        self.finals = int(data.get("final") is True)
        return data


def _attempt(
    cmd: list[str],
    course: Path,
    submission: Submission,
    deadline: float,
    watch: Any,
    stuck_grace_s: float,
) -> _Attempt:
    posix = os.name == "posix"
    out_r, out_w = os.pipe()
    pass_fds: tuple[int, ...] = ()
    if posix:
        rows_r, rows_w = os.pipe()
        pass_fds = (rows_w,)
        cmd = [*cmd, f"--grading-fd={rows_w}"]
    else:
        rows_file = course.parent / f"rows-{os.urandom(8).hex()}.json"
        cmd = [*cmd, f"--grading-json={rows_file}"]
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=course,
            env=_environment(course, submission),
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
            # Its own session: the notebook's Ctrl-C (interrupt the kernel) is ours to
            # pass on, and the kill reaches whatever is left in it.
            start_new_session=posix,
        )
    finally:
        os.close(out_w)
        for fd in pass_fds:
            os.close(fd)
    tail = _Tail(out_r)
    rows = _Rows(rows_r) if posix else _FileRows(rows_file)
    tail.start()
    rows.start()
    stopped = ""
    try:
        while True:
            try:
                proc.wait(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            now = time.monotonic()
            if watch is not None:
                watch.poll(now, rows.data())
            if now >= deadline:
                stopped = "deadline"
            elif watch is not None and watch.stuck(now, stuck_grace_s):
                stopped = "stuck"
            if stopped:
                _stop(proc, posix)
                break
    except BaseException:  # KeyboardInterrupt: "interrupt the kernel" must stop it too
        _stop(proc, posix)
        raise
    finally:
        # The supervisor has ended pytest and all it started: the pipes close now.
        for reader in (rows, tail):
            reader.join(_TERM_GRACE_S)
    data = rows.data()
    tampering = []
    if rows.finals > 1 or rows.after_final or rows.garbled:
        tampering.append("rows sent back twice or garbled (by the code under test?)")
    if watch is not None:
        watch.poll(time.monotonic(), data, finished=False)
    return _Attempt(data, rows.finals > 0, stopped, proc.returncode, tail.text(), tampering)


def _stop(proc: subprocess.Popen, posix: bool) -> None:
    """SIGTERM the supervisor (it kills and reaps everything), then SIGKILL the rest."""
    if posix:
        try:
            proc.terminate()
            proc.wait(_TERM_GRACE_S)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    else:
        proc.kill()
    proc.wait()
