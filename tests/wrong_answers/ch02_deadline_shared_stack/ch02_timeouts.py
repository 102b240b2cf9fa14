"""Exercise 2.3 as the old hint had it: the scopes in one list used as a stack.

Two tasks sharing the deadline (a fan-out) pop each other's scope: the one that
leaves first exits, and disarms, the other's timeout; the deadline is silently dropped.
"""

import asyncio

from solutions.ch02_timeouts import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "2.3"
EXPECT = "one list shared by every task"


class Deadline:
    def __init__(self, when):
        self._when = when
        self._scopes = []

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
        return type(self)(min(asyncio.get_running_loop().time() + budget_s, self._when))

    async def __aenter__(self):
        scope = asyncio.timeout_at(self._when)
        await scope.__aenter__()
        self._scopes.append(scope)
        return self

    async def __aexit__(self, *exc_info):
        return await self._scopes.pop().__aexit__(*exc_info)
