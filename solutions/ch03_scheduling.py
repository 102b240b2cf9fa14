"""Chapter 3: scheduling that works, solved."""

from __future__ import annotations

__all__ = ["InterleavedWRR", "PriorityPool", "SmoothWRR", "TokenBucket"]

import asyncio
import functools
import heapq
import itertools
import math
from collections import deque
from collections.abc import Coroutine, Hashable, Iterator, Mapping
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def _checked_weights(weights: Mapping[K, int]) -> dict[K, int]:
    if not weights:
        raise ValueError("no keys to pick from: give at least one key and its weight")
    for key, weight in weights.items():
        # bool is an int too, but {"a": True} is surely a mistake.
        if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0:
            raise ValueError(f"the weight of {key!r} must be a positive int, not {weight!r}")
    return dict(weights)  # a copy: the caller changing theirs must not change the cycle


class SmoothWRR(Generic[K]):
    """Pick keys in proportion to their weights, spread out evenly (nginx's smooth WRR).

        wrr = SmoothWRR({"a": 5, "b": 1, "c": 1})
        "".join(wrr.take(7))  # 'aabacaa'
    """

    def __init__(self, weights: Mapping[K, int]) -> None:
        self._weights = _checked_weights(weights)
        self._total = sum(self._weights.values())
        self._current = dict.fromkeys(self._weights, 0)

    def __iter__(self) -> Iterator[K]:
        return self

    def __next__(self) -> K:
        # The first key leads to begin with. Not `best = None` as "none yet": None is a
        # key like any other hashable, and would then lose every comparison.
        best = next(iter(self._weights))
        for key, weight in self._weights.items():
            self._current[key] += weight
            # Strictly greater: on a tie the key inserted first keeps the pick.
            if self._current[key] > self._current[best]:
                best = key
        # Every key gained its weight, the winner pays back the total: the current
        # weights always sum to 0, so after sum(weights) picks they are all back at 0
        # and the cycle repeats. Nothing is ever used up.
        self._current[best] -= self._total
        return best

    def take(self, n: int) -> list[K]:
        """The next ``n`` picks."""
        return [next(self) for _ in range(n)]

    def __repr__(self) -> str:
        return f"SmoothWRR({self._weights!r})"


class InterleavedWRR(Generic[K]):
    """Pick keys in proportion to their weights, level by level (LVS's interleaved WRR).

        wrr = InterleavedWRR({"a": 4, "b": 3, "c": 2})
        "".join(wrr.take(9))  # 'aababcabc'
    """

    def __init__(self, weights: Mapping[K, int]) -> None:
        self._weights = _checked_weights(weights)
        self._keys = list(self._weights)
        self._step = math.gcd(*self._weights.values())
        self._max = max(self._weights.values())
        self._i = -1
        self._cw = 0  # the current level: keys weighing at least this much are picked

    def __iter__(self) -> Iterator[K]:
        return self

    def __next__(self) -> K:
        n = len(self._keys)
        # Ends within two sweeps of the keys: the level stays between gcd and max(S),
        # and the heaviest key reaches every level. Unlike the article's version,
        # weights are compared, never consumed, so no key ever runs out.
        while True:
            self._i = (self._i + 1) % n
            if self._i == 0:
                self._cw -= self._step
                if self._cw <= 0:
                    self._cw = self._max
            key = self._keys[self._i]
            if self._weights[key] >= self._cw:
                return key

    def take(self, n: int) -> list[K]:
        """The next ``n`` picks."""
        return [next(self) for _ in range(n)]

    def __repr__(self) -> str:
        return f"InterleavedWRR({self._weights!r})"


