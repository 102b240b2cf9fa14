"""Exercise 2.3 hand-made with call_at + task.cancel(), turning *every* cancel into TimeoutError.

An outer cancel, or an outer deadline firing, comes out as this deadline's TimeoutError:
code that catches TimeoutError then carries on, and the task never stops.
"""

import asyncio

from solutions.ch02_timeouts import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "2.3"
EXPECT = "own cancel"


class Deadline:
    def __init__(self, when):
        self._when = when
        self._handles = []

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
        loop = asyncio.get_running_loop()
        self._handles.append(loop.call_at(self._when, asyncio.current_task().cancel))
        return self

    async def __aexit__(self, exc_type, exc, tb):
        self._handles.pop().cancel()
        if exc_type is asyncio.CancelledError:
            raise TimeoutError from exc
        return None
