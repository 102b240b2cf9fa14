"""Exercise 2.1 as the old hint had it: one `await asyncio.wait(tasks)` in `finally`.

Cancelled while it waits for the losers' cleanup, that wait raises at once: it leaves
with racers still running.
"""

import asyncio

from solutions.ch02_timeouts import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "2.1"
EXPECT = "a single `await asyncio.wait(tasks)` raises at once"


async def first_within(deadline_s, *aws):
    if not aws:
        raise ValueError("first_within() needs at least one awaitable")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        pending = set(tasks)
        while pending:
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise TimeoutError(f"no result within {deadline_s} s")
            done, pending = await asyncio.wait(
                pending, timeout=remaining_s, return_when=asyncio.FIRST_COMPLETED
            )
            for task in tasks:
                if task in done and not task.cancelled() and task.exception() is None:
                    return task.result()
        raise ExceptionGroup("all failed", [task.exception() for task in tasks])
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled():
                task.exception()
