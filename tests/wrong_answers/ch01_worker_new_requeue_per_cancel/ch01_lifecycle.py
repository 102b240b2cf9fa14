"""Exercise 1.1 retrying `shield(requeue(job))` on each cancel: every retry hands it back again."""

import asyncio

from solutions.ch01_lifecycle import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "1.1"
EXPECT = "exactly once"


async def worker(jobs, done, requeue):
    while True:
        job = await jobs.get()
        try:
            await asyncio.sleep(job)
        except asyncio.CancelledError:
            while True:
                try:
                    await asyncio.shield(requeue(job))  # a new requeue() each time round
                    break
                except asyncio.CancelledError:
                    continue
            raise
        done.append(job)
