"""Exercise 2.1 that keeps waiting through a cancel during cleanup, then forgets the cancel.

Nothing is left running, but a cancelled first_within() returns (or raises
TimeoutError) as if nobody had asked it to stop.
"""

import asyncio

from solutions.ch02_timeouts import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "2.1"
EXPECT = "let the CancelledError go on"


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
        pending = set(tasks)
        while pending:
            try:
                _, pending = await asyncio.wait(pending)
            except asyncio.CancelledError:
                pass  # "keep waiting": and the cancel is lost
        for task in tasks:
            if not task.cancelled():
                task.exception()
