"""Exercise 1.3 that stops on any `cancelling() > 0`: a request left over from before
supervise() began stops every restart."""

import asyncio

from solutions.ch01_lifecycle import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "1.3"
EXPECT = "value on entry"


async def supervise(make_child, *, max_restarts, base_delay_s, max_delay_s):
    restarts = 0
    delay_s = min(base_delay_s, max_delay_s)
    while True:
        try:
            return await make_child()
        except Exception:
            if restarts >= max_restarts or asyncio.current_task().cancelling():
                raise
        await asyncio.sleep(delay_s)
        restarts += 1
        delay_s = min(delay_s * 2, max_delay_s)
