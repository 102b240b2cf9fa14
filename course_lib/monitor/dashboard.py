"""A live dashboard: tasks, loop lag and chapter 4's queue, redrawn in place until it stops.

    report = await live_dashboard(queue, every_s=1, duration_s=30, until=drained)
    print(report)        # how it stopped, jobs done and done/s, peaks, Redis errors
    report.plot()        # a Figure: done/s, in flight per worker, backlog, loop lag

In a notebook the figures are one output redrawn in place (an IPython display handle:
``display(view, display_id=True)``, then ``handle.update(view)``); elsewhere each sample
is printed. IPython is imported only when a dashboard starts, never by this module.

What each sample holds:

- **tasks** of the loop by coroutine name and state: ``waiting`` (suspended on a
  future), ``ready`` (scheduled to run), ``cancelling``. The dashboard's own task is
  left out (the article's ``monitor_dashboard`` counts itself as "active"). It
  creates no task of its own: it runs in the task that awaits it.
- **loop lag**: p50, p99 and max of how late a probe callback ran since the previous
  sample (a ``call_later`` every ``lag_probe_s``; no thread, no task).
- **the queue** (``course_lib.distributed.Queue``, optional): ``stream``, ``pending``,
  ``lag``, ``delayed``, ``dead``, ``consumers`` (the names of ``python -m
  course_lib.distributed stats --watch``) with their change per second, **in flight per
  worker** with its idle time, and **done/s**, read in one pipelined round trip by
  ``course_lib.monitor.queue_figures.read_queue_figures`` (its docstring says how done/s
  is counted from the stream's ``entries-added``, and why not from ``entries-read``).

Every Redis read has a bound (``redis_timeout_s``): an error or a silent server is a
line on the dashboard, the last figures stay shown, and the next sample tries again.
Every sample is kept in a deque (``max_samples``), so the run returns a
``DashboardReport`` to print or plot, and tests assert on data, not on HTML. The
dashboard stops after ``duration_s``, when ``until`` holds (a predicate of the sample,
sync or async, or an ``asyncio.Event``), or when the awaiting task is cancelled (the
kernel's interrupt button does that) or interrupted; in every case the probe callback
is cancelled and a last redraw says why it stopped. ``Dashboard(...).report()`` is
readable after a cancel too.
"""

from __future__ import annotations

__all__ = ["Dashboard", "DashboardReport", "DashboardView", "LagSample", "QueueSample", "Sample",
           "Stop", "drained", "live_dashboard"]

import asyncio
import dataclasses
import enum
import inspect
import math
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

from course_lib.monitor import _dashboard_view as _view
from course_lib.monitor._dashboard_view import DashboardView
from course_lib.monitor.queue_figures import QueueSample, read_queue_figures

Until = Callable[["Sample"], "bool | Awaitable[bool]"] | asyncio.Event


class Stop(enum.Enum):
    """Why a dashboard stopped."""

    DURATION = "duration"  # duration_s passed
    UNTIL = "until"  # the until condition held
    CANCELLED = "cancelled"  # the awaiting task was cancelled (a notebook's interrupt)
    INTERRUPTED = "interrupted"  # KeyboardInterrupt reached it
    FAILED = "failed"  # until or the display raised; the exception propagates


@dataclasses.dataclass(frozen=True, slots=True)
class LagSample:
    """How late the probe callbacks ran since the previous sample, seconds."""

    probes: int
    p50_s: float | None
    p99_s: float | None
    max_s: float | None


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """One look at the loop (and the queue): what the dashboard drew, as data."""

    n: int  # 1 for the first sample
    at_s: float  # loop time since the dashboard started
    wall: float  # time.time()
    tasks: dict[str, dict[str, int]]  # coroutine name -> {state: count}
    by_state: dict[str, int]
    own_left_out: int  # the dashboard's own task(s), not counted
    loop_lag: LagSample | None
    queue: QueueSample | None  # None without a queue, or when Redis failed (see error)
    error: str | None  # the Redis failure of this sample, one line
    cost_s: float  # what taking this sample cost (perf_counter), Redis round trip included

    @property
    def task_count(self) -> int:
        return sum(self.by_state.values())


def drained(sample: Sample) -> bool:
    """``until=drained``: the queue has nothing in its stream, pending or retry set."""
    q = sample.queue
    return q is not None and q.stream == 0 and q.pending == 0 and q.delayed == 0


