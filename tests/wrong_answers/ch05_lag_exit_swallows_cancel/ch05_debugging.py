"""Exercise 5.2 answered with ``contextlib.suppress(CancelledError)`` around the wait for
the monitor's task: a cancel aimed at the code leaving the block is swallowed too."""

import asyncio
import contextlib

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)
from solutions.ch05_debugging import LagMonitor as _Solved

EXERCISE = "5.2"
EXPECT = "swallowed"


class LagMonitor(_Solved):
    async def __aexit__(self, *exc_info):
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
