"""Exercise 4.2 that settles a CancelledError like any error: a stopped job spends an attempt."""

from solutions.ch04_distributed import *  # noqa: F403  (the other exercises, solved)
from solutions.ch04_distributed import Decision

EXERCISE = "4.2"
EXPECT = "handed back"


def decide(attempt, max_attempts, error, *, retry_on, base_s=1.0, max_s=60.0):
    if attempt < 1 or max_attempts < 1:
        raise ValueError("attempt and max_attempts count from 1")
    if error is None:
        return Decision("ack")
    what = f"{type(error).__name__}: {error}"
    if not isinstance(error, retry_on):
        return Decision("failed", 0.0, what)
    if attempt >= max_attempts:
        return Decision("dead", 0.0, what)
    return Decision("retry", min(max_s, base_s * 2.0 ** min(attempt - 1, 1000)), what)
