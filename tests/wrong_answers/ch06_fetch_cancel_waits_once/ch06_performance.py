"""Exercise 6.1 answered with a worker pool cleaned up by hand: asyncio.wait() for the
workers, and in `finally:` cancel them and wait for them once. A second cancel, while
the calls clean up, ends that wait early: fetch_all() is gone, its calls are not."""

import asyncio

from solutions.ch06_performance import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "6.1"
EXPECT = "left running: cancelled twice"


async def fetch_all(fetch, items, *, limit):
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit!r}")
    todo = list(enumerate(items))
    results = [None] * len(todo)
    queue = iter(todo)

    async def worker():
        for i, item in queue:
            results[i] = await fetch(item)

    workers = [asyncio.create_task(worker()) for _ in range(min(limit, len(todo)))]
    if not workers:
        return results
    try:
        done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
    finally:
        for w in workers:
            w.cancel()
        await asyncio.wait(workers)
    return results