@dataclasses.dataclass(frozen=True)
class DashboardReport:
    """What a dashboard saw: the samples kept, how it stopped. ``print()`` it, or ``plot()``.

        report.done_total                   # jobs done while it watched (None: not known)
        report.series("pending")            # [(at_s, value), ...]
        report.stopped_by                   # Stop.UNTIL
    """

    samples: tuple[Sample, ...]
    dropped: int  # older samples not kept (max_samples)
    stopped_by: Stop | None  # None while it runs
    duration_s: float
    every_s: float
    updates: int  # redraws of the display (the first draw included)
    queue_name: str | None

    @property
    def done_total(self) -> int | None:
        done = [s.queue.done for s in self.samples if s.queue and s.queue.done is not None]
        return sum(done) if done else None

    @property
    def done_per_s(self) -> float | None:
        """Jobs done per second over the samples that counted them."""
        timed = [(s.queue.done, s.queue.interval_s) for s in self.samples
                 if s.queue and s.queue.done is not None and s.queue.interval_s]
        span = sum(t for _, t in timed)
        return sum(d for d, _ in timed) / span if span else None

    @property
    def errors(self) -> list[tuple[float, str]]:
        return [(s.at_s, s.error) for s in self.samples if s.error]

    def series(self, name: str) -> list[tuple[float, Any]]:
        """(at_s, value) of a queue figure ("pending", "done_per_s"...) or of a lag figure
        ("p99_s", "max_s"...), or "tasks"; samples without it are left out."""
        out = []
        for s in self.samples:
            if name == "tasks":
                out.append((s.at_s, s.task_count))
            elif name in LagSample.__slots__ and s.loop_lag is not None:
                out.append((s.at_s, getattr(s.loop_lag, name)))
            elif s.queue is not None and hasattr(s.queue, name):
                out.append((s.at_s, getattr(s.queue, name)))
        return [(t, v) for t, v in out if v is not None]

    def in_flight_peak(self) -> dict[str, int]:
        """Each worker's highest in-flight count over the run."""
        peak: Counter[str] = Counter()
        for s in self.samples:
            for name, n in (s.queue.in_flight if s.queue else {}).items():
                peak[name] = max(peak[name], n)
        return dict(sorted(peak.items()))

    def __str__(self) -> str:
        return _view.report_text(self)

    def plot(self) -> Any:
        """A matplotlib Figure: done/s, in flight per worker, backlog, loop lag over time."""
        return _view.plot_report(self)


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class Dashboard:
    """Sample tasks, loop lag and a queue every ``every_s``; redraw one output in place.

        dash = Dashboard(queue, every_s=1.0)
        report = await dash.run(duration_s=60, until=drained)
        dash.report()            # the same figures, readable after a cancel too

    ``display``: ``"auto"`` (a display handle in a Jupyter kernel, else print),
    ``None`` (draw nothing: data only), or any object with ``update(view)``. A
    dashboard runs once; make a new one to run again.
    """

    def __init__(self, queue: Any = None, *, every_s: float = 1.0, loop_lag: bool = True,
                 top: int = 8, display: Any = "auto", redis_timeout_s: float | None = None,
                 max_samples: int = 3600, lag_probe_s: float = 0.05) -> None:
        if not every_s > 0 or not lag_probe_s > 0 or max_samples < 1 or top < 0:
            raise ValueError("every_s and lag_probe_s must be > 0, max_samples >= 1, top >= 0")
        self.queue = queue
        self.every_s = every_s
        self.top = top
        self.redis_timeout_s = redis_timeout_s or min(5.0, max(0.5, every_s))
        self._display = display
        self._out: Any = None
        self._probe = _LagProbe(lag_probe_s) if loop_lag else None
        self._samples: deque[Sample] = deque(maxlen=max_samples)
        self._taken = 0
        self._updates = 0
        self._state = _State.NEW
        self._stopped_by: Stop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = self._ended = 0.0
        self._own: set[asyncio.Task[Any]] = set()
        self._last_queue: tuple[float, QueueSample] | None = None  # (at_s, figures)
        self._until: Until | None = None
        self._until_text = ""

    def __repr__(self) -> str:
        queue = f" queue {self.queue.name!r}" if self.queue is not None else ""
        return f"<Dashboard {self._state.value}{queue}, every {self.every_s:g} s>"

    async def run(self, *, duration_s: float | None = 30.0, until: Until | None = None
                  ) -> DashboardReport:
        """Sample and redraw until ``duration_s``, ``until`` or a cancel; the report.

        ``until``: called with each sample (true stops it; it may be async), or an
        ``asyncio.Event`` (its set() stops it at once, after one last sample).
        ``duration_s=None``: no time limit (stop it with ``until`` or a cancel).
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"{self!r} has run already: a dashboard runs once, make a new one")
        loop = self._loop = asyncio.get_running_loop()
        self._state = _State.RUNNING
        self._own = {t for t in (asyncio.current_task(),) if t is not None}
        self._started = loop.time()
        deadline = None if duration_s is None else self._started + duration_s
        self._until, self._until_text = until, _view.until_text(duration_s, until)
        reason = Stop.FAILED
        if self._probe is not None:
            self._probe.start(loop)
        try:
            tick = 0
            while True:
                self._show(await self._take())
                if deadline is not None and loop.time() + 1e-3 >= deadline:
                    reason = Stop.DURATION
                    break
                if await _holds(until, self._samples[-1]):
                    reason = Stop.UNTIL
                    break
                # Ticks on a grid from the start: no drift; a slow sample skips ticks.
                tick = max(tick + 1, math.ceil((loop.time() - self._started) / self.every_s))
                next_at = self._started + tick * self.every_s
                await _wait(loop, next_at if deadline is None else min(next_at, deadline), until)
        except asyncio.CancelledError:
            reason = Stop.CANCELLED
            raise
        except KeyboardInterrupt:
            reason = Stop.INTERRUPTED
            raise
        finally:
            if self._probe is not None:
                self._probe.stop()
            self._ended = loop.time()
            self._stopped_by = reason
            self._state = _State.STOPPED
            if reason is not Stop.FAILED and self._samples:
                try:
                    self._show(self._samples[-1])  # the last figures, with why it stopped
                except Exception:
                    if reason in (Stop.DURATION, Stop.UNTIL):
                        raise  # else a broken display must not replace the cancel
        return self.report()

    def report(self) -> DashboardReport:
        """The samples so far and how it stopped (while it runs: ``stopped_by`` None)."""
        end = self._ended if self._state is _State.STOPPED else (
            self._loop.time() if self._loop else self._started)
        return DashboardReport(
            samples=tuple(self._samples), dropped=self._taken - len(self._samples),
            stopped_by=self._stopped_by, duration_s=end - self._started, every_s=self.every_s,
            updates=self._updates, queue_name=None if self.queue is None else self.queue.name)

    async def sample(self) -> Sample:
        """Take one sample now, keep it, draw nothing (``run()`` calls this each tick)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._started = self._loop.time()
        return await self._take()

    # --- one sample ---------------------------------------------------------------------

    async def _take(self) -> Sample:
        loop = self._loop
        assert loop is not None
        began, at_s, wall = time.perf_counter(), loop.time() - self._started, time.time()
        own = self._own | {t for t in (asyncio.current_task(),) if t is not None}
        tasks, by_state, left_out = _count_tasks(loop, own)
        lag = self._probe.take() if self._probe is not None else None
        queue = error = None
        if self.queue is not None:
            queue, error = await self._queue_sample(at_s)
        self._taken += 1
        sample = Sample(n=self._taken, at_s=at_s, wall=wall,
                        tasks=tasks, by_state=by_state, own_left_out=left_out, loop_lag=lag,
                        queue=queue, error=error, cost_s=time.perf_counter() - began)
        self._samples.append(sample)
        return sample

    async def _queue_sample(self, at_s: float) -> tuple[QueueSample | None, str | None]:
        previous = self._last_queue[1] if self._last_queue is not None else None
        try:  # rates since the last good figures: a failed read leaves a longer interval
            figures = await read_queue_figures(self.queue, previous,
                                               timeout_s=self.redis_timeout_s)
        except TimeoutError:
            return None, f"Redis: no answer within {self.redis_timeout_s:g} s"
        except Exception as exc:  # a line on the dashboard, never a crash: the next sample retries
            text = (str(exc).strip().splitlines() or [""])[0][:160]
            return None, f"Redis: {type(exc).__name__}: {text}".rstrip(": ")
        self._last_queue = (at_s, figures)
        return figures, None

    # --- drawing ------------------------------------------------------------------------

    def _show(self, sample: Sample) -> None:
        if self._display is None or self._display is False:
            return
        stopped = None
        if self._state is _State.STOPPED:
            stopped = f"after {self._ended - self._started:.1f} s: {self._why()}"
        view = DashboardView(sample, _view.render(
            sample, every_s=self.every_s, until_text=self._until_text, top=self.top,
            queue_name=None if self.queue is None else self.queue.name,
            last_queue=self._last_queue, stopped=stopped))
        if self._out is None:
            self._out = _view.open_display(self._display, view)
        else:
            self._out.update(view)
        self._updates += 1

    def _why(self) -> str:
        if self._stopped_by is Stop.UNTIL:
            return f"{_view.until_name(self._until)} held"
        if self._stopped_by is Stop.DURATION:
            return "its duration passed"
        return self._stopped_by.value if self._stopped_by is not None else "?"


