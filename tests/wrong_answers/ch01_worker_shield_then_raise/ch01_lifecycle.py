"""Exercise 1.1 answered with shield-then-raise (the old hint): a second cancel loses the job.

`await asyncio.shield(requeue(job)); raise` ends the worker at the second cancel while
the requeue runs on, owned by nobody; asyncio.run() cancels it on the way out.
"""

import asyncio

from solutions.ch01_lifecycle import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "1.1"
EXPECT = "second cancel"


async def worker(jobs, done, requeue):
    while True:
        job = await jobs.get()
        try:
            await asyncio.sleep(job)
        except asyncio.CancelledError:
            await asyncio.shield(requeue(job))
            raise
        done.append(job)
