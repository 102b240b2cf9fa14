"""Exercise 5.2 answered with a task created in __aenter__ and not let run: its first
sleep starts only when the body first awaits, so a block on the body's first line is
never seen."""

import asyncio

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)
from solutions.ch05_debugging import LagMonitor as _Solved

EXERCISE = "5.2"
EXPECT = "first line"


class LagMonitor(_Solved):
    async def __aenter__(self):
        self._task = asyncio.create_task(self._sample())
        return self
