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
- **the queue** (``course_lib.distributed.Queue``, optional), one pipelined round trip:
  ``stream``, ``pending``, ``lag``, ``delayed``, ``dead``, ``consumers``, the names of
  ``python -m course_lib.distributed stats --watch``, each with its change per second;
  **in flight per worker** (XINFO CONSUMERS: each consumer's pending entries, and
  how long it has been idle: a killed worker's idle time grows until its entries are
  reclaimed); and **done/s**.

How done/s is counted without a counter in the library. Workers delete each stream
entry when they settle it (XACK + XDEL: done, a retry, a dead letter, or handed back at a
graceful stop), and XINFO STREAM reports ``entries-added``, every entry the stream ever
took in (Redis 7+ and fakeredis). Between two samples, entries added minus the growth of
the stream is the number *settled*. Reclaiming (XAUTOCLAIM) moves an entry between
consumers and counts nowhere, so a dead worker's jobs count once, when another worker
settles them. ``done`` is ``settled`` minus the growth of ``dead`` and of ``delayed``:
exact for a run without retries and hand-backs; a retry scheduled and moved back within
one interval, or a job handed back at a stop, counts as done. Where the server reports no
``entries-added`` (Redis 6.2) done/s shows ``n/a``. (The group's ``entries-read`` looks
like the obvious figure, but it may be reported as null once an entry at or after the
group's last delivered one is deleted while older ones remain, which workers settling out
of order do all the time: fakeredis 2.41 then says null, and a trial of chapter 5's run
counted with it found 82 jobs of 150; Redis 7.0.15 went on counting in the same test.)

