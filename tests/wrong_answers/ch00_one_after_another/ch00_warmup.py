"""Exercise 0.1 answered by awaiting one after another: nothing runs at the same time."""

__all__ = ["gather_in_order"]

EXERCISE = "0.1"
EXPECT = "awaited one after another"


async def gather_in_order(*aws):
    return [await aw for aw in aws]
