"""Plumbing for chapter 4's notebook: worker processes, a clean slate, waiting, plots.

    await clear(redis, "ch04-fleet")              # a clean slate, on a real server too
    with Fleet(url, "ch04-fleet", concurrency=2) as fleet:   # every process ends with it
        fleet.start("w1", "w2", "w3")              # returns once all three are ready
        ...
        fleet.kill("w2")                           # SIGKILL: a crash, no cleanup at all
    fleet.exit_codes                               # {'w1': 0, 'w2': -9, 'w3': 0}

The worker processes are the course's CLI, ``python -m course_lib.distributed
worker --app course_lib.examples.jobs_app:registry``, each with its own
``--name``. ``Fleet`` never leaves one behind: leaving the block (normally, on an
error or on an interrupt) sends SIGTERM to those still running, waits for their
graceful stop, and SIGKILLs any that do not end in time.
"""

from __future__ import annotations

__all__ = ["APP", "Fleet", "captured_logs", "clear", "job_rows", "plot_gantt", "plot_per_worker",
           "until"]

import asyncio
import contextlib
import functools
import io
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from course_lib.distributed.keys import PREFIX, QueueKeys
from course_lib.timeline import Timeline

APP = "course_lib.examples.jobs_app:registry"
# "2026-11-26 21:36:49,387 WARNING course_lib.distributed.worker: " (the CLI's log format)
_LOG_PREFIX = re.compile(r"^\d{4}-\d\d-\d\d [\d:,.]+ [A-Z]+ [\w.]+: ")
SCRATCH = "ch04:*"  # the chapter's own demo keys (lists, counters), outside any queue


async def clear(redis: Any, *queues: str, patterns: Iterable[str] = (SCRATCH,)) -> int:
    """Delete every key of ``queues`` and of ``patterns``; how many went.

    The notebook starts each section with this, so a re-run against a real server
    starts from nothing, as the first run did.
    """
    globs = [f"{QueueKeys(q).base}:*" for q in queues] + [f"{PREFIX}:naive:*", *patterns]
    doomed = set()
    for glob in globs:
        async for key in redis.scan_iter(match=glob, count=500):
            doomed.add(key)
    if doomed:
        await redis.delete(*doomed)
    return len(doomed)


async def until(probe: Callable[[], Awaitable[Any]], test: Callable[[Any], Any] = bool, *,
                timeout_s: float = 10.0, every_s: float = 0.02) -> Any:
    """Await ``probe()`` every ``every_s`` until ``test(value)`` holds; return that value.

        await until(lambda: redis.llen("jobs"), lambda n: n == 0)   # the list is empty
        await until(lambda: redis.lindex("log", 0))                 # the first line, once there

    TimeoutError after ``timeout_s``: a demo waits for what it needs, never for ever.
    """
    async with asyncio.timeout(timeout_s):
        while not test(value := await probe()):  # noqa: ASYNC110 (state in Redis: no Event)
            await asyncio.sleep(every_s)
    return value


