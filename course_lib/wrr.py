"""Weighted round robin: pick keys in proportion to integer weights, and serve queues so.

One idea: a weight is a share of the picks, and the order of the picks decides how
bursty the service is.

- ``InterleavedWRR``: the LVS scheduler. A current weight steps down from the
  largest weight by the gcd of all weights; each pass over the keys picks those at
  least that heavy. Cheap, exact per cycle, but the heaviest key comes in bursts.
- ``SmoothWRR``: nginx's scheduler. Every key earns its weight on each pick and the
  richest key is picked and pays the total back, so picks are spread out evenly.

- ``WeightedDispatcher``: several async queues (tenants) served N items at a time,
  by ``SmoothWRR`` over the tenants that have items queued.

Both schedulers are plain iterators (``next(wrr)``, ``wrr.take(n)``) whose keys can
change while in use (``add``, ``remove``, ``set_weight``). The article's version
consumed the weights and then looped forever without awaiting, freezing the event
loop: here a pick is O(number of keys), always ends, and an empty set raises
LookupError. ``course_lib.scheduling`` re-exports everything here.
"""

__all__ = ["InterleavedWRR", "SmoothWRR", "TenantStats", "WeightedDispatcher"]

import asyncio
import dataclasses
import enum
import logging
import math
import numbers
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any, Self

logger = logging.getLogger(__name__)


class _WeightedKeys:
    """The keys and weights both schedulers share; ``_changed()`` resets their state."""

    def __init__(self, weights: Mapping[Hashable, int] | Iterable[tuple[Hashable, int]] = ()):
        self._weights: dict[Hashable, int] = {}
        for key, weight in dict(weights).items():
            self._weights[key] = _check_weight(key, weight)
        self._changed()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._weights!r})"

    def __len__(self) -> int:
        return len(self._weights)

    def __contains__(self, key: object) -> bool:
        return key in self._weights

    def __iter__(self) -> Iterator[Hashable]:
        return self  # an endless iterator: `for key in wrr` never ends by itself

    def __next__(self) -> Hashable:
        raise NotImplementedError

    @property
    def weights(self) -> dict[Hashable, int]:
        """A copy of the weights, in the order keys were added."""
        return dict(self._weights)

    def take(self, n: int) -> list[Hashable]:
        """The next ``n`` picks."""
        if n < 0:
            raise ValueError(f"take() needs n >= 0, not {n!r}")
        return [next(self) for _ in range(n)]

    def add(self, key: Hashable, weight: int) -> None:
        """Add a key; ValueError if it is already here (use ``set_weight``)."""
        if key in self._weights:
            raise ValueError(f"{key!r} is already in {self!r}; use set_weight()")
        self._weights[key] = _check_weight(key, weight)
        self._changed()

    def remove(self, key: Hashable) -> None:
        """Remove a key; KeyError if it is not here."""
        if key not in self._weights:
            raise KeyError(key)
        del self._weights[key]
        self._changed()

    def set_weight(self, key: Hashable, weight: int) -> None:
        """Change a key's weight; KeyError if it is not here."""
        if key not in self._weights:
            raise KeyError(key)
        self._weights[key] = _check_weight(key, weight)
        self._changed()

    def _changed(self) -> None:
        raise NotImplementedError

    def _empty(self) -> LookupError:
        return LookupError(f"{type(self).__name__} has no keys to pick from")


class InterleavedWRR(_WeightedKeys):
    """Pick keys in proportion to their weights, the LVS way: heaviest first, in rounds.

        wrr = InterleavedWRR({"a": 4, "b": 3, "c": 2})
        "".join(wrr.take(9))  # 'aababcabc'

    A round visits the keys in order and picks those whose weight is at least the
    current weight, which starts at the largest weight and steps down by the gcd of
    all weights. A cycle is ``sum(weights) / gcd`` picks, in which each key appears
    exactly ``weight / gcd`` times. Any change (``add``, ``remove``, ``set_weight``)
    restarts the cycle from the top: the position and current weight are reset, as
    LVS does when its server list changes.
    """

    def __next__(self) -> Hashable:
        keys = self._keys
        if not keys:
            raise self._empty()
        # Ends within one pass over the keys: the heaviest key qualifies at every
        # current weight, since the current weight never exceeds the largest weight.
        while True:
            self._index = (self._index + 1) % len(keys)
            if self._index == 0:
                self._current -= self._gcd
                if self._current <= 0:
                    self._current = self._max
            key = keys[self._index]
            if self._weights[key] >= self._current:
                return key

    def _changed(self) -> None:
        self._keys = list(self._weights)
        self._gcd = math.gcd(*self._weights.values())  # gcd() of nothing is 0: unused then
        self._max = max(self._weights.values(), default=0)
        self._index = -1  # the first pick starts a new round at the largest weight
        self._current = 0


