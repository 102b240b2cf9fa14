"""Exercise 3.3 answered with a job's task that, when its job ends, awaits the next job:
the chain of awaits grows by one frame per job, and 1,000 jobs hit RecursionError."""

import asyncio
import heapq

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import PriorityPool as _Solved

EXERCISE = "3.3"
EXPECT = "RecursionError"


class PriorityPool(_Solved):
    def _start_next(self):
        while self._queue and len(self._running) < self._concurrency and not self._closed:
            _, _, coro, future = heapq.heappop(self._queue)
            task = asyncio.create_task(self._chain(coro, future))
            self._running[task] = future
            task.add_done_callback(self._done)
        if not self._queue and not self._running:
            self._idle.set()

    async def _chain(self, coro, future):
        try:
            result = await coro
        except Exception as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)
        if self._queue and not self._closed:  # this worker goes on with the next job
            _, _, coro, future = heapq.heappop(self._queue)
            await self._chain(coro, future)

    def _done(self, task):
        self._running.pop(task)
        if not task.cancelled():
            task.exception()
        self._start_next()
