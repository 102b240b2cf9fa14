"""Exercise 6.1 answered in batches of `limit`, each gathered: never over the limit,
but each batch waits for its slowest call while the other places stand idle."""

import asyncio

from solutions.ch06_performance import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "6.1"
EXPECT = "stalls"


async def fetch_all(fetch, items, *, limit):
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit!r}")
    items = list(items)
    results = []
    for start in range(0, len(items), limit):
        async with asyncio.TaskGroup() as tg:
            batch = [tg.create_task(fetch(item)) for item in items[start : start + limit]]
        results += [task.result() for task in batch]
    return results