class SmoothWRR(_WeightedKeys):
    """Pick keys in proportion to their weights, spread out evenly.

        wrr = SmoothWRR({"a": 5, "b": 1, "c": 1})
        "".join(wrr.take(7))  # 'aabacaa'

    nginx's smooth weighted round robin. On each pick every key's current weight grows
    by its weight, the key with the largest current weight wins (the first added, on a
    tie) and its current weight drops by the sum of all weights. Without changes, every
    ``sum(weights)`` picks form a cycle in which each key appears exactly ``weight``
    times, and a key is never a whole pick ahead of its exact share.

    Changes keep the current weights of the keys that stay, so the order stays smooth
    across them: a new key starts at current weight 0, a removed key's current weight is
    forgotten (its debt or credit with it), ``set_weight`` keeps the key's current weight.
    """

    def __next__(self) -> Hashable:
        weights, current = self._weights, self._current
        if not weights:
            raise self._empty()
        best = best_weight = None
        for key, weight in weights.items():
            current[key] = now = current[key] + weight
            if best_weight is None or now > best_weight:  # strict: first added wins a tie
                best, best_weight = key, now
        current[best] = best_weight - self._total
        return best

    @property
    def current_weights(self) -> dict[Hashable, int]:
        """Each key's current weight: how far it is behind its share, times the total."""
        return dict(self._current)

    def _changed(self) -> None:
        current = getattr(self, "_current", {})
        self._current = {key: current.get(key, 0) for key in self._weights}
        self._total = sum(self._weights.values())


class _State(enum.Enum):
    OPEN = "open"  # put() accepts items
    CLOSING = "closing"  # close() called: put() refuses, the workers drain the queues
    CLOSED = "closed"  # the workers have ended


@dataclasses.dataclass(frozen=True, slots=True)
class TenantStats:
    """One tenant's queue, as ``WeightedDispatcher.stats()`` reports it."""

    weight: int
    queued: int  # waiting in its queue
    served: int  # handler calls that ended, failed ones included
    failed: int  # handler calls that raised


class WeightedDispatcher:
    """Serve several queues (tenants) ``concurrency`` items at a time, by weight.

        async def handle(tenant, item): ...

        async with WeightedDispatcher({"a": 3, "b": 1}, handle, concurrency=4) as d:
            await d.put("a", item)
        # leaving the block: every item put is handled, then the workers end

    Each time a worker is free it picks a tenant by smooth weighted round robin over
    the tenants with queued items only: while both are busy "a" gets 3 of every 4
    slots; a tenant with nothing queued earns no credit, and gets its share again as
    soon as it has items. A failing handler is logged and counted; the worker goes on.
    ``maxsize`` bounds each tenant's queue (``put`` waits for room); 0 is unbounded.
    """

    def __init__(
        self,
        weights: Mapping[Hashable, int],
        handler: Callable[[Any, Any], Awaitable[Any]],
        *,
        concurrency: int = 1,
        maxsize: int = 0,
        name: str = "dispatcher",
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, not {concurrency!r}")
        if not weights:
            raise ValueError("WeightedDispatcher needs at least one tenant")
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 0:
            raise ValueError(f"maxsize must be an integer >= 0 (0: unbounded), not {maxsize!r}")
        self.weights = {tenant: _check_weight(tenant, w) for tenant, w in weights.items()}
        self.concurrency = concurrency
        self.maxsize = maxsize
        self.name = name
        self._handler = handler
        self._queues: dict[Hashable, deque[Any]] = {t: deque() for t in self.weights}
        self._room = {t: asyncio.Event() for t in self.weights}  # set while not full
        for event in self._room.values():
            event.set()
        self._served = dict.fromkeys(self.weights, 0)
        self._failed = dict.fromkeys(self.weights, 0)
        self._wrr = SmoothWRR()  # holds exactly the tenants whose queue is not empty
        # One permit per queued item, plus one per worker once closing: a worker that
        # gets a permit and finds every queue empty knows it is time to stop.
        self._permits = asyncio.Semaphore(0)
        self._state = _State.OPEN
        self._started = False
        self._workers: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._done = asyncio.Event()

    def __repr__(self) -> str:
        queued = sum(map(len, self._queues.values()))
        return (f"<WeightedDispatcher {self.name!r} {self._state.value}, "
                f"{queued} queued, concurrency {self.concurrency}>")

    def stats(self) -> dict[Hashable, TenantStats]:
        """Each tenant's weight, queue length, and handler calls ended and failed."""
        return {t: TenantStats(self.weights[t], len(self._queues[t]), self._served[t],
                               self._failed[t]) for t in self.weights}

    async def put(self, tenant: Hashable, item: Any) -> None:
        """Queue ``item`` for ``tenant``, waiting for room when its queue is full."""
        if tenant not in self._queues:
            raise KeyError(f"{self!r} has no tenant {tenant!r}")
        queue = self._queues[tenant]
        while True:
            if self._state is not _State.OPEN:
                raise RuntimeError(f"{self!r} is closed: refused an item for {tenant!r}")
            if not self.maxsize or len(queue) < self.maxsize:
                break
            self._room[tenant].clear()
            await self._room[tenant].wait()
        queue.append(item)
        if len(queue) == 1:
            self._wrr.add(tenant, self.weights[tenant])  # back in the rotation at 0 credit
        self._permits.release()

    async def run(self) -> None:
        """Serve until ``close()`` and every queued item is handled (or until cancelled)."""
        self._start()
        await self._serve()

    async def _serve(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                for n in range(self.concurrency):
                    task = tg.create_task(self._work(), name=f"{self.name}-worker-{n}")
                    self._workers.add(task)
        finally:
            self._workers.clear()
            self._state = _State.CLOSED
            self._done.set()
            for event in self._room.values():
                event.set()  # put() calls waiting for room wake up and are refused

    async def close(self) -> None:
        """Refuse new items, serve every queued one, wait for the workers to end."""
        if asyncio.current_task() in self._workers:
            raise RuntimeError(f"{self!r}: a handler cannot close its own dispatcher "
                               "(it would wait for itself)")
        if self._state is _State.OPEN:
            self._state = _State.CLOSING
            for _ in range(self.concurrency):
                self._permits.release()
            for event in self._room.values():
                event.set()  # waiting put() calls wake up and are refused
        if not self._started:
            await self.run()  # nobody serves the queues yet: drain them here
        await self._done.wait()

    def _start(self) -> None:
        if self._started:
            raise RuntimeError(f"{self!r} is already running or has run")
        self._started = True

    async def __aenter__(self) -> Self:
        self._start()
        self._runner = asyncio.create_task(self._serve(), name=f"{self.name}-run")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        assert self._runner is not None
        if exc_type is not None:  # the body failed: stop serving now, drop the rest
            self._runner.cancel()
            await asyncio.wait({self._runner})
            if not self._runner.cancelled() and self._runner.exception() is not None:
                logger.error("%r failed", self, exc_info=self._runner.exception())
            return
        await self.close()
        await self._runner  # a bug in the workers surfaces here

    async def _work(self) -> None:
        while True:
            await self._permits.acquire()
            if not self._wrr:
                return  # closing, and nothing left to serve
            tenant = next(self._wrr)
            queue = self._queues[tenant]
            item = queue.popleft()
            if not queue:
                self._wrr.remove(tenant)  # idle tenants earn no credit
            self._room[tenant].set()
            try:
                await self._handler(tenant, item)
            except asyncio.CancelledError:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    raise
                self._failed[tenant] += 1  # the handler's own CancelledError
                logger.error("%r: handler cancelled itself on an item of %r", self, tenant)
            except Exception:
                self._failed[tenant] += 1
                logger.exception("%r: handler failed on an item of %r", self, tenant)
            self._served[tenant] += 1


def _check_weight(key: Hashable, weight: object) -> int:
    # bool is an int subclass, and True would silently mean 1: refuse it. A float, even
    # 2.0, is refused too: the gcd and the cycle lengths are defined on integers.
    if isinstance(weight, bool) or not isinstance(weight, numbers.Integral) or weight <= 0:
        raise ValueError(f"the weight of {key!r} must be a positive integer, not {weight!r}")
    return int(weight)
