"""A CLI worker as a real process, for the CLI tests (tests/lib is on the path under pytest).

    with WorkerProcess(url, queue, "--name", "w1") as worker:
        worker.wait_for("worker w1 ready")
        ...
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.exit_code() == 0
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
APP = "_cli_app:registry"  # tests/lib/_cli_app.py


class WorkerProcess:
    """``python -m course_lib.distributed worker`` on a queue; its stderr lines, collected."""

    def __init__(self, url: str, queue: str, *extra: str) -> None:
        env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE),
                                                          os.environ.get("PYTHONPATH")]))}
        env.pop("REDIS_URL", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "course_lib.distributed", "worker", "--app", APP,
             "--redis-url", url, "--queue", queue, "--block", "0.1", "--grace", "20", *extra],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
        )  # fmt: skip
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, text: str, timeout_s: float = 30.0) -> int:
        """The index of the first stderr line holding ``text``; fails after ``timeout_s``."""
        def found() -> int | None:
            return next((i for i, line in enumerate(self.lines) if text in line), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or not self._reader.is_alive(),
                                   timeout=timeout_s)
            index = found()
        assert index is not None, f"no {text!r} on stderr; it said:\n" + "\n".join(self.lines)
        return index

    def exit_code(self, timeout_s: float = 30.0) -> int:
        code = self.proc.wait(timeout=timeout_s)
        self._reader.join(timeout=5)
        return code

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
