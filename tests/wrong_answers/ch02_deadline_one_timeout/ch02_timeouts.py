"""Exercise 2.3 with one asyncio.timeout_at() made in __init__ and entered every time.

A Timeout object can be entered only once: the second `async with` raises RuntimeError.
"""

import asyncio

from solutions.ch02_timeouts import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "2.3"
EXPECT = "entered a second time"


class Deadline:
    def __init__(self, when):
        self._when = when
        self._scope = asyncio.timeout_at(when)

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
        await self._scope.__aenter__()
        return self

    async def __aexit__(self, *exc_info):
        return await self._scope.__aexit__(*exc_info)
