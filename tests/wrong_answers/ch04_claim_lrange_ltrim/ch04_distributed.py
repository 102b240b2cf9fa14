"""Exercise 4.1 answered as the article does: LRANGE then LTRIM, two steps, not one."""

from solutions.ch04_distributed import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "4.1"
EXPECT = "LRANGE then LTRIM"


async def claim(redis, source, processing, n):
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n!r}")
    jobs = await redis.lrange(source, 0, n - 1)
    await redis.ltrim(source, len(jobs), -1)
    if jobs:
        await redis.rpush(processing, *jobs)
    return list(jobs)
