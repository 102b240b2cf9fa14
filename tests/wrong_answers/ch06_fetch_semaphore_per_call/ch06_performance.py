"""Exercise 6.1 answered with a Semaphore made inside each call: every call has a
semaphore of its own, so nothing is ever bounded."""

import asyncio

from solutions.ch06_performance import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "6.1"
EXPECT = "over the limit"


async def fetch_all(fetch, items, *, limit):
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit!r}")

    async def one(item):
        async with asyncio.Semaphore(limit):
            return await fetch(item)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(item)) for item in items]
    return [task.result() for task in tasks]