Every Redis call has a bound (``redis_timeout_s``): an error or a silent server is a
line on the dashboard, and the next sample tries again. Every sample is kept in a
deque (``max_samples``), so the run returns a ``DashboardReport`` to print or plot, and
tests assert on data, not on HTML. The dashboard stops after ``duration_s``, when
``until`` holds (a predicate of the sample, sync or async, or an ``asyncio.Event``), or
when the awaiting task is cancelled (the kernel's interrupt button does that) or
interrupted; in every case the probe callback is cancelled and a last redraw says why
it stopped. ``Dashboard(...).report()`` is readable after a cancel too.
"""

from __future__ import annotations

__all__ = ["Dashboard", "DashboardReport", "DashboardView", "LagSample", "QueueSample", "Sample",
           "Stop", "drained", "live_dashboard"]

import asyncio
import dataclasses
import enum
import functools
import html
import inspect
import io
import math
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

Until = Callable[["Sample"], "bool | Awaitable[bool]"] | asyncio.Event
_RATED = ("stream", "pending", "lag", "delayed", "dead")  # as stats --watch; consumers: no rate
_STATES = ("waiting", "ready", "cancelling")
_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen: only on a terminal


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
class QueueSample:
    """The queue's figures at one sample; ``rates`` per second since the previous one.

    ``settled``/``done`` are over the interval since the previous good sample (None for
    the first, or when the server reports no ``entries-added``); see the module's doc.
    """

    stream: int
    pending: int
    lag: int
    delayed: int
    dead: int
    consumers: int
    in_flight: dict[str, int]  # consumer -> entries it holds (delivered, unsettled)
    idle_s: dict[str, float]  # consumer -> seconds since it last read or claimed
    entries_added: int | None  # every entry the stream ever took in (XINFO STREAM)
    settled: int | None = None
    done: int | None = None
    interval_s: float | None = None
    rates: dict[str, float] | None = None

    @property
    def done_per_s(self) -> float | None:
        if self.done is None or not self.interval_s:
            return None
        return self.done / self.interval_s


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
        how = self.stopped_by.value if self.stopped_by else "still running"
        lines = [f"dashboard: {len(self.samples) + self.dropped} samples every {self.every_s:g} s"
                 f" over {self.duration_s:.1f} s, {self.updates} redraws; stopped: {how}"]
        if self.samples:
            peak = max(self.samples, key=lambda s: s.task_count)
            lines.append(f"tasks: at most {peak.task_count} (at {peak.at_s:.1f} s), "
                         f"{self.samples[-1].task_count} at the end")
        lags = [v for _, v in self.series("max_s")]
        if lags:
            lines.append(f"loop lag: max {max(lags) * 1e3:.1f} ms")
        if self.queue_name is not None:
            rate = self.done_per_s
            lines.append(f"queue {self.queue_name!r}: done {_n(self.done_total)}, "
                         f"{'n/a' if rate is None else f'{rate:.1f}'} done/s on average")
            peaks = ", ".join(f"{k} {v}" for k, v in self.in_flight_peak().items())
            lines.append(f"in flight at most: {peaks or '-'}")
            last = next((s.queue for s in reversed(self.samples) if s.queue), None)
            if last is not None:
                lines.append("at the end: " + ", ".join(
                    f"{k} {getattr(last, k)}" for k in (*_RATED, "consumers")))
        for at_s, error in self.errors[-5:]:
            lines.append(f"error at {at_s:.1f} s: {error}")
        return "\n".join(lines)

    def plot(self) -> Any:
        """A matplotlib Figure: done/s, in flight per worker, backlog, loop lag over time."""
        return _plot(self)


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
        self._until_text = self._until_name = ""

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
        self._until_text = _until_text(duration_s, until)
        self._until_name = _name(until)
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
        q = self.queue
        try:
            async with asyncio.timeout(self.redis_timeout_s):
                async with q.redis.pipeline(transaction=False) as pipe:
                    pipe.xinfo_stream(q.keys.stream)
                    pipe.zcard(q.keys.delayed)
                    pipe.xlen(q.keys.dead)
                    pipe.xinfo_groups(q.keys.stream)
                    pipe.xinfo_consumers(q.keys.stream, q.keys.group)
                    replies = await pipe.execute(raise_on_error=False)
            figures = self._figures(at_s, replies)
        except TimeoutError:
            error = f"Redis: no answer within {self.redis_timeout_s:g} s"
        except Exception as exc:  # a line on the dashboard, never a crash: the next sample retries
            text = (str(exc).strip().splitlines() or [""])[0][:160]
            error = f"Redis: {type(exc).__name__}: {text}".rstrip(": ")
        else:
            self._last_queue = (at_s, figures)
            return figures, None
        finally:
            _raise_if_cancel_lost()
        return None, error

    def _figures(self, at_s: float, replies: list[Any]) -> QueueSample:
        stream, delayed, dead, groups, consumers = (_ok(r) for r in replies)
        q = self.queue
        stream_len = int(stream["length"]) if stream else 0
        added = stream.get("entries-added") if stream else 0  # no stream yet: nothing added
        group = next((g for g in groups or [] if _text(g.get("name")) == q.keys.group), None)
        pending = n_consumers = 0
        lag: int | None = None
        if group is not None:
            pending, n_consumers = int(group["pending"]), int(group["consumers"])
            lag = group.get("lag")
        if lag is None:  # as Queue.counts(): what is left and not pending is not delivered yet
            lag = max(0, stream_len - pending)
        in_flight = {_text(c["name"]): int(c["pending"]) for c in consumers or []}
        idle_s = {_text(c["name"]): int(c.get("idle") or 0) / 1000 for c in consumers or []}
        figures = QueueSample(
            stream=stream_len, pending=pending, lag=int(lag), delayed=int(delayed),
            dead=int(dead), consumers=n_consumers, in_flight=dict(sorted(in_flight.items())),
            idle_s=dict(sorted(idle_s.items())),
            entries_added=None if added is None else int(added))
        if self._last_queue is None:
            return figures
        then, prev = self._last_queue
        interval_s = max(at_s - then, 1e-9)
        rates = {k: (getattr(figures, k) - getattr(prev, k)) / interval_s for k in _RATED}
        settled = done = None
        if figures.entries_added is not None and prev.entries_added is not None:
            # Settled entries are deleted: what came in minus what the stream grew by.
            settled = (figures.entries_added - prev.entries_added) - (stream_len - prev.stream)
            done = max(0, settled - max(0, figures.dead - prev.dead)
                       - max(0, figures.delayed - prev.delayed))
        return dataclasses.replace(figures, settled=settled, done=done, interval_s=interval_s,
                                   rates=rates)

    # --- drawing ------------------------------------------------------------------------

    def _show(self, sample: Sample) -> None:
        if self._display is None or self._display is False:
            return
        view = DashboardView(sample, self._render(sample))
        if self._out is None:
            self._out = _open(self._display, view)
        else:
            self._out.update(view)
        self._updates += 1

    def _render(self, s: Sample) -> str:
        head = (f"dashboard  {time.strftime('%H:%M:%S', time.localtime(s.wall))}  sample {s.n} "
                f"at {s.at_s:.1f} s, every {self.every_s:g} s  ({self._until_text})")
        lines = [head]
        states = ", ".join(f"{s.by_state.get(k, 0)} {k}" for k in _STATES)
        lines.append(f"tasks      {s.task_count}: {states}  (the dashboard's own left out)")
        rows = sorted(s.tasks.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
        if rows and self.top:
            width = max(9, *(len(name) for name, _ in rows[:self.top]))
            lines.append(f"  {'coroutine':<{width}}  " + "  ".join(f"{k:>10}" for k in _STATES))
            for name, counts in rows[:self.top]:
                lines.append(f"  {name:<{width}}  "
                             + "  ".join(f"{counts.get(k, 0):>10}" for k in _STATES))
            if len(rows) > self.top:
                lines.append(f"  ... {len(rows) - self.top} more coroutine names")
        if s.loop_lag is not None:
            lag = s.loop_lag
            lines.append(f"loop lag   p50 {_ms(lag.p50_s)}, p99 {_ms(lag.p99_s)}, max "
                         f"{_ms(lag.max_s)}  ({lag.probes} probes since the last sample)")
        if self.queue is not None:
            lines += self._render_queue(s)
        if self._state is _State.STOPPED:
            lines.append(f"stopped    after {self._ended - self._started:.1f} s: {self._why()}")
        return "\n".join(lines)

    def _why(self) -> str:
        reason = self._stopped_by
        if reason is Stop.UNTIL:
            return f"{self._until_name} held"
        if reason is Stop.DURATION:
            return "its duration passed"
        return reason.value if reason is not None else "?"

    def _render_queue(self, s: Sample) -> list[str]:
        lines = [f"queue      {self.queue.name!r}"]
        if s.error:
            lines.append(f"  error    {s.error}")
        if s.queue is None and self._last_queue is None:
            return lines
        q = s.queue
        if q is None:
            at_s, q = self._last_queue  # type: ignore[misc]
            lines.append(f"  (the last figures Redis gave, {s.at_s - at_s:.1f} s ago)")
        for name in (*_RATED, "consumers"):
            line = f"  {name:<10} {getattr(q, name):>7}"
            if q.rates is not None and name in q.rates:
                line += f"   {q.rates[name]:+.1f}/s"
            lines.append(line)
        rate = q.done_per_s
        if q.entries_added is None:
            lines.append("  done/s        n/a   (the server reports no entries-added)")
        elif rate is None:
            lines.append("  done/s          -   (from the next sample on)")
        else:
            lines.append(f"  done/s     {rate:>7.1f}   ({q.done} done in the last "
                         f"{q.interval_s:.1f} s)")
        top = max(q.in_flight.values(), default=0)
        for i, (name, n) in enumerate(q.in_flight.items()):
            bar = "#" * (math.ceil(20 * n / top) if top else 0)
            label = "in flight" if i == 0 else ""
            lines.append(f"  {label:<10} {name:>7} {n:>4} {bar:<20}  idle {q.idle_s[name]:.1f} s")
        if not q.in_flight:
            lines.append("  in flight  (no worker in the group)")
        return lines


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


class DashboardView:
    """What one redraw shows: a monospace block (``_repr_html_`` in a notebook, else text)."""

    def __init__(self, sample: Sample, text: str) -> None:
        self.sample = sample
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return (f'<pre style="font-size: 12px; line-height: 1.3; margin: 0">'
                f"{html.escape(self.text)}</pre>")


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


def _raise_if_cancel_lost() -> None:
    # On 3.11 redis-py sends commands through asyncio.wait_for when the client has a
    # socket_timeout, and 3.11's wait_for can swallow a cancel that lands once the
    # command is sent (fixed in 3.12): cancelling() still counts it, so stop here.
    if sys.version_info < (3, 12):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError


def _until_text(duration_s: float | None, until: Until | None) -> str:
    parts = []
    if until is not None:
        parts.append(f"until {_name(until)}")
    if duration_s is not None:
        parts.append(f"{duration_s:g} s at most")
    return ", ".join([*parts, "an interrupt stops it"])


def _name(until: Until | None) -> str:
    if isinstance(until, asyncio.Event):
        return "the event is set"
    return getattr(until, "__name__", type(until).__name__)


def _ok(reply: Any) -> Any:
    """A pipeline reply; a missing stream or group reads as empty, other errors raise."""
    if isinstance(reply, Exception):
        text = str(reply)
        if "no such key" in text or "NOGROUP" in text:
            return None
        raise reply
    return reply


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _n(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f} ms"


def _percentile(sorted_xs: list[float], pct: float) -> float | None:
    if not sorted_xs:
        return None
    k = max(0, math.ceil(pct / 100 * len(sorted_xs)) - 1)  # nearest rank
    return sorted_xs[k]


# --- the plot --------------------------------------------------------------------------


def _plot(report: DashboardReport) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    # (title, {label: points}, how): "interval" figures hold over the interval that
    # ends at their sample (a step drawn backwards), "stack" bands add up to a total.
    panels: list[tuple[str, dict[str, list[tuple[float, float]]], str]] = []
    if report.queue_name is not None:
        panels.append(("done/s", {"done/s": report.series("done_per_s")}, "interval"))
        workers = sorted({w for s in report.samples if s.queue for w in s.queue.in_flight})
        panels.append(("in flight per worker", {
            w: [(s.at_s, s.queue.in_flight.get(w, 0)) for s in report.samples if s.queue]
            for w in workers}, "stack"))
        panels.append(("backlog", {k: report.series(k) for k in ("lag", "delayed", "dead")},
                       "line"))
    panels.append(("tasks", {"tasks": report.series("tasks")}, "line"))
    if any(s.loop_lag for s in report.samples):
        panels.append(("loop lag (ms)", {
            k: [(t, v * 1e3) for t, v in report.series(f"{k}_s")] for k in ("p50", "max")},
            "interval"))
    fig = Figure(figsize=(8, 1.5 * len(panels) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    fig._repr_png_ = functools.partial(_png, fig)  # shown even before pyplot is imported
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, lines, how) in zip(axes, panels, strict=True):
        drawn = {k: v for k, v in lines.items() if v}
        if how == "stack" and drawn:
            times = [t for t, _ in next(iter(drawn.values()))]
            ax.stackplot(times, *([v for _, v in pts] for pts in drawn.values()),
                         labels=list(drawn), alpha=0.8)
        for label, points in drawn.items() if how != "stack" else ():
            xs, ys = [t for t, _ in points], [v for _, v in points]
            if how == "interval":
                ax.step(xs, ys, where="pre", label=label)
            else:
                ax.plot(xs, ys, marker=".", label=label)
        ax.set_ylabel(title, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.margins(y=0.15)
        ax.grid(alpha=0.3)
        if title != "loop lag (ms)":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if len(lines) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlabel("seconds since the dashboard started")
    how = report.stopped_by.value if report.stopped_by else "running"
    axes[0].set_title(f"dashboard{f' of {report.queue_name!r}' if report.queue_name else ''}: "
                      f"{len(report.samples)} samples, stopped: {how}", loc="left", fontsize=10)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


class _Printer:
    """The display outside a kernel: print each view (redrawn in place on a terminal)."""

    def __init__(self) -> None:
        self.redraw = sys.stdout.isatty()

    def update(self, view: DashboardView) -> None:
        print((_CLEAR if self.redraw else "") + view.text, end="\n" if self.redraw else "\n\n",
              flush=True)


def _open(display: Any, view: DashboardView) -> Any:
    """Draw ``view`` the first time; the object that takes the next ones (``update``)."""
    if display != "auto":
        display.update(view)
        return display
    # A kernel has imported IPython long before: never import it here just to look.
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None and getattr(shell, "kernel", None) is not None:
        from IPython.display import display as ipython_display

        return ipython_display(view, display_id=True)
    printer = _Printer()
    printer.update(view)
    return printer
