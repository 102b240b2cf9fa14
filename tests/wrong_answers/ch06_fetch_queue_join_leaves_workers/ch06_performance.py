"""Exercise 6.1 answered with the asyncio documentation's queue example: workers, then
`await queue.join()`, then cancel the workers. Cancelled while it waits in join(), it
never reaches the cancel: the workers go on fetching after fetch_all() has ended."""

import asyncio

from solutions.ch06_performance import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "6.1"
EXPECT = "left running"


async def fetch_all(fetch, items, *, limit):
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit!r}")
    queue = asyncio.Queue()
    for pair in enumerate(items):
        queue.put_nowait(pair)
    results = [None] * queue.qsize()
    errors = []

    async def worker():
        while True:
            i, item = await queue.get()
            try:
                results[i] = await fetch(item)
            except Exception as exc:
                errors.append(exc)
            finally:
                queue.task_done()

    workers = [asyncio.create_task(worker()) for _ in range(limit)]
    await queue.join()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    if errors:
        raise errors[0]
    return results
