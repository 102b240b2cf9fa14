"""Exercise 3.3 answered with a close() that awaits the cancelled jobs with
``asyncio.gather``: their CancelledError comes out of close(), as if it had been cancelled."""

import asyncio
import heapq

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import PriorityPool as _Solved

EXERCISE = "3.3"
EXPECT = "raised CancelledError though nobody cancelled it"


class PriorityPool(_Solved):
    async def close(self):
        if not self._closed:
            self._closed = True
            while self._queue:
                _, _, coro, future = heapq.heappop(self._queue)
                coro.close()
                future.cancel()
            for task in self._running:
                task.cancel()
        await asyncio.gather(*self._running)
        self._idle.set()
