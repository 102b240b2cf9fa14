"""Exercise 3.4 answered as the old hint said ("a cancelled waiter removes itself"): a
waiter cancelled after it was served, before it could resume, keeps its tokens: lost."""

import asyncio

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import TokenBucket as _Solved

EXERCISE = "3.4"
EXPECT = "cancelled just as it was served"


class TokenBucket(_Solved):
    async def acquire(self, n=1):
        if self.try_acquire(n):
            return
        future = asyncio.get_running_loop().create_future()
        waiter = (n, future)
        self._waiters.append(waiter)
        self._serve()
        try:
            await future
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            self._serve()
            raise
