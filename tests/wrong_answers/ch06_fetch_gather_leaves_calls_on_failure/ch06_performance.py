"""Exercise 6.1 answered with one shared Semaphore and a plain gather: bounded and fast,
but when a call fails, gather raises at once and the other calls go on running."""

import asyncio

from solutions.ch06_performance import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "6.1"
EXPECT = "left running"


async def fetch_all(fetch, items, *, limit):
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit!r}")
    gate = asyncio.Semaphore(limit)

    async def one(item):
        async with gate:
            return await fetch(item)

    return list(await asyncio.gather(*(one(item) for item in items)))
