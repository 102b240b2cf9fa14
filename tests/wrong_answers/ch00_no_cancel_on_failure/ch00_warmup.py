"""Exercise 0.1 answered with ``create_task`` for each, then awaiting each in turn.

They run at the same time, but when one fails the others are left running.
"""

import asyncio

__all__ = ["gather_in_order"]

EXERCISE = "0.1"
EXPECT = "not cancelled"


async def _await(aw):
    return await aw


async def gather_in_order(*aws):
    tasks = [asyncio.create_task(_await(aw)) for aw in aws]
    return [await task for task in tasks]
