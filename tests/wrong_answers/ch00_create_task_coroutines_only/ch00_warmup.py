"""Exercise 0.1 answered with a TaskGroup that hands each awaitable to ``create_task``.

Right for coroutines; a Future or a Task passed in raises TypeError.
"""

import asyncio

__all__ = ["gather_in_order"]

EXERCISE = "0.1"
EXPECT = "takes coroutines only"


async def gather_in_order(*aws):
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(aw) for aw in aws]
    return [task.result() for task in tasks]
