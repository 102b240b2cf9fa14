"""Exercise 0.1 answered with ``gather(return_exceptions=True)``: every child runs to its end.

The first error is raised, but only once the others have finished: nothing is cancelled.
"""

import asyncio

__all__ = ["gather_in_order"]

EXERCISE = "0.1"
EXPECT = "waited for, not cancelled"


async def gather_in_order(*aws):
    results = await asyncio.gather(*aws, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)
