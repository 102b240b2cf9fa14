"""Chapter 3: scheduling that works.

Edit the code below, then run ``check("3.1")``, ``check("3.2")``, ``check("3.3")`` and
``check("3.4")`` in notebooks/03_scheduling.ipynb.
"""

from __future__ import annotations

__all__ = ["InterleavedWRR", "PriorityPool", "SmoothWRR", "TokenBucket"]

import asyncio
from collections.abc import Coroutine, Hashable, Iterator, Mapping
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class SmoothWRR(Generic[K]):
    """Exercise 3.1: nginx's smooth weighted round robin.

        wrr = SmoothWRR({"a": 5, "b": 1, "c": 1})
        "".join(wrr.take(7))  # 'aabacaa', and again 'aabacaa', forever

    Each key has its weight and a *current weight*, 0 at the start. For each pick:

    1. every key's current weight grows by its weight;
    2. the key with the largest current weight is picked; on a tie, the one that came
       first in ``weights`` (dicts keep the order keys were inserted in);
    3. the picked key's current weight drops by the total of all the weights.

    - ``next(wrr)`` gives the next pick (``wrr`` is its own iterator: ``iter(wrr) is
      wrr``), and ``wrr.take(n)`` a list of the next ``n`` picks. They share one
      sequence: ``take(3)`` then ``take(4)`` gives the same keys as ``take(7)``.
    - The sequence never ends: every ``sum(weights)`` picks, each key has been picked
      exactly its weight's number of times, and it starts over.
    - Weights must be positive ints (not 0, not negative, not 1.5): ValueError
      otherwise. No keys at all (``{}``): ValueError.
    - Keys are any hashable: ``0``, ``None`` and ``("x", 1)`` are keys like ``"a"``.
    - Keep a copy of the weights: the caller changing its dict afterwards changes nothing.
    """

    def __init__(self, weights: Mapping[K, int]) -> None:
        raise NotImplementedError("Exercise 3.1: SmoothWRR")

    def __iter__(self) -> Iterator[K]:
        raise NotImplementedError("Exercise 3.1: SmoothWRR")

    def __next__(self) -> K:
        raise NotImplementedError("Exercise 3.1: SmoothWRR")

    def take(self, n: int) -> list[K]:
        raise NotImplementedError("Exercise 3.1: SmoothWRR")


class InterleavedWRR(Generic[K]):
    """Exercise 3.2: LVS's interleaved weighted round robin.

        wrr = InterleavedWRR({"a": 4, "b": 3, "c": 2})
        "".join(wrr.take(9))  # 'aababcabc', and again 'aababcabc', forever

    The keys, in the order given, are S0 ... Sn-1, with weights W(Si). Keep an index
    ``i``, starting at -1, and a current level ``cw``, starting at 0. For each pick,
    loop:

        i = (i + 1) mod n
        if i == 0:
            cw = cw - gcd(all the weights)
            if cw <= 0:
                cw = max(all the weights)
        if W(Si) >= cw:
            return Si

    (http://kb.linuxvirtualserver.org/wiki/Weighted_Round-Robin_Scheduling)

    - The same interface as SmoothWRR: ``next(wrr)``, ``iter(wrr) is wrr``,
      ``wrr.take(n)``, one shared sequence.
    - It never ends and never gets stuck: the weights are compared with the level,
      never used up (the article's version subtracts from them, and once they run
      out its ``while True`` spins forever). ``take(1000)`` works for any weights.
    - Weights must be positive ints: ValueError otherwise; ``{}``: ValueError.
    - Keys are any hashable, and the weights are copied, as in SmoothWRR.
    """

    def __init__(self, weights: Mapping[K, int]) -> None:
        raise NotImplementedError("Exercise 3.2: InterleavedWRR")

    def __iter__(self) -> Iterator[K]:
        raise NotImplementedError("Exercise 3.2: InterleavedWRR")

    def __next__(self) -> K:
        raise NotImplementedError("Exercise 3.2: InterleavedWRR")

    def take(self, n: int) -> list[K]:
        raise NotImplementedError("Exercise 3.2: InterleavedWRR")


