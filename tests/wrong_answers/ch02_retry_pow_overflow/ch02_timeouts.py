"""Exercise 2.2 with the brief's formula typed in as is: `base_s * 2 ** (n - 1)` overflows.

Past n = 1,024 the int is too large for a float: OverflowError after many failures.
"""

import asyncio
import random

from solutions.ch02_timeouts import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "2.2"
EXPECT = "OverflowError"


async def retry(fn, *, attempts, base_s, max_s, retry_on, rand=random.random,
                sleep=asyncio.sleep):
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    errors = []
    for n in range(1, attempts + 1):
        try:
            return await fn()
        except retry_on as exc:
            errors.append(exc)
        if n < attempts:
            await sleep(rand() * min(max_s, base_s * 2 ** (n - 1)))
    raise ExceptionGroup(f"{attempts} attempts failed", errors)
