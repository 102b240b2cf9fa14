"""Exercise 1.3 with `min(base_delay_s * 2**restarts, max_delay_s)`: OverflowError past ~1,024."""

import asyncio

from solutions.ch01_lifecycle import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "1.3"
EXPECT = "overflow"


async def supervise(make_child, *, max_restarts, base_delay_s, max_delay_s):
    me = asyncio.current_task()
    at_start = me.cancelling()
    restarts = 0
    while True:
        try:
            return await make_child()
        except Exception:
            if restarts >= max_restarts or me.cancelling() > at_start:
                raise
        await asyncio.sleep(min(base_delay_s * 2**restarts, max_delay_s))
        restarts += 1
