"""A blocked-loop detector: measure the event loop's lag, name the line that blocks it.

    async with LoopWatchdog(threshold_s=0.1, interval_s=0.02) as dog:
        await service()                      # somewhere in it, a time.sleep(0.3)
    print(dog.report())                      # lag histogram, max, p99, and each episode:
    # blocked >= 0.1 s (ran 0.301 s late) at 12:00:01.250, loop thread MainThread
    #   time.sleep(0.3)
    #   blocker (/path/service.py:14)        <- innermost frame first: the blocking line
    #   service (/path/service.py:20)
    #   ...

Lag is how late a callback runs: a callback handed to the loop should run within
microseconds; when it runs 300 ms late, every task on that loop waited 300 ms. A
loop is *blocked* while it runs one piece of code that does not return to it: a
``time.sleep()``, a CPU-bound loop, a synchronous HTTP or Redis call.

How it works, and why this way round. A daemon thread (the watchdog) posts a probe,
``loop.call_soon_threadsafe(stamp)``, every ``interval_s`` and waits for it to run.
Only one probe is ever in flight. If it has not run after ``threshold_s``, the loop is
blocked *right now*, and the watchdog, which is a different thread and so still
awake, reads the loop thread's stack with ``sys._current_frames()[loop_thread_id]``:
the innermost frame is the blocking line. That is one *episode*; its stack is taken
once, and the episode ends when the probe finally runs (its lag is then known).
The other design, a heartbeat task on the loop that stamps the time and a thread
that checks the stamp's age, measures timer lateness and needs a task living on
the loop (one more thing to cancel, and a "Task was destroyed but it is pending!"
when the loop closes under it). The probe needs nothing on the loop between two
samples, measures exactly "how late does a callback run", and a closed loop simply
refuses the next probe (``RuntimeError``), which ends the watchdog quietly.

What it costs: per probe one write to the loop's self-pipe (waking the loop if it
was idle), one tiny callback, two GIL hand-overs. At ``interval_s=0.02`` that is
50 probes a second; ``benchmarks/monitor_watchdog_overhead.py`` measures it on
chapter 3's scheduling benchmark. The GIL sets the pace on a busy loop: each time
the watchdog thread wakes, it waits for the loop thread to hand over the GIL (up to
``sys.getswitchinterval()``, 5 ms), so a probe cycle there takes ``interval_s`` plus
up to ~15 ms, and the stack of a CPU-bound block is read up to 5 ms after
``threshold_s``. The lags themselves are stamped on the loop, so they stay exact.

Where it runs:

- **A notebook**: the kernel's loop runs in the main thread;
  ``async with LoopWatchdog() as dog:`` in a cell watches it.
- **course_lib.runtime.run / run_in_thread**: the loop runs in a helper thread. The
  watchdog learns the loop's thread from inside it (``threading.get_ident()`` in
  ``start()`` when called on the loop, else in the first probe), so start it inside
  the coroutine you run: ``async with LoopWatchdog(): ...``.
- **A worker process**: start it in the worker's main coroutine and log episodes
  instead of collecting them (the process has no notebook to show a report)::

      async def main():
          async with LoopWatchdog(threshold_s=0.25, log_episodes=True):
              await worker.run()

  Each episode is then a WARNING on the logger ``course_lib.monitor.watchdog`` when
  it is detected (with the stack, while the loop is still blocked: a loop that never
  unblocks is reported all the same) and another when it ends (with its lag).
- **Code that holds the loop object** (a loop running in a thread of its own):
  ``dog.start(loop)`` from any thread, ``dog.stop()`` later.

Every buffer has a bound: the lag ring (``max_samples``, for p99), the episodes kept
(``max_episodes``; older ones are dropped and counted) and the frames kept per stack
(``max_frames``, innermost first). Stopping joins the thread and leaves no probe to
run: a probe still queued becomes a no-op.
"""

from __future__ import annotations

__all__ = ["BUCKETS_S", "Episode", "Frame", "LagReport", "LoopWatchdog"]

import asyncio
import bisect
import dataclasses
import enum
import itertools
import linecache
import logging
import math
import sys
import threading
import time
from collections import deque
from typing import Self

logger = logging.getLogger(__name__)

#: Upper bounds of the lag histogram's buckets, seconds; a last bucket holds the rest.
BUCKETS_S: tuple[float, ...] = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
_BUCKET_LABELS = (
    *(f"<= {b * 1e3:g} ms" if b < 1 else f"<= {b:g} s" for b in BUCKETS_S),
    f"> {BUCKETS_S[-1]:g} s",
)


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    """One frame of the loop thread's stack; ``str()`` gives ``function (file:line)``."""

    function: str  # the code's qualified name: "Service.handle", "main.<locals>.step"
    filename: str
    lineno: int
    line: str  # the source line, stripped ("" when the source is not available)

    def __str__(self) -> str:
        return f"{self.function} ({self.filename}:{self.lineno})"


@dataclasses.dataclass(frozen=True, slots=True)
class Episode:
    """The loop blocked past the threshold once: when, for how long, and where.

    ``frames`` is the loop thread's stack taken while it was blocked, **innermost
    frame first** (``frames[0]`` is the blocking line, as in ``py-spy dump``; a
    traceback prints the other way round). Empty when no stack could be taken: the
    loop's thread was not known yet, or the loop moved on before the stack was read
    (``note`` says which).
    """

    started_at: float  # time.time() when the late probe was posted: blocked since then, or before
    threshold_s: float
    lag_s: float | None  # how late the probe ran; None while still blocked (or at stop())
    frames: tuple[Frame, ...]
    frames_dropped: int = 0  # outer frames beyond max_frames
    thread_name: str = ""
    note: str = ""

    @property
    def stack(self) -> tuple[str, ...]:
        """The frames as ``function (file:line)`` strings, innermost first."""
        return tuple(str(f) for f in self.frames)

    @property
    def where(self) -> Frame | None:
        """The blocking frame (the innermost), or None when no stack was taken."""
        return self.frames[0] if self.frames else None

    def __str__(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.started_at))
        when += f".{int(self.started_at % 1 * 1000):03d}"
        if self.lag_s is None:
            how = "still blocked"
        else:
            how = f"ran {self.lag_s:.3f} s late"
        lines = [f"blocked >= {self.threshold_s:g} s ({how}) at {when}, "
                 f"loop thread {self.thread_name or '?'}"]
        if self.frames and self.frames[0].line:
            lines.append(f"    {self.frames[0].line}")
        lines += [f"  {f}" for f in self.frames]
        if self.frames_dropped:
            lines.append(f"  ... {self.frames_dropped} outer frames not kept")
        if self.note:
            lines.append(f"  ({self.note})")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True, slots=True)
class LagReport:
    """What a watchdog measured: lag histogram, max, p99 and the blocked episodes.

    ``histogram`` pairs each bucket's label with its count (``BUCKETS_S``); the counts
    add up to ``samples``. ``max_s`` is over all samples; ``p99_s`` and ``p50_s`` over
    the last ``window`` samples (the ring buffer). ``episodes`` are the last ones kept,
    oldest first; ``episodes_total`` counts all, kept, dropped or only logged.
    """

    samples: int
    histogram: tuple[tuple[str, int], ...]
    max_s: float | None
    p50_s: float | None
    p99_s: float | None
    window: int
    episodes: tuple[Episode, ...]
    episodes_total: int
    threshold_s: float
    interval_s: float
    skipped: int = 0  # probes not counted: the loop was stopped (not running) meanwhile

    def __str__(self) -> str:
        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x * 1e3:.1f} ms"

        lines = [
            f"loop lag: {self.samples} samples every {self.interval_s * 1e3:g} ms, "
            f"max {ms(self.max_s)}, p50 {ms(self.p50_s)}, p99 {ms(self.p99_s)} "
            f"(of the last {self.window})"
        ]
        top = max((n for _, n in self.histogram), default=0)
        for label, n in self.histogram:
            bar = "#" * (math.ceil(30 * n / top) if top else 0)
            lines.append(f"  {label:>10} {n:7d} {bar}")
        lines.append(f"blocked episodes (>= {self.threshold_s:g} s): {self.episodes_total}"
                     + (f", last {len(self.episodes)} shown" if
                        len(self.episodes) < self.episodes_total else ""))
        lines += [str(e) for e in self.episodes]
        return "\n".join(lines)


