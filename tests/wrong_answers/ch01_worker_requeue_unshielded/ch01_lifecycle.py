"""Exercise 1.1 with a plain `await requeue(job)`: a second cancel cuts the requeue itself."""

import asyncio

from solutions.ch01_lifecycle import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "1.1"
EXPECT = "the job was lost"


async def worker(jobs, done, requeue):
    while True:
        job = await jobs.get()
        try:
            await asyncio.sleep(job)
        except asyncio.CancelledError:
            await requeue(job)
            raise
        done.append(job)
