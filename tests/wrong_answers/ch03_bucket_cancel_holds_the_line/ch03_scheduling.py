"""Exercise 3.4 answered with a cancelled waiter that leaves the line but wakes nobody:
the small request behind a cancelled big one waits for the big one's timer."""

import asyncio

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import TokenBucket as _Solved

EXERCISE = "3.4"
EXPECT = "a cancelled waiter leaves the line"


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
            if future.done() and not future.cancelled():
                self._tokens = min(self._capacity, self._tokens + n)
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise
