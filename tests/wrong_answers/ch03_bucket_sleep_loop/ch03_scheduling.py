"""Exercise 3.4 answered with the common sleep loop: each waiter sleeps until its own
tokens should be there. Whoever wakes first takes them: small requests overtake a big
one, and the order of waiters is not kept."""

import asyncio

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "3.4"
EXPECT = "first come, first served"


class TokenBucket:
    def __init__(self, rate_per_s, capacity):
        self.rate, self.capacity = rate_per_s, capacity
        self.tokens, self.updated_at = float(capacity), None
        self.waiting = 0

    def _refill(self):
        now = asyncio.get_running_loop().time()
        if self.updated_at is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated_at) * self.rate)
        self.updated_at = now

    def _check(self, n):
        if not 1 <= n <= self.capacity:
            raise ValueError(f"n must be between 1 and {self.capacity}, not {n}")

    def try_acquire(self, n=1):
        self._check(n)
        self._refill()
        if self.waiting or self.tokens < n - 1e-9:
            return False
        self.tokens -= n
        return True

    async def acquire(self, n=1):
        self._check(n)
        self.waiting += 1
        try:
            while True:
                self._refill()
                if self.tokens >= n - 1e-9:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)
        finally:
            self.waiting -= 1
