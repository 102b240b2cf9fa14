"""Scheduling: who runs next, how many at once, and how fast.

One idea: a scheduler decides the order of work and bounds it; it never runs work
one by one, never drops a result, and never leaves a coroutine un-run and unclosed.

- ``PriorityTaskPool``: at most N jobs at once, lowest priority number first, FIFO
  among equals, optional aging against starvation; each job's result, exception or
  cancellation arrives on the future ``submit()`` returns, and cancelling that future
  cancels the job, queued or running.
- ``TokenBucket``: ``await acquire(n)`` at a steady rate with bursts up to a
  capacity, first come first served.
- From ``course_lib.wrr``, re-exported here: ``InterleavedWRR`` (LVS) and
  ``SmoothWRR`` (nginx) weighted round robin, and ``WeightedDispatcher``, which
  serves several queues by weight.
"""

__all__ = [
    "InterleavedWRR",
    "PriorityTaskPool",
    "SmoothWRR",
    "TenantStats",
    "TokenBucket",
    "WeightedDispatcher",
]

import asyncio
import contextlib
import enum
import math
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from heapq import heapify, heappop, heappush
from types import CoroutineType
from typing import Any, Self

from course_lib.wrr import InterleavedWRR, SmoothWRR, TenantStats, WeightedDispatcher

_COMPACT_AT = 64  # cancelled jobs tolerated in the queue before it is rebuilt
_AGING_STEPS = 1 << 20  # aging keys count in these fractions of a priority level


class _State(enum.Enum):
    OPEN = "open"  # accepts work
    CLOSING = "closing"  # close() running: refuses new work, finishes (or cancels) the rest
    CLOSED = "closed"  # close() returned


