"""Exercise 4.1 with LPOP then RPUSH: each step atomic, the pair not; a crash between loses jobs."""

from solutions.ch04_distributed import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "4.1"
EXPECT = "in neither list"


async def claim(redis, source, processing, n):
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n!r}")
    jobs = await redis.lpop(source, n) or []
    if jobs:
        await redis.rpush(processing, *jobs)
    return list(jobs)
