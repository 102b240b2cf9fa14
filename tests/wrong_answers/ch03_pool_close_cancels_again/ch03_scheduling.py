"""Exercise 3.3 answered with a close() that cancels the running jobs on every call:
a second close() (another task shutting down) cuts their cleanup short.

The course's own model answer did this until the two-closers check found it.
"""

import asyncio
import heapq

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import PriorityPool as _Solved

EXERCISE = "3.3"
EXPECT = "second close() cancelled the jobs again"


class PriorityPool(_Solved):
    async def close(self):
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
