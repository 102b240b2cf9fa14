"""Exercise 6.1 answered as the article's scheduler runs its jobs: one after another.
Never over the limit, and never near it either: 50 calls of 0.1 s take 5 s."""

from solutions.ch06_performance import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "6.1"
EXPECT = "too slow"


async def fetch_all(fetch, items, *, limit):
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit!r}")
    return [await fetch(item) for item in items]