async def live_dashboard(queue: Any = None, *, every_s: float = 1.0,
                         duration_s: float | None = 30.0, until: Until | None = None,
                         loop_lag: bool = True, top: int = 8, display: Any = "auto",
                         redis_timeout_s: float | None = None) -> DashboardReport:
    """Draw a live dashboard until ``duration_s`` or ``until``; return its report.

        report = await live_dashboard(queue, until=drained, duration_s=60)

    The same as ``await Dashboard(queue, ...).run(duration_s=..., until=...)``; use the
    class to keep the report when the cell is interrupted (``dash.report()``).
    """
    dash = Dashboard(queue, every_s=every_s, loop_lag=loop_lag, top=top, display=display,
                     redis_timeout_s=redis_timeout_s)
    return await dash.run(duration_s=duration_s, until=until)


# --- helpers ---------------------------------------------------------------------------


class _LagProbe:
    """A callback every ``interval_s`` that notes how late it ran; no task, no thread."""

    def __init__(self, interval_s: float, maxlen: int = 10_000) -> None:
        self.interval_s = interval_s
        self._lags: deque[float] = deque(maxlen=maxlen)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._schedule()

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._loop.time() + self.interval_s
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        # asyncio runs a timer up to one clock resolution early: a lag below 0 is 0.
        self._lags.append(max(0.0, self._loop.time() - self._due))
        self._schedule()

    def take(self) -> LagSample:
        lags = sorted(self._lags)
        self._lags.clear()
        return LagSample(probes=len(lags), p50_s=_percentile(lags, 50),
                         p99_s=_percentile(lags, 99), max_s=lags[-1] if lags else None)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def _count_tasks(loop: asyncio.AbstractEventLoop, own: set[asyncio.Task[Any]]
                 ) -> tuple[dict[str, dict[str, int]], dict[str, int], int]:
    """Unfinished tasks by coroutine name and state, ``own`` left out (counted apart)."""
    tasks: dict[str, Counter[str]] = {}
    by_state: Counter[str] = Counter()
    left_out = 0
    for task in asyncio.all_tasks(loop):
        if task in own:
            left_out += 1
            continue
        if task.cancelling():
            state = "cancelling"
        elif getattr(task, "_fut_waiter", None) is None:
            state = "ready"  # scheduled to run (or not started yet)
        else:
            state = "waiting"
        coro = task.get_coro()
        name = getattr(coro, "__qualname__", None) or type(coro).__name__
        tasks.setdefault(name, Counter())[state] += 1
        by_state[state] += 1
    return {k: dict(v) for k, v in tasks.items()}, dict(by_state), left_out


async def _holds(until: Until | None, sample: Sample) -> bool:
    if until is None:
        return False
    if isinstance(until, asyncio.Event):
        return until.is_set()
    result = until(sample)
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


async def _wait(loop: asyncio.AbstractEventLoop, when: float, until: Until | None) -> None:
    """Sleep until ``when`` (loop time); an Event given as ``until`` ends it early."""
    if isinstance(until, asyncio.Event):
        try:  # asyncio.timeout, not wait_for: no task of its own (3.11's wait_for makes one)
            async with asyncio.timeout_at(when):
                await until.wait()
        except TimeoutError:
            pass
    else:
        await asyncio.sleep(max(0.0, when - loop.time()))


def _percentile(sorted_xs: list[float], pct: float) -> float | None:
    if not sorted_xs:
        return None
    k = max(0, math.ceil(pct / 100 * len(sorted_xs)) - 1)  # nearest rank
    return sorted_xs[k]
