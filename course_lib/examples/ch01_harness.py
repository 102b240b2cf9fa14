"""Chapter 1's plumbing: scripts and services run in a subprocess, logs caught.

The chapter shows what ``asyncio.run()`` does to a whole process (shutdown, Ctrl-C,
a service that swallows cancels) by running small scripts in a separate Python:
the notebook's kernel must never run ``asyncio.run()`` itself, and signals go to a
process. Every read has a timeout, so a script that hangs cannot hang the notebook.

    result = run_script("import asyncio; print('hi')")
    result.lines, result.exit_code  # (['hi'], 0)
"""

from __future__ import annotations

__all__ = [
    "Script",
    "caught_logs",
    "facts",
    "pythons",
    "read_until",
    "run_script",
    "start_service",
    "stopped",
]

import contextlib
import dataclasses
import logging
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SERVICE = [sys.executable, "-m", "course_lib.examples.shutdown_demo"]


@contextlib.contextmanager
def caught_logs(name: str) -> Iterator[list[str]]:
    """Collect the first line of each record logger ``name`` emits, instead of printing it."""
    caught: list[str] = []
    logger = logging.getLogger(name)
    handler = logging.Handler()
    handler.emit = lambda record: caught.append(record.getMessage().splitlines()[0])
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield caught
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _start(cmd: Sequence[str]) -> subprocess.Popen[str]:
    """Start ``cmd``; a thread copies its output (stderr too), line by line, into proc.lines."""
    proc = subprocess.Popen(
        list(cmd), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    proc.lines = queue.Queue()  # type: ignore[attr-defined]

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            proc.lines.put(line.rstrip("\n"))  # type: ignore[attr-defined]
        proc.lines.put(None)  # type: ignore[attr-defined]  # end of output

    threading.Thread(target=pump, daemon=True).start()
    return proc


def start_service(*flags: str) -> subprocess.Popen[str]:
    """Start course_lib.examples.shutdown_demo with ``flags``; its lines go to proc.lines."""
    return _start([*SERVICE, *flags])


def read_until(proc: subprocess.Popen[str], prefix: str | None, timeout_s: float = 10) -> list[str]:
    """The lines ``proc`` prints up to one that starts with ``prefix`` (None: to the end).

    Raises queue.Empty if it prints nothing for ``timeout_s``, RuntimeError if it ends
    before printing ``prefix``.
    """
    lines = []
    while (line := proc.lines.get(timeout=timeout_s)) is not None:  # type: ignore[attr-defined]
        lines.append(line)
        if prefix is not None and line.startswith(prefix):
            return lines
    if prefix is not None:
        raise RuntimeError(f"the process ended before printing {prefix!r}: {lines}")
    return lines


def stopped(proc: subprocess.Popen[str], timeout_s: float = 10) -> tuple[int, list[str]]:
    """Wait (bounded) until ``proc`` exits; return its exit code and its last lines."""
    try:
        return proc.wait(timeout=timeout_s), read_until(proc, None, timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


def facts(lines: Sequence[str], code: int) -> list[str]:
    """The shutdown demo's lines that do not depend on timing, elapsed times blanked."""
    keep = ("stop requested", "report", "jobs left")
    kept = [re.sub(r"in [\d.]+ s$", "in … s", line) for line in lines if line.startswith(keep)]
    return [*kept, f"exit code {code}"]


@dataclasses.dataclass(frozen=True)
class Script:
    """What a script printed (stdout and stderr, in order), and how it ended.

    ``exit_code`` is None when the script was still running at the deadline and was
    killed; a negative code means "killed by that signal" (-2: SIGINT).
    """

    lines: list[str]
    exit_code: int | None

    @property
    def killed(self) -> bool:
        return self.exit_code is None

    def show(self) -> None:
        """Print the lines, then how the script ended."""
        print(*self.lines, sep="\n")
        if self.killed:
            print("(still running at the deadline: killed)")
        elif self.exit_code < 0:
            print(f"(killed by {signal.Signals(-self.exit_code).name})")
        else:
            print(f"(exit code {self.exit_code})")


def run_script(
    source: str,
    *,
    timeout_s: float = 10,
    sigint_after: Sequence[str] = (),
    sigint_delay_s: float = 0.2,
    python: str = sys.executable,
) -> Script:
    """Run ``source`` in a fresh ``python -c``; never longer than ``timeout_s``.

    ``sigint_after``: for each prefix in turn, wait for a line that starts with it,
    then, ``sigint_delay_s`` later (when the script is back in its event loop, waiting),
    send SIGINT (what Ctrl-C does), e.g. ``("ready", "ignoring")``.
    Tracebacks are cut to their last line, so the output shows what was raised.
    """
    proc = _start([python, "-X", "utf8", "-u", "-c", source])
    lines: list[str] = []
    waiting_for = list(sigint_after)
    try:
        while (line := proc.lines.get(timeout=timeout_s)) is not None:  # type: ignore[attr-defined]
            lines.append(line)
            if waiting_for and line.startswith(waiting_for[0]):
                del waiting_for[0]
                time.sleep(sigint_delay_s)
                proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=timeout_s)
    except (subprocess.TimeoutExpired, queue.Empty):
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        while (line := proc.lines.get(timeout=timeout_s)) is not None:  # type: ignore[attr-defined]
            lines.append(line)
        return Script(_without_traceback_bodies(lines), None)
    return Script(_without_traceback_bodies(lines), code)


def _without_traceback_bodies(lines: list[str]) -> list[str]:
    """Keep a traceback's first and last lines only (the exception), drop the frames."""
    out: list[str] = []
    in_traceback = False
    for line in lines:
        if line.startswith("Traceback (most recent call last)"):
            in_traceback = True
            out.append("Traceback (most recent call last): ...")
            continue
        if in_traceback and (line.startswith((" ", "^")) or not line):
            continue
        if line.startswith(("During handling of the above", "The above exception was")):
            continue
        in_traceback = False
        out.append(line)
    return out


def pythons() -> list[tuple[str, str]]:
    """("3.11", path) for this Python and every other CPython 3.11+ found, by version."""
    found = {f"{sys.version_info.major}.{sys.version_info.minor}": sys.executable}
    candidates = [shutil.which(f"python3.{minor}") for minor in range(11, 16)]
    candidates += sorted(str(p) for p in Path.home().glob(".pyenv/versions/3.1[1-9]*/bin/python3"))
    for exe in filter(None, candidates):
        try:
            version = subprocess.run(
                [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if tuple(map(int, version.split("."))) >= (3, 11) and version not in found:
            found[version] = exe
    return sorted(found.items(), key=lambda item: tuple(map(int, item[0].split("."))))