class PriorityPool:
    """Run coroutines at most ``concurrency`` at a time, lowest priority number first.

        pool = PriorityPool(2, aging_s=10)
        report = pool.submit(build_report(), priority=5)
        pool.submit(send_alert(), priority=0)       # runs before the report, if both wait
        await pool.join()
        report.result()
    """

    def __init__(self, concurrency: int, *, aging_s: float | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency!r}")
        if aging_s is not None and aging_s <= 0:
            raise ValueError(f"aging_s must be positive (or None), not {aging_s!r}")
        self._concurrency = concurrency
        self._aging_s = aging_s
        # A heap of (rank, sequence number, coroutine, future): the sequence number
        # keeps equal ranks first in, first out, and heapq never compares coroutines.
        self._queue: list[tuple[float, int, Coroutine[Any, Any, Any], asyncio.Future[Any]]] = []
        self._seq = itertools.count()
        self._running: dict[asyncio.Task[Any], asyncio.Future[Any]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    def submit(self, coro: Coroutine[Any, Any, Any], *, priority: int = 0) -> asyncio.Future[Any]:
        """Queue ``coro``; the future gets its result (or exception) once it has run."""
        if self._closed:
            coro.close()  # refused: closed, so no "coroutine was never awaited"
            raise RuntimeError(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._aging_s is None:
            rank: float = priority
        else:
            # Waiting w seconds makes the effective priority priority - w / aging_s.
            # Compared at any one moment, A goes before B exactly when
            #     priority_A * aging_s + submitted_A < priority_B * aging_s + submitted_B:
            # a rank fixed at submission, so the heap needs no re-sorting as time passes.
            rank = priority * self._aging_s + loop.time()
        heapq.heappush(self._queue, (rank, next(self._seq), coro, future))
        self._idle.clear()
        self._start_next()
        return future

    async def join(self) -> None:
        """Wait until every job submitted so far has ended (or the pool is closed)."""
        await self._idle.wait()

    async def close(self) -> None:
        """Drop the queued jobs, cancel the running ones and wait for their cleanup.

        Every close() waits, a second one (another task shutting down too) as well, but
        only the first cancels: a second cancel would cut the jobs' cleanup short. If
        close() itself is cancelled, it stops waiting at once; the jobs, cancelled
        already, finish their cleanup on their own, and a later close() waits for them.
        """
        if not self._closed:
            self._closed = True
            while self._queue:
                _, _, coro, future = heapq.heappop(self._queue)
                coro.close()  # never started: closed, not left for the garbage collector
                future.cancel()
            for task in self._running:
                task.cancel()
            if not self._running:
                self._idle.set()  # nothing queued, nothing running: join() returns
        if self._running:
            # asyncio.wait(), not gather() or `await task`: those would raise the jobs'
            # CancelledError here, as if close() itself had been cancelled.
            await asyncio.wait(list(self._running))
        # Each job's done callback (_finished) ran before wait() returned: it was added
        # first. It cancelled the job's future and, with nothing left, set _idle.

    def _start_next(self) -> None:
        while self._queue and len(self._running) < self._concurrency and not self._closed:
            _, _, coro, future = heapq.heappop(self._queue)
            if future.cancelled():  # the caller gave up on it while it waited
                coro.close()
                continue
            # The job's own task, not a wrapper coroutine: cancelled before its first
            # step, a task still closes its coroutine (no "never awaited" warning).
            task = asyncio.create_task(coro)
            self._running[task] = future
            task.add_done_callback(self._finished)
            future.add_done_callback(functools.partial(_cancel_if_cancelled, task))
        if not self._queue and not self._running:
            self._idle.set()

    def _finished(self, task: asyncio.Task[Any]) -> None:
        future = self._running.pop(task)
        # The future may be done already: cancelled by its caller, or by close().
        if task.cancelled():
            future.cancel()
        elif (error := task.exception()) is not None:
            # Retrieved from the task, handed to the future: the pool goes on.
            if not future.done():
                future.set_exception(error)
        elif not future.done():
            future.set_result(task.result())
        self._start_next()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._running)} running"
        return (
            f"<PriorityPool concurrency={self._concurrency} aging_s={self._aging_s} "
            f"{state}, {len(self._queue)} queued>"
        )


def _cancel_if_cancelled(task: asyncio.Task[Any], future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        task.cancel()


# Token counts are floats: after a wait of exactly (n - tokens) / rate they may come
# out a hair below n. Within this much, n tokens are there.
_EPSILON = 1e-9


class TokenBucket:
    """Let through ``rate_per_s`` tokens a second, in bursts of up to ``capacity``.

        bucket = TokenBucket(rate_per_s=2, capacity=5)
        for url in urls:
            await bucket.acquire()     # 5 at once, then one every 0.5 s
            ...
    """

    def __init__(self, rate_per_s: float, capacity: int) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate_per_s must be positive, not {rate_per_s!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity!r}")
        self._rate = rate_per_s
        self._capacity = capacity
        self._tokens = float(capacity)
        # Loop time of the last refill. None: never used, so full however long ago it
        # was made (and it can be made outside a running loop).
        self._updated_at: float | None = None
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` tokens if they are there and nobody is waiting; never waits."""
        self._check(n)
        self._refill()
        if self._waiters or self._tokens < n - _EPSILON:
            return False  # the waiters were there first
        self._tokens -= n
        return True

    async def acquire(self, n: int = 1) -> None:
        """Take ``n`` tokens, waiting in line (first come, first served) for them."""
        if self.try_acquire(n):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = (n, future)
        self._waiters.append(waiter)
        self._serve()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Served, then cancelled before it could resume: the tokens go back.
                self._tokens = min(self._capacity, self._tokens + n)
            elif waiter in self._waiters:  # _serve() may have dropped it already
                self._waiters.remove(waiter)
            # A big request that left the head may have been holding up small ones.
            self._serve()
            raise

    def _serve(self) -> None:
        """Hand tokens to the waiters in order, and set a timer for the first left waiting."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._refill()
        while self._waiters:
            n, future = self._waiters[0]
            if future.done():  # cancelled, its acquire() not yet resumed to leave the line
                self._waiters.popleft()
                continue
            if self._tokens < n - _EPSILON:
                # Small requests behind it wait too: first come, first served.
                assert self._updated_at is not None
                when = self._updated_at + (n - self._tokens) / self._rate
                self._timer = asyncio.get_running_loop().call_at(when, self._serve)
                return
            self._waiters.popleft()
            self._tokens -= n
            future.set_result(None)

    def _refill(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._updated_at is not None:
            gained = (now - self._updated_at) * self._rate
            self._tokens = min(float(self._capacity), self._tokens + gained)
        self._updated_at = now

    def _check(self, n: int) -> None:
        if not 1 <= n <= self._capacity:
            raise ValueError(
                f"cannot take {n!r} tokens from a bucket of capacity {self._capacity}: "
                f"ask for 1 to {self._capacity}"
            )

    def __repr__(self) -> str:
        return (
            f"<TokenBucket rate_per_s={self._rate:g} capacity={self._capacity} "
            f"tokens={self._tokens:.3g} waiters={len(self._waiters)}>"
        )
