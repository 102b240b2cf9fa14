"""Exercise 3.4 answered with a refill that never stops at capacity: after a long idle
time, a burst far larger than capacity goes through."""

import asyncio

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import TokenBucket as _Solved

EXERCISE = "3.4"
EXPECT = "never pile up above capacity"


class TokenBucket(_Solved):
    def _refill(self):
        now = asyncio.get_running_loop().time()
        if self._updated_at is not None:
            self._tokens += (now - self._updated_at) * self._rate
        self._updated_at = now
