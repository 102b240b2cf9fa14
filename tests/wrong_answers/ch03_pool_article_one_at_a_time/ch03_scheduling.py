"""Exercise 3.3 answered with the article's design: one runner pops the most urgent
coroutine and awaits it to the end before the next, whatever ``concurrency`` says."""

import asyncio
import heapq
import itertools

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "3.3"
EXPECT = "start the next one right away"


class PriorityPool:
    def __init__(self, concurrency, *, aging_s=None):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency!r}")
        self._aging_s = aging_s
        self._heap = []
        self._counter = itertools.count()
        self._runner = None
        self._closed = False

    def submit(self, coro, *, priority=0):
        if self._closed:
            coro.close()
            raise RuntimeError("closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        key = priority if self._aging_s is None else priority + loop.time() / self._aging_s
        heapq.heappush(self._heap, (key, next(self._counter), coro, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run())
        return future

    async def _run(self):
        while self._heap:
            _, _, coro, future = heapq.heappop(self._heap)
            try:
                result = await coro  # to the end, before the next one even starts
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    async def join(self):
        if self._runner is not None:
            await asyncio.wait({self._runner})

    async def close(self):
        self._closed = True
        while self._heap:
            _, _, coro, future = heapq.heappop(self._heap)
            coro.close()
            future.cancel()
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
            await asyncio.wait({self._runner})