@contextlib.contextmanager
def captured_logs(name: str = "course_lib.distributed",
                  level: int = logging.INFO) -> Iterator[list[str]]:
    """Collect the messages logger ``name`` emits (first line of each) instead of printing them.

        with captured_logs() as lines:
            ...                       # a Worker runs here
        print(*lines, sep="\\n")      # its one line per job transition
    """
    lines: list[str] = []
    logger = logging.getLogger(name)
    handler = logging.Handler(level)
    handler.emit = lambda record: lines.append(record.getMessage().splitlines()[0])
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class Fleet:
    """Worker processes on one queue, started with the CLI; all of them end with the block.

        with Fleet(url, "images", visibility_timeout_s=2) as fleet:
            fleet.start("w1", "w2")      # returns once each has printed "worker NAME ready"
            fleet.kill("w1")             # SIGKILL
            fleet.log("w2")              # its stderr lines so far
        fleet.exit_codes                 # {'w1': -9, 'w2': 0}
    """

    def __init__(self, url: str, queue_name: str, *, app: str = APP, concurrency: int = 1,
                 visibility_timeout_s: float = 30.0, grace_s: float = 5.0,
                 block_s: float = 0.5) -> None:
        self.url = url
        self.queue = queue_name
        self.app = app
        self.options = {"--concurrency": concurrency,
                        "--visibility-timeout": visibility_timeout_s,
                        "--grace": grace_s, "--block": block_s}
        self.grace_s = grace_s
        self.exit_codes: dict[str, int] = {}
        self._procs: dict[str, subprocess.Popen[str]] = {}
        self._lines: dict[str, list[str]] = {}
        self._ready: dict[str, queue.Queue[str | None]] = {}
        self._pumps: list[threading.Thread] = []

    def __repr__(self) -> str:
        alive = [n for n, p in self._procs.items() if p.poll() is None]
        return f"<Fleet {self.queue!r}: running {alive}, ended {self.exit_codes}>"

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def command(self, name: str) -> list[str]:
        """The command line of worker ``name`` (the CLI of course_lib.distributed)."""
        options = [str(item) for pair in self.options.items() for item in pair]
        return [sys.executable, "-m", "course_lib.distributed", "--redis-url", self.url,
                "--queue", self.queue, "worker", "--app", self.app, "--name", name, *options]

    def start(self, *names: str, timeout_s: float = 30.0) -> None:
        """Start one worker process per name; return once every one of them is ready."""
        for name in names:
            if name in self._procs:
                raise RuntimeError(f"{self!r} already has a worker {name!r}")
            env = {**os.environ, "REDIS_URL": self.url, "COURSE_WORKER": name,
                   "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(self.command(name), env=env, text=True,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            self._procs[name], self._lines[name], self._ready[name] = proc, [], queue.Queue()
            pump = threading.Thread(target=self._pump, args=(name, proc), daemon=True,
                                    name=f"fleet {name} stderr")
            pump.start()
            self._pumps.append(pump)
        deadline = time.monotonic() + timeout_s
        for name in names:
            self._wait_ready(name, deadline)

    def pid(self, name: str) -> int:
        return self._procs[name].pid

    def log(self, name: str, *, bare: bool = True) -> list[str]:
        """What worker ``name`` printed on stderr so far, line by line.

        ``bare``: without the time, level and logger name that start each log line.
        """
        if not bare:
            return list(self._lines[name])
        return [_LOG_PREFIX.sub("", line) for line in self._lines[name]]

    def kill(self, name: str) -> int:
        """SIGKILL worker ``name``, as the OOM killer would: no cleanup runs; its exit code."""
        proc = self._procs[name]
        proc.kill()
        return self._reap(name, timeout_s=10)

    def stop(self) -> dict[str, int]:
        """SIGTERM every worker still running, wait for its graceful stop, SIGKILL laggards."""
        running = [n for n, p in self._procs.items() if p.poll() is None]
        for name in running:
            with contextlib.suppress(ProcessLookupError):
                self._procs[name].send_signal(signal.SIGTERM)
        for name in self._procs:
            self._reap(name, timeout_s=self.grace_s + 5)
        for pump in self._pumps:
            pump.join(timeout=5)
        return dict(self.exit_codes)

    def _reap(self, name: str, timeout_s: float) -> int:
        proc = self._procs[name]
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.exit_codes[name] = proc.returncode
        return proc.returncode

    def _pump(self, name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                line = line.rstrip("\n")
                self._lines[name].append(line)
                if line.startswith(f"worker {name} ready"):
                    self._ready[name].put(line)
        self._ready[name].put(None)  # the process closed its stderr: it has ended

    def _wait_ready(self, name: str, deadline: float) -> None:
        try:
            ready = self._ready[name].get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            ready = None
        if ready is None:
            self.stop()
            raise RuntimeError(f"worker {name} did not start; its output:\n"
                               + "\n".join(self._lines[name][-20:]))


# --- plots ----------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure outside pyplot (a notebook shows it once, a script saves it)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    fig._repr_png_ = functools.partial(_png, fig)  # shown even before pyplot is imported
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def plot_per_worker(counts: Mapping[str, int], *, title: str) -> Any:
    """A bar per worker: how many jobs it ran."""
    fig = _figure(6, 3)
    ax = fig.add_subplot()
    names = sorted(counts)
    bars = ax.bar(names, [counts[n] for n in names], color="#4C72B0")
    ax.bar_label(bars)
    ax.set_ylabel("jobs run")
    ax.set_title(title, loc="left")
    ax.margins(y=0.15)
    return fig


def job_rows(timeline: Timeline, labels: Mapping[str, str],
             keep: Iterable[str] = ()) -> list[tuple[str, float, float, str]]:
    """Rows for ``plot_gantt`` from a Timeline: the tasks named in ``labels`` (relabelled)
    and those named in ``keep``, each as (label, start s, end s, outcome), in start order.

    A Worker names the task of each job ``"<worker> <entry id>"``; ``labels`` maps
    those names to something readable, like ``"resize(3)"``.
    """
    keep = set(keep)
    end = timeline.duration_s or 0.0
    rows = []
    for record in timeline.tasks:
        if record.name in labels or record.name in keep:
            start = record.started_s if record.started_s is not None else record.created_s
            stop = record.ended_s if record.ended_s is not None else end
            rows.append((labels.get(record.name, record.name), start, stop, record.outcome.value))
    return sorted(rows, key=lambda row: row[1])


_OUTCOME_COLOURS = {"done": "#2E8B57", "cancelled": "#E69F00", "failed": "#D62728",
                    "pending": "#8C8C8C"}


def plot_gantt(rows: list[tuple[str, float, float, str]], *, title: str,
               marks: Iterable[tuple[str, float]] = ()) -> Any:
    """A Gantt chart of (label, start s, end s, outcome) rows, with labelled marks."""
    fig = _figure(9, 1.4 + 0.3 * max(len(rows), 1))
    ax = fig.add_subplot()
    for y, (_, start, stop, outcome) in enumerate(rows):
        ax.barh(y, max((stop - start) * 1000, 0.5), left=start * 1000, height=0.6,
                color=_OUTCOME_COLOURS.get(outcome, "#8C8C8C"))
    for label, at_s in marks:
        ax.axvline(at_s * 1000, color="#333333", linestyle="--", linewidth=1)
        ax.text(at_s * 1000, 1.01, f" {label}", transform=ax.get_xaxis_transform(),
                fontsize=8, va="bottom")
    ax.set_yticks(range(len(rows)), [row[0] for row in rows], fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("time (ms)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(title, loc="left", pad=18)
    return fig
