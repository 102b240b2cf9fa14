"""Exercise 2.1 with `asyncio.as_completed(timeout=...)`: the losers are left running."""

import asyncio

from solutions.ch02_timeouts import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "2.1"
EXPECT = "still running"


async def first_within(deadline_s, *aws):
    if not aws:
        raise ValueError("first_within() needs at least one awaitable")
    if deadline_s <= 0:
        raise TimeoutError
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    errors = {}
    for next_one in asyncio.as_completed(tasks, timeout=deadline_s):
        try:
            return await next_one
        except Exception as exc:
            errors[len(errors)] = exc
    raise ExceptionGroup("all failed", list(errors.values()))
