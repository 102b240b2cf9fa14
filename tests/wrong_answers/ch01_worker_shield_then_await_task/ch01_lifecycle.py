"""Exercise 1.1 that shields once, then awaits the hand-back task bare: a third cancel
reaches requeue() itself and the job is lost."""

import asyncio

from solutions.ch01_lifecycle import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "1.1"
EXPECT = "third cancel"


async def worker(jobs, done, requeue):
    while True:
        job = await jobs.get()
        try:
            await asyncio.sleep(job)
        except asyncio.CancelledError:
            handing_back = asyncio.ensure_future(requeue(job))
            try:
                await asyncio.shield(handing_back)
            except asyncio.CancelledError:
                await handing_back  # unshielded: the next cancel() cancels the requeue
            raise
        done.append(job)
