"""Exercise 4.1 with ``LREM processing 0 job``: acking one job removes its twin too."""

from solutions.ch04_distributed import *  # noqa: F403  (the other exercises, solved)
from solutions.ch04_distributed import claim  # noqa: F401

EXERCISE = "4.1"
EXPECT = "remove one copy"


async def ack(redis, processing, job):
    return await redis.lrem(processing, 0, job) >= 1
