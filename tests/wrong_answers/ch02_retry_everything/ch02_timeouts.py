"""Exercise 2.2 that ignores retry_on: every Exception is retried, a bug included."""

import asyncio
import random

from solutions.ch02_timeouts import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "2.2"
EXPECT = "not in retry_on"


async def retry(fn, *, attempts, base_s, max_s, retry_on, rand=random.random,
                sleep=asyncio.sleep):
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    errors = []
    cap_s = min(max_s, base_s)
    for n in range(1, attempts + 1):
        try:
            return await fn()
        except Exception as exc:  # "transient or not, try again"
            errors.append(exc)
        if n < attempts:
            await sleep(rand() * cap_s)
            cap_s = min(max_s, cap_s * 2)
    raise ExceptionGroup(f"{attempts} attempts failed", errors)
