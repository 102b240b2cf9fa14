"""Exercise 0.1 answered with ``wait(FIRST_EXCEPTION)``, careful on failure only.

On a child's failure it cancels and awaits the others; but when the caller itself is
cancelled, ``asyncio.wait`` just stops waiting and the children are left running.
"""

import asyncio

__all__ = ["gather_in_order"]

EXERCISE = "0.1"
EXPECT = "children still running"


async def _await(aw):
    return await aw


async def gather_in_order(*aws):
    tasks = [asyncio.create_task(_await(aw)) for aw in aws]
    if not tasks:
        return []
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    if pending:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
    return [task.result() for task in tasks]
