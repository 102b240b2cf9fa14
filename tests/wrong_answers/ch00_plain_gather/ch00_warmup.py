"""Exercise 0.1 answered with plain ``asyncio.gather``: a failure leaves the others running."""

import asyncio

__all__ = ["gather_in_order"]

EXERCISE = "0.1"
EXPECT = "cancelled"


async def gather_in_order(*aws):
    return list(await asyncio.gather(*aws))
