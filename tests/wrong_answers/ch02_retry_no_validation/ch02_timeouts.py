"""Exercise 2.2 with no check of attempts: attempts=0 gives ValueError only by accident.

`ExceptionGroup("0 attempts failed", [])` raises ValueError itself (a group cannot be
empty), so the code looks validated and is not.
"""

import asyncio
import random

from solutions.ch02_timeouts import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "2.2"
EXPECT = "came from ExceptionGroup"


async def retry(fn, *, attempts, base_s, max_s, retry_on, rand=random.random,
                sleep=asyncio.sleep):
    errors = []
    cap_s = min(max_s, base_s)
    for n in range(1, attempts + 1):
        try:
            return await fn()
        except retry_on as exc:
            errors.append(exc)
        if n < attempts:
            await sleep(rand() * cap_s)
            cap_s = min(max_s, cap_s * 2)
    raise ExceptionGroup(f"{attempts} attempts failed", errors)
