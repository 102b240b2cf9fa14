"""Exercise 1.3 catching BaseException: a CancelledError is taken for a crash and restarted."""

import asyncio

from solutions.ch01_lifecycle import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "1.3"
EXPECT = "not a crash"


async def supervise(make_child, *, max_restarts, base_delay_s, max_delay_s):
    restarts = 0
    delay_s = min(base_delay_s, max_delay_s)
    while True:
        try:
            return await make_child()
        except BaseException:
            if restarts >= max_restarts:
                raise
        await asyncio.sleep(delay_s)
        restarts += 1
        delay_s = min(delay_s * 2, max_delay_s)
