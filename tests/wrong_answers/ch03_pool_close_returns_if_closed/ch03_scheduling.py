"""Exercise 3.3 answered with a close() that returns at once when the pool is closed
already: after a close() that was cancelled, close() again does not wait for the jobs."""

import asyncio
import heapq

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import PriorityPool as _Solved

EXERCISE = "3.3"
EXPECT = "do not return early"


class PriorityPool(_Solved):
    async def close(self):
        if self._closed:
            return  # closed already: nothing to do (wrong: its jobs may still be ending)
        self._closed = True
        while self._queue:
            _, _, coro, future = heapq.heappop(self._queue)
            coro.close()
            future.cancel()
        running = list(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        self._idle.set()
