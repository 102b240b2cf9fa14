"""Exercise 3.3 answered with ``join()`` as ``asyncio.gather`` of the running jobs:
cancelling join() cancels the jobs it waits for."""

import asyncio

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import PriorityPool as _Solved

EXERCISE = "3.3"
EXPECT = "join() only waits"


class PriorityPool(_Solved):
    async def join(self):
        while self._running or self._queue:
            await asyncio.gather(*self._running, return_exceptions=True)
            await asyncio.sleep(0)  # the done callbacks start the next jobs
