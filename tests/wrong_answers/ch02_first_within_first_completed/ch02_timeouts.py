"""Exercise 2.1 the article's way: one `wait(FIRST_COMPLETED)`, cancel the rest, walk away.

The first to *complete* wins, a failure included, and the losers are never awaited.
"""

import asyncio

from solutions.ch02_timeouts import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "2.1"
EXPECT = "a failure does not win"


async def first_within(deadline_s, *aws):
    if not aws:
        raise ValueError("first_within() needs at least one awaitable")
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    done, pending = await asyncio.wait(
        tasks, timeout=max(deadline_s, 0), return_when=asyncio.FIRST_COMPLETED
    )
    for task in pending:
        task.cancel()
    if not done:
        raise TimeoutError
    return done.pop().result()
