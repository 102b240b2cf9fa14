"""Exercise 5.2 answered with the time each sleep took as its lag: an idle loop shows
the interval itself (10 ms at interval_s=0.01) as lag, on every sample."""

import asyncio

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)
from solutions.ch05_debugging import LagMonitor as _Solved

EXERCISE = "5.2"
EXPECT = "lag counted the interval"


class LagMonitor(_Solved):
    async def _sample(self):
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(self.interval_s)
            self.samples.append(loop.time() - started)
