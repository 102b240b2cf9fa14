"""Exercise 2.3 with child(budget_s) = now + budget_s: a child can outlive its parent."""

import asyncio

from solutions.ch02_timeouts import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "2.3"
EXPECT = "min(now + budget_s, parent.when)"


class Deadline:
    def __init__(self, when):
        self._when = when
        self._scopes = {}

    @classmethod
    def after(cls, seconds):
        return cls(asyncio.get_running_loop().time() + seconds)

    @property
    def when(self):
        return self._when

    def remaining(self):
        return max(0.0, self._when - asyncio.get_running_loop().time())

    @property
    def expired(self):
        return self.remaining() <= 0

    def child(self, budget_s):
        return type(self)(asyncio.get_running_loop().time() + budget_s)

    async def __aenter__(self):
        scope = asyncio.timeout_at(self._when)
        await scope.__aenter__()
        self._scopes.setdefault(asyncio.current_task(), []).append(scope)
        return self

    async def __aexit__(self, *exc_info):
        return await self._scopes[asyncio.current_task()].pop().__aexit__(*exc_info)
