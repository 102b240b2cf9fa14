"""Exercise 0.1 answered with ``wait(FIRST_EXCEPTION)`` and ``cancel()``, never awaiting.

The losers are cancelled, but the error comes out while they are still cleaning up.
"""

import asyncio

__all__ = ["gather_in_order"]

EXERCISE = "0.1"
EXPECT = "still cleaning up"


async def _await(aw):
    return await aw


async def gather_in_order(*aws):
    tasks = [asyncio.create_task(_await(aw)) for aw in aws]
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in pending:
        task.cancel()
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
    return [task.result() for task in tasks]
