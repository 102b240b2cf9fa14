"""Exercise 5.2 answered with wake-ups on a schedule fixed at the start (due = start +
k * interval): after a 0.2 s block the monitor catches up, and every wake-up due during
the block is recorded late, so one block becomes twenty late samples."""

import asyncio
import itertools

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)
from solutions.ch05_debugging import LagMonitor as _Solved

EXERCISE = "5.2"
EXPECT = "one block counted"


class LagMonitor(_Solved):
    async def _sample(self):
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k in itertools.count(1):
            due = start + k * self.interval_s
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.samples.append(max(0.0, loop.time() - due))