class PriorityPool:
    """Exercise 3.3: a pool that runs coroutines by priority, a few at a time, with aging.

        pool = PriorityPool(2, aging_s=10)
        report = pool.submit(build_report(), priority=5)
        pool.submit(send_alert(), priority=0)   # goes first, if both have to wait
        await pool.join()
        report.result()

    - ``submit(coro, *, priority=0)`` queues the coroutine and returns at once an
      ``asyncio.Future`` that gets what the coroutine returns, or the exception it
      raises. A failing job does not stop the pool: the next one runs.
    - At most ``concurrency`` jobs run at the same time, each in a task of its own;
      when one ends, the best waiting job starts right away. A free slot takes a new
      job at once.
    - Best: the lowest priority number first; among equal priorities, the one
      submitted first (first in, first out).
    - With ``aging_s``, waiting counts: a job that has waited ``w`` seconds has the
      effective priority ``priority - w / aging_s`` (not rounded): each ``aging_s``
      seconds in the queue move it up one level, so a low-priority job is never
      starved by a stream of newer high-priority ones. Ties still go to the one
      submitted first. Without ``aging_s`` (None), a job waits as long as better
      ones keep coming.
    - ``await pool.join()``: wait until every submitted job has ended. At once if
      there is none.
    - ``await pool.close()``: jobs still queued never start: close their coroutines
      (``coro.close()``: no "coroutine was never awaited") and cancel their futures;
      running ones are cancelled, and close() returns once they have ended (their
      ``finally:`` blocks have run). After close(), ``submit()`` raises RuntimeError
      (and closes the coroutine it was given).
    - Two tasks may close the pool: the jobs are cancelled once (a second cancel would
      cut their cleanup short), and every close() waits until they have ended. If the
      task calling close() is cancelled, close() stops waiting at once (the jobs are
      cancelled already) and a later close() still waits for them. Cancelling a task
      that waits in join() cancels no job: join() only waits.
    - 1,000 jobs in a row work as well as 10.
    - ``concurrency`` below 1: ValueError.
    """

    def __init__(self, concurrency: int, *, aging_s: float | None = None) -> None:
        raise NotImplementedError("Exercise 3.3: PriorityPool")

    def submit(self, coro: Coroutine[Any, Any, Any], *, priority: int = 0) -> asyncio.Future[Any]:
        raise NotImplementedError("Exercise 3.3: PriorityPool")

    async def join(self) -> None:
        raise NotImplementedError("Exercise 3.3: PriorityPool")

    async def close(self) -> None:
        raise NotImplementedError("Exercise 3.3: PriorityPool")


class TokenBucket:
    """Exercise 3.4: a token bucket rate limiter, first come, first served.

        bucket = TokenBucket(rate_per_s=2, capacity=5)
        for url in urls:
            await bucket.acquire()     # 5 at once, then one every 0.5 s
            ...

    - The bucket holds up to ``capacity`` tokens and starts full. It refills
      continuously, ``rate_per_s`` tokens a second, never above ``capacity``. Time
      is the running loop's clock, ``asyncio.get_running_loop().time()``.
    - ``await acquire(n=1)`` takes ``n`` tokens, waiting until there are enough.
      Waiters are served in the order they came: a request for 4 tokens at the head
      of the line is not overtaken by later requests for 1, even when 1 token is
      there already (otherwise a steady trickle of small requests starves it).
    - ``try_acquire(n=1)`` takes ``n`` tokens and returns True if they are there,
      or returns False at once, taking nothing. It never jumps the line: while
      anyone is waiting, it returns False.
    - A waiter that is cancelled leaves the line without taking any token, and
      those behind it move up (and are served at once if the tokens are there). That
      holds even when the cancel comes just after it was served, before its task could
      resume: it gives the tokens back.
    - ``n`` must be between 1 and ``capacity`` (more could never be served):
      ValueError otherwise, from acquire() and try_acquire() alike.
    """

    def __init__(self, rate_per_s: float, capacity: int) -> None:
        raise NotImplementedError("Exercise 3.4: TokenBucket")

    async def acquire(self, n: int = 1) -> None:
        raise NotImplementedError("Exercise 3.4: TokenBucket")

    def try_acquire(self, n: int = 1) -> bool:
        raise NotImplementedError("Exercise 3.4: TokenBucket")