class _Job(asyncio.Future):
    """The future ``submit()`` returns; its ``cancel()`` cancels the job itself."""

    __slots__ = ("_call", "_cancels", "_pool", "_work", "_worker", "name", "priority")

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the job, as ``Task.cancel`` would.

        Queued: it will never start; its coroutine is closed and the future is cancelled
        now. Running: the job gets CancelledError at its next await and the future ends
        with the job's outcome (cancelled, unless the job suppresses the cancel). Returns
        False when the future is already done.
        """
        if self.done():
            return False
        worker = self._worker
        if worker is None:  # still queued: it stays in its bucket, skipped when reached
            super().cancel(msg)
            work, self._work = self._work, None
            if not self._call:
                work.close()  # else "coroutine ... was never awaited"
            self._pool._dequeued_by_cancel()
            return True
        self._cancels += 1  # the worker takes back exactly this many requests
        worker.cancel(msg)
        return True

    def __repr__(self) -> str:
        if not self.done():
            state = "queued" if self._worker is None else "running"
        elif self.cancelled():
            state = "cancelled"
        else:
            # _exception, not exception(): a repr must not mark the exception retrieved
            state = "failed" if self._exception is not None else "done"
        return f"<Job {self.name!r} priority={self.priority} {state}>"


class PriorityTaskPool:
    """Run jobs at most ``concurrency`` at a time, lowest priority number first.

        async with PriorityTaskPool(4, aging_s=10) as pool:
            urgent = pool.submit(fetch(url), priority=0)
            later = pool.submit(lambda: reindex(db), priority=5, name="reindex")
            print(await urgent)
        # leaving the block: queued jobs run to the end (cancelled if the body raised)

    Equal priorities run in submission order. With ``aging_s``, every ``aging_s``
    seconds a job waits improves its priority by one (continuously: half a level after
    ``aging_s / 2``), so a stream of urgent jobs cannot starve a patient one; two jobs
    at the same effective priority run in submission order.

    ``submit()`` takes a coroutine object or a zero-argument callable that returns an
    awaitable (called when the job starts). It returns a future for the job's result;
    its exception is raised by ``await``; if nobody ever retrieves it, asyncio reports
    "Future exception was never retrieved" when the future is collected, which is the
    point: no failure goes unseen. Cancelling the future cancels the job: a queued job
    never starts (its coroutine is closed, the future cancelled at once); a running one
    gets CancelledError at its next await, and its future ends with the job's outcome
    once its cleanup has run, as with ``Task.cancel()``. A task awaiting the future and
    being cancelled cancels the job the same way.

    Jobs run inside worker tasks, at most ``concurrency``, started on demand and ended
    when the queue is empty, so an idle pool holds no task; a failing job never ends
    its worker. A job runs in its worker's contextvars context, not a copy of its
    submitter's; for that, submit ``lambda: asyncio.create_task(coro, context=ctx)``.
    A worker cancelled by anyone but the pool means shutdown (``asyncio.run()`` cancels
    every task at exit): the pool then closes and cancels everything it holds.
    """

    def __init__(
        self, concurrency: int, *, aging_s: float | None = None, name: str = "pool"
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, not {concurrency!r}")
        if aging_s is not None and not (0 < aging_s < math.inf):
            raise ValueError(f"aging_s must be a positive number of seconds or None, "
                             f"not {aging_s!r}")
        self.concurrency = concurrency
        self.aging_s = aging_s
        self.name = name
        # The queue: one FIFO bucket per distinct key, and a heap of those keys. Jobs
        # with equal keys (the common case: a few priority levels) cost O(1) each, and
        # a bucket's order is submission order, which breaks ties as promised.
        #
        # Aging without re-sorting: a job submitted at t0 with priority p has, at time
        # t, the effective priority p - (t - t0) / aging_s. Two jobs compare at the same
        # t, so t drops out: job 1 goes first iff p1 + t1/aging_s < p2 + t2/aging_s. The
        # key p + t0/aging_s never changes while the job waits (the static twin of
        # p*aging_s + t0): a plain heap, no re-sorting, and exactly one level gained
        # per aging_s waited.
        #
        # The key counts in steps of 1/2**20 of a level (t0 rounded to aging_s/2**20,
        # 10 µs for aging_s=10), as an int for integer priorities: the loop's clock
        # moves between any two submits, so exact keys would give every job a bucket
        # of its own (measured: 1.8x the bare asyncio.Queue's cost, against 1.3x).
        # Jobs whose effective priorities differ by less than a step run in
        # submission order.
        self._steps_per_s = None if aging_s is None else _AGING_STEPS / aging_s
        self._keys: list[float] = []
        self._buckets: dict[float, deque[_Job]] = {}
        self._queued = 0  # live jobs in the buckets (cancelled ones stay until reached)
        self._cancelled_queued = 0
        self._open = True
        self._workers = 0  # started or about to start
        self._started_workers = 0  # ever started: numbers the workers' names
        self._tasks: set[asyncio.Task[None]] = set()  # the loop holds tasks only weakly
        self._current: dict[asyncio.Task[None], _Job] = {}  # each worker's latest job
        self._idle = asyncio.Event()  # set while no worker exists: nothing queued or running
        self._idle.set()
        self._state = _State.OPEN
        self._stopping: weakref.WeakSet[Any] = weakref.WeakSet()  # running jobs told to stop

    def __repr__(self) -> str:
        aging = "" if self.aging_s is None else f", aging_s={self.aging_s}"
        return (f"<PriorityTaskPool {self.name!r} {self._state.value}, "
                f"{self.running}/{self.concurrency} running, {self.queued} queued{aging}>")

    @property
    def running(self) -> int:
        """Jobs started and not yet ended."""
        return sum(not job.done() for job in self._current.values())

    @property
    def queued(self) -> int:
        """Jobs waiting for a free slot."""
        return self._queued

    def submit(
        self,
        work: Coroutine[Any, Any, Any] | Callable[[], Awaitable[Any]],
        /,
        *,
        priority: float = 0,
        name: str | None = None,
    ) -> asyncio.Future[Any]:
        """Queue a job; return the future of its result. Lower ``priority`` runs first."""
        # This is the hot path (see benchmarks/scheduling_overhead.py): cheap checks first.
        call = type(work) is not CoroutineType and not asyncio.iscoroutine(work)
        if not self._open:
            _refuse(work, call)
            raise RuntimeError(f"{self!r} is closed: it accepts no new jobs "
                               f"(refused {name or _label(work)!r})")
        if call and not callable(work):
            raise TypeError(f"submit() takes a coroutine or a zero-argument callable "
                            f"returning an awaitable, not {work!r}")
        if type(priority) is not int and not (isinstance(priority, int | float)
                                              and priority == priority):
            _refuse(work, call)
            raise ValueError(f"priority must be a number (not NaN), not {priority!r}")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _refuse(work, call)
            raise RuntimeError(f"{self!r}.submit() needs a running event loop") from None
        # Allocation counts here: `loop=` would build a kwargs dict per job (more garbage
        # collector passes), and the running loop is the default; one attribute a line,
        # since unpacking more than three builds a tuple.
        job = _Job()
        job._pool = self
        job._work = work
        job._call = call
        job.name = name or getattr(work, "__qualname__", None) or type(work).__name__
        job.priority = priority
        job._worker = None
        job._cancels = 0
        steps_per_s = self._steps_per_s
        key = priority if steps_per_s is None else (
            priority * _AGING_STEPS + round(loop.time() * steps_per_s))
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = deque()
            heappush(self._keys, key)
        bucket.append(job)
        self._queued += 1
        if self._workers < self.concurrency:
            self._workers += 1
            self._idle.clear()
            # With an eager task factory (3.12+) the worker starts right here and may
            # finish jobs before submit() returns; everything it needs is in place.
            self._started_workers += 1  # numbered: timelines and task dumps tell them apart
            name = f"{self.name}-worker-{self._started_workers}"
            task = loop.create_task(self._work(), name=name)
            if not task.done():
                self._tasks.add(task)
        return job

    async def join(self) -> None:
        """Wait until nothing is queued or running (jobs submitted meanwhile included)."""
        await self._idle.wait()

    async def close(self, *, cancel_pending: bool = False) -> None:
        """Refuse new jobs, then wait for the queued and running ones to end.

        With ``cancel_pending``, queued jobs are cancelled (their coroutines closed) and
        running ones are cancelled once, and their cleanup awaited: a second ``close()``,
        from another task, waits for that cleanup instead of cutting it short.

        If the caller is cancelled while waiting, every job left is cancelled, and
        close() still waits until they have all ended (further cancels are absorbed
        the same way) before it raises CancelledError: it never returns or raises with
        a job still running (the course's policy, see ``course_lib.lifecycle``).
        """
        self._stop_accepting()
        if cancel_pending:
            self._cancel_all(f"{self!r} closed with cancel_pending=True")
        cancelled = False
        while True:
            try:
                await self._idle.wait()
                break
            except asyncio.CancelledError:
                if not cancelled:
                    self._cancel_all(f"{self!r}: close() was cancelled")
                cancelled = True  # keep waiting: the jobs' cleanup must end first
        self._state = _State.CLOSED
        if cancelled:
            raise asyncio.CancelledError

    async def __aenter__(self) -> Self:
        if self._state is not _State.OPEN:
            raise RuntimeError(f"{self!r} cannot be entered again")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        # A failing or cancelled body cancels the pool's jobs, as a TaskGroup cancels
        # its children when its body raises.
        await self.close(cancel_pending=exc_type is not None)

    async def _work(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        keys, buckets, current = self._keys, self._buckets, self._current
        job = None
        try:
            while keys:  # an empty queue ends the worker: nothing to wake, nothing to leak
                key = keys[0]
                bucket = buckets[key]
                job = bucket.popleft()
                if not bucket:
                    heappop(keys)
                    del buckets[key]
                if job.done():  # cancelled while queued: cancel() closed and counted it
                    continue
                self._queued -= 1
                job._worker = me
                current[me] = job
                work = job._work
                job._work = None  # a finished coroutine held by its future is garbage
                # No await between jobs and none around the job's own: a job's
                # CancelledError is either the job's (a request counted in _cancels,
                # or its own doing) or the worker's (shutdown), and cancelling()
                # tells which.
                try:
                    result = await (work() if job._call else work)
                except asyncio.CancelledError as exc:
                    if not self._take_back_cancels(me, job):
                        raise  # the worker itself is cancelled: see below
                    asyncio.Future.cancel(job, exc.args[0] if exc.args else None)
                except Exception as exc:  # the job failed (or turned its cancel into this)
                    with contextlib.suppress(asyncio.InvalidStateError):
                        job.set_exception(exc)
                except BaseException as exc:  # KeyboardInterrupt, SystemExit: as Task does
                    with contextlib.suppress(asyncio.InvalidStateError):
                        job.set_exception(exc)
                    raise
                else:  # it succeeded (or suppressed its cancel): its result stands
                    try:
                        job.set_result(result)
                    except asyncio.InvalidStateError:  # someone completed it by hand
                        pass
                if job._cancels:  # cancel requests the job's end did not consume
                    await self._take_back_stale_cancels(me, job)
        except asyncio.CancelledError:
            # Nobody but the pool should cancel a worker, and the pool never does: this
            # is shutdown (asyncio.run() cancels every task left at exit). Close the
            # pool and cancel the rest, or queued coroutines would never be closed.
            if job is not None and not job.done():
                asyncio.Future.cancel(job, f"{self!r} is shutting down")
            self._abort(f"{self!r}: its worker {me.get_name()!r} was cancelled")
            raise
        finally:
            self._workers -= 1
            self._tasks.discard(me)
            current.pop(me, None)
            if not self._workers:
                self._idle.set()

    @staticmethod
    def _take_back_cancels(me: asyncio.Task[None], job: _Job) -> bool:
        """Undo the cancel requests the job made on its worker; False if more remain."""
        for _ in range(job._cancels):
            me.uncancel()
        job._cancels = 0
        return not me.cancelling()

    async def _take_back_stale_cancels(self, me: asyncio.Task[None], job: _Job) -> None:
        self._take_back_cancels(me, job)
        # A job that cancels its own future and ends without another await leaves that
        # cancel armed on the worker: 3.11-3.12's uncancel() does not disarm it (3.13's
        # does), and the *next* job would receive it. Let it go off here instead.
        if getattr(me, "_must_cancel", False):
            try:
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                if me.cancelling():
                    raise

    def _dequeued_by_cancel(self) -> None:
        self._queued -= 1
        self._cancelled_queued += 1
        if self._cancelled_queued > _COMPACT_AT and self._cancelled_queued > self._queued:
            # More dead jobs than live ones: drop them now, or a queue where most jobs
            # get cancelled would hold them all until the workers reach them.
            for key, bucket in list(self._buckets.items()):
                live = [job for job in bucket if not job.done()]
                bucket.clear()
                bucket.extend(live)  # in place: a worker may hold this deque
                if not live:
                    del self._buckets[key]
            self._keys[:] = list(self._buckets)  # in place: workers hold this list
            heapify(self._keys)
            self._cancelled_queued = 0

    def _cancel_all(self, msg: str) -> None:
        # Once per job: a job already asked to stop is left to its cleanup (a second
        # cancel would interrupt that cleanup at its next await).
        buckets = list(self._buckets.values())
        self._buckets.clear()
        self._keys.clear()  # in place: workers hold these, and now find them empty
        for bucket in buckets:
            for job in bucket:
                job.cancel(msg)  # closes queued coroutines; done ones say False
        self._queued = self._cancelled_queued = 0
        for job in list(self._current.values()):
            if job not in self._stopping:
                self._stopping.add(job)
                job.cancel(msg)

    def _stop_accepting(self) -> None:
        if self._state is _State.OPEN:
            self._state = _State.CLOSING
        self._open = False

    def _abort(self, msg: str) -> None:
        self._stop_accepting()
        self._cancel_all(msg)


class TokenBucket:
    """Allow ``rate_per_s`` tokens a second on average, bursts up to ``capacity``.

        bucket = TokenBucket(rate_per_s=5, capacity=10)   # starts full
        async with asyncio.TaskGroup() as tg:
            for url in urls:
                await bucket.acquire()        # the 11th waits 0.2 s, then one per 0.2 s
                tg.create_task(fetch(url))

    Waiters are served first come, first served: a large request at the head makes
    later small ones wait (no starvation), and ``try_acquire()`` never jumps the
    queue. Time is the loop's clock (``loop.time()``), so virtual clocks work. A waiter
    cancelled while waiting leaves the queue and takes no tokens; one cancelled just
    as its tokens were granted gives them back.
    """

    def __init__(self, rate_per_s: float, capacity: float) -> None:
        if not 0 < rate_per_s < math.inf:
            raise ValueError(f"rate_per_s must be a positive number, not {rate_per_s!r}")
        if not 0 < capacity < math.inf:
            raise ValueError(f"capacity must be a positive number, not {capacity!r}")
        self.rate_per_s = rate_per_s
        self.capacity = capacity
        self._tokens = float(capacity)
        self._updated_at: float | None = None  # loop time of the last refill
        self._waiters: deque[tuple[float, asyncio.Future[None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return (f"<TokenBucket {self.rate_per_s}/s, {self._tokens:.3g}/{self.capacity} "
                f"tokens, {len(self._waiters)} waiting>")

    @property
    def tokens(self) -> float:
        """Tokens available now (ignoring waiters)."""
        self._refill()
        return self._tokens

    def try_acquire(self, n: float = 1) -> bool:
        """Take ``n`` tokens if they are there and nobody waits; never blocks."""
        self._check(n)
        if self._waiters:
            return False
        self._refill()
        return self._take(n)

    async def acquire(self, n: float = 1) -> None:
        """Wait for ``n`` tokens (at most ``capacity``), behind every earlier waiter."""
        self._check(n)
        if not self._waiters:
            self._refill()
            if self._take(n):
                return
        fut = asyncio.get_running_loop().create_future()
        waiter = (n, fut)
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._schedule()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # Granted, then cancelled before we could resume: hand the tokens back.
                self._refill()
                self._tokens = min(self.capacity, self._tokens + n)
            else:
                was_head = self._waiters[0] is waiter
                self._waiters.remove(waiter)
                if not was_head:
                    raise
            self._grant()  # the new head may fit in what is there now
            raise

    def _check(self, n: float) -> None:
        if not 0 < n <= self.capacity:
            raise ValueError(f"{self!r} can grant 0 < n <= capacity={self.capacity} tokens "
                             f"at once, not n={n!r}")

    def _refill(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._updated_at is not None:
            elapsed = now - self._updated_at
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate_per_s)
        self._updated_at = now

    def _take(self, n: float) -> bool:
        # A timer can fire a hair early (the loop rounds to its clock resolution), and
        # float sums drift: a shortfall below a nanosecond's worth of tokens is enough.
        if self._tokens + 1e-9 * self.rate_per_s < n:
            return False
        self._tokens = max(0.0, self._tokens - n)
        return True

    def _grant(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._refill()
        while self._waiters and self._take(self._waiters[0][0]):
            _, fut = self._waiters.popleft()
            fut.set_result(None)
        self._schedule()

    def _schedule(self) -> None:
        if not self._waiters or self._timer is not None:
            return
        n = self._waiters[0][0]
        loop = asyncio.get_running_loop()
        self._refill()
        wait_s = max(0.0, (n - self._tokens) / self.rate_per_s)
        self._timer = loop.call_at(loop.time() + wait_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._grant()


def _label(work: object) -> str:
    return getattr(work, "__qualname__", None) or type(work).__name__


def _refuse(work: object, call: bool) -> None:
    if not call:
        with contextlib.suppress(Exception):
            work.close()  # type: ignore[attr-defined]  # refused: never awaited, so close it
