"""Exercise 2.2 catching BaseException: "retry whatever goes wrong", a cancel included."""

import asyncio
import random

from solutions.ch02_timeouts import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "2.2"
EXPECT = "catch Exception, not BaseException"


async def retry(fn, *, attempts, base_s, max_s, retry_on, rand=random.random,
                sleep=asyncio.sleep):
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    errors = []
    cap_s = min(max_s, base_s)
    for n in range(1, attempts + 1):
        try:
            return await fn()
        except BaseException as exc:
            if not isinstance(exc, (retry_on, asyncio.CancelledError)):
                raise
            errors.append(exc)
        if n < attempts:
            await sleep(rand() * cap_s)
            cap_s = min(max_s, cap_s * 2)
    raise BaseExceptionGroup(f"{attempts} attempts failed", errors)
