"""Run one grading run's pytest, then end everything it started: a script, not a module.

    python -S course_lib/_grading_supervisor.py python -m pytest ...

The grader starts this in a session of its own and this starts pytest. When pytest
ends, or when the grader sends SIGTERM, every process the code under test started is
killed: the ones in pytest's process group, and on Linux the ones that left it
(``setsid``, a double fork) too, since this process is their subreaper
(``PR_SET_CHILD_SUBREAPER``): orphaned, they become its children, not init's, and it
kills its children until it has none. No cgroup, no dependency; elsewhere only the
process group is killed. Exits with pytest's exit code.

Run with ``-S`` and importing only the standard library: it starts in ~20 ms.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>


def _become_subreaper() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _children(pid: int) -> list[int]:
    try:  # one thread here, so one task's list is every child (CONFIG_PROC_CHILDREN)
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(child) for child in f.read().split()]
    except OSError:
        pass
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if int(f.read().rsplit(b")", 1)[-1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _sweep() -> None:
    """Kill every child until there is none: a killed one's own children come here next."""
    me = os.getpid()
    while True:
        for pid in _children(me):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def main(argv: list[str]) -> int:
    posix = os.name == "posix"
    reaper = _become_subreaper()
    # close_fds=False: the grader's pipe for the rows (--grading-fd) goes on to pytest.
    proc = subprocess.Popen(argv, close_fds=False, process_group=0 if posix else None)

    def stop(signum, frame):
        _kill_group(proc.pid) if posix else proc.kill()

    if posix:
        signal.signal(signal.SIGTERM, stop)
    code = proc.wait()
    if posix:
        _kill_group(proc.pid)
    if reaper:
        _sweep()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