class _State(enum.Enum):
    NEW = "new"  # start() not called yet
    WATCHING = "watching"  # the thread runs
    STOPPED = "stopped"  # stop() called, or the loop closed under the watchdog


_ids = itertools.count(1)


class LoopWatchdog:
    """Watch an event loop from a thread: lag histogram, and the stack whenever it blocks.

        async with LoopWatchdog(threshold_s=0.1, interval_s=0.02) as dog:
            await main()
        print(dog.report())

    Or, for code that holds the loop: ``dog.start(loop)`` ... ``dog.stop()``. A
    watchdog runs once: ``start()`` twice raises, ``stop()`` twice is harmless, and
    the report stays readable after the stop.
    """

    def __init__(
        self,
        *,
        threshold_s: float = 0.1,
        interval_s: float = 0.02,
        log_episodes: bool = False,
        max_samples: int = 10_000,
        max_episodes: int = 100,
        max_frames: int = 50,
    ) -> None:
        if threshold_s <= 0 or interval_s <= 0:
            raise ValueError(f"threshold_s and interval_s must be > 0, "
                             f"not {threshold_s!r} and {interval_s!r}")
        if min(max_samples, max_episodes, max_frames) < 1:
            raise ValueError("max_samples, max_episodes and max_frames must be >= 1")
        self.threshold_s = threshold_s
        self.interval_s = interval_s
        self.log_episodes = log_episodes
        self.max_frames = max_frames
        self.name = f"course_lib.monitor.watchdog-{next(_ids)}"
        self._state = _State.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread_id: int | None = None
        self._thread: threading.Thread | None = None
        self._probe: asyncio.Handle | None = None  # the last probe posted
        # The probe protocol: the watchdog posts probe number `seq`, the loop's stamp
        # writes `_ran_seq`/`_ran_at` and notifies. The lock is held only for those
        # few assignments (never while a stack is read or a line logged): the loop
        # never waits on the watchdog for longer than that.
        self._cond = threading.Condition(threading.Lock())
        self._stopping = False
        self._exited = False  # the thread has run its last line (under the lock)
        self._on_exit: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._ran_seq = 0
        self._ran_at = 0.0
        # Statistics, written by the watchdog thread, read by report(); all bounded.
        self._stats_lock = threading.Lock()
        self._counts = [0] * (len(BUCKETS_S) + 1)
        self._ring: deque[float] = deque(maxlen=max_samples)
        self._max_s: float | None = None
        self._skipped = 0
        self._episodes: deque[Episode] = deque(maxlen=max_episodes)
        self._episodes_total = 0

    def __repr__(self) -> str:
        return (f"<LoopWatchdog {self.name} {self._state.value}, "
                f"threshold {self.threshold_s:g} s, every {self.interval_s:g} s>")

    @property
    def running(self) -> bool:
        """True while the watchdog's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    # --- lifecycle ------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> Self:
        """Start watching ``loop`` (default: the running loop); return self.

        From inside the loop (a coroutine, a callback) the loop's thread is known at
        once. From another thread, pass the loop: its thread is learned from the first
        probe that runs (or, until then, the loop's own record of it, when it has one).
        """
        if self._state is not _State.NEW:
            raise RuntimeError(f"{self!r} was already started: a watchdog runs once, "
                               "make a new one")
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(f"{self!r}.start() needs a running loop, "
                                   "or the loop to watch: start(loop)") from None
        if loop.is_closed():
            raise RuntimeError(f"{self!r} cannot watch a closed loop")
        try:
            on_the_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_the_loop = False
        if on_the_loop:
            self._loop_thread_id = threading.get_ident()
        self._loop = loop
        self._thread = threading.Thread(target=self._watch, name=self.name, daemon=True)
        self._state = _State.WATCHING
        self._thread.start()
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop the thread and join it (at most ``timeout_s``). Harmless when stopped.

        It blocks the calling thread while the watchdog thread finishes its current
        step (a notify wakes it: usually microseconds). From a coroutine, prefer
        ``await dog.aclose()``, which never blocks the loop.
        """
        self._request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            self._drop_probe()

    async def aclose(self) -> None:
        """Stop the thread and wait for it to end without blocking the running loop."""
        thread = self._thread
        if thread is None:
            self._request_stop()
            return
        # The thread's last act is to resolve this future on our loop; then join()
        # is instant. Not to_thread(join): a loop from runtime.run() may be shutting
        # its default executor down, and a thread for a join is a thread too many.
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        with self._cond:
            registered = not self._exited  # then the thread will resolve `exited`
            if registered:
                self._on_exit.append((loop, exited))
        self._request_stop()
        try:
            if registered:
                await exited
        finally:
            thread.join()  # cancelled meanwhile or not: the thread is ending, no real wait
            self._drop_probe()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _drop_probe(self) -> None:
        # A probe still queued would run as a no-op; on the loop's own thread (the
        # only place a Handle may be touched) take it off the ready queue instead.
        probe = self._probe
        if (probe is not None and not self.running
                and threading.get_ident() == self._loop_thread_id):
            probe.cancel()
            self._probe = None

    def _request_stop(self) -> None:
        self._state = _State.STOPPED  # stopped before it started: it never will
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # --- the report -----------------------------------------------------------------

    def report(self) -> LagReport:
        """A snapshot of the figures so far (while watching, or after the stop)."""
        with self._stats_lock:
            counts = tuple(self._counts)
            ring = list(self._ring)
            max_s = self._max_s
            episodes = tuple(self._episodes)
            total = self._episodes_total
            skipped = self._skipped
        ring.sort()
        return LagReport(
            samples=sum(counts),
            histogram=tuple(zip(_BUCKET_LABELS, counts, strict=True)),
            max_s=max_s,
            p50_s=_percentile(ring, 50),
            p99_s=_percentile(ring, 99),
            window=len(ring),
            episodes=episodes,
            episodes_total=total,
            threshold_s=self.threshold_s,
            interval_s=self.interval_s,
            skipped=skipped,
        )

    # --- on the loop ----------------------------------------------------------------

    def _stamp(self, seq: int) -> None:
        # Runs on the loop: as little as possible, and never a wait longer than the
        # watchdog's few assignments under the same lock.
        now = time.perf_counter()
        if self._loop_thread_id is None:
            self._loop_thread_id = threading.get_ident()
        with self._cond:
            if self._stopping:
                return  # a probe queued before stop(): a no-op
            self._ran_seq = seq
            self._ran_at = now
            self._cond.notify_all()

    # --- in the watchdog thread -----------------------------------------------------

    def _wait_probe(self, seq: int, timeout_s: float) -> bool:
        """Wait until probe ``seq`` has run or a stop is requested; False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._ran_seq >= seq or self._stopping, timeout_s)

    def _watch(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            for seq in itertools.count(1):
                if self._stopping or loop.is_closed():
                    return
                if not loop.is_running():  # not started yet, or between two run_*() calls
                    self._wait_probe(seq, self.interval_s)
                    continue
                posted_at, posted = time.time(), time.perf_counter()
                try:
                    self._probe = loop.call_soon_threadsafe(self._stamp, seq)
                except RuntimeError:  # the loop closed under us: nothing left to watch
                    return
                if not self._follow(loop, seq, posted_at, posted):
                    return
                self._wait_probe(seq + 1, self.interval_s)  # sleep, woken early by stop()
        except Exception:  # a watchdog must never take the process down
            logger.exception("%r failed; it watches no more", self)
        finally:
            self._state = _State.STOPPED
            with self._cond:
                self._exited = True
                waiters, self._on_exit = self._on_exit, []
            for waiter_loop, fut in waiters:
                try:
                    waiter_loop.call_soon_threadsafe(_resolve, fut)
                except RuntimeError:  # that loop closed: nobody waits any more
                    pass

    def _follow(self, loop: asyncio.AbstractEventLoop, seq: int, posted_at: float,
                posted: float) -> bool:
        """Wait for probe ``seq``; record its lag and any episode. False: stop watching."""
        episode: Episode | None = None
        void = False  # the loop stopped meanwhile: the lag is not the loop's fault
        if not self._wait_probe(seq, self.threshold_s):
            if loop.is_running():
                episode = self._capture(seq, posted_at)
                self._open(episode)
            else:
                void = True
            while not self._wait_probe(seq, max(self.interval_s, 0.05)):
                if loop.is_closed():
                    break
                if not loop.is_running():
                    void = True
        with self._cond:
            ran = self._ran_seq >= seq
            lag_s = self._ran_at - posted if ran else None
        if episode is not None:  # lag None: stopped, or the loop closed, while blocked
            self._close(episode, lag_s)
        if not ran:
            return False  # stop requested, or the loop closed with the probe unrun
        if void:
            with self._stats_lock:
                self._skipped += 1
            return True
        with self._stats_lock:
            self._counts[bisect.bisect_left(BUCKETS_S, lag_s)] += 1
            self._ring.append(lag_s)
            if self._max_s is None or lag_s > self._max_s:
                self._max_s = lag_s
        return True

    def _capture(self, seq: int, posted_at: float) -> Episode:
        """Read the loop thread's stack now, while it is (most likely) still blocked."""
        loop = self._loop
        tid = self._loop_thread_id or getattr(loop, "_thread_id", None)
        raw: list[tuple[str, str, int]] = []
        dropped = 0
        note = ""
        if tid is None:
            note = "the loop's thread was not known yet: start() the watchdog on the loop"
        else:
            frame = sys._current_frames().get(tid)
            while frame is not None:
                if len(raw) < self.max_frames:
                    code = frame.f_code
                    raw.append((code.co_qualname, code.co_filename, frame.f_lineno))
                else:
                    dropped += 1
                frame = frame.f_back
            del frame  # no reference to the loop thread's frames (and their locals) kept
            with self._cond:
                moved_on = self._ran_seq >= seq
            if moved_on:
                # The probe ran while we read: the stack may show the loop after the
                # block, not in it. Better no stack than a wrong one.
                raw, dropped = [], 0
                note = "the loop moved on before its stack was read"
        frames = tuple(Frame(fn, file, line, linecache.getline(file, line).strip())
                       for fn, file, line in raw)
        names = {t.ident: t.name for t in threading.enumerate()}
        return Episode(started_at=posted_at, threshold_s=self.threshold_s, lag_s=None,
                       frames=frames, frames_dropped=dropped,
                       thread_name=names.get(tid, "") if tid is not None else "", note=note)

    def _open(self, episode: Episode) -> None:
        with self._stats_lock:
            self._episodes_total += 1
            if not self.log_episodes:
                self._episodes.append(episode)
        if self.log_episodes:
            logger.warning("event loop %s", episode)

    def _close(self, episode: Episode, lag_s: float | None) -> None:
        ended = dataclasses.replace(episode, lag_s=lag_s)
        if self.log_episodes:
            if lag_s is not None:
                where = episode.where
                logger.warning("event loop unblocked: the probe ran %.3f s late (blocked at %s)",
                               lag_s, where if where is not None else "?")
            return
        with self._stats_lock:
            # Replace it in place, unless newer episodes pushed it out meanwhile.
            for i in range(len(self._episodes) - 1, -1, -1):
                if self._episodes[i] is episode:
                    self._episodes[i] = ended
                    break


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _percentile(sorted_xs: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an ascending list; None when empty."""
    if not sorted_xs:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_xs)))
    return sorted_xs[rank - 1]
