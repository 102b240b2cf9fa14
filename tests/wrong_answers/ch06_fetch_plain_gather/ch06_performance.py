"""Exercise 6.1 answered with a plain gather: every call at once, whatever the limit."""

import asyncio

from solutions.ch06_performance import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "6.1"
EXPECT = "over the limit"


async def fetch_all(fetch, items, *, limit):
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit!r}")
    return list(await asyncio.gather(*(fetch(item) for item in items)))
