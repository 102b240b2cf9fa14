"""Exercise 5.2 answered with ``task.cancel(); await task`` in __aexit__: the monitor's
own CancelledError comes out of the block, though nobody cancelled the code using it."""

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)
from solutions.ch05_debugging import LagMonitor as _Solved

EXERCISE = "5.2"
EXPECT = "nobody cancelled it"


class LagMonitor(_Solved):
    async def __aexit__(self, *exc_info):
        self._task.cancel()
        await self._task
