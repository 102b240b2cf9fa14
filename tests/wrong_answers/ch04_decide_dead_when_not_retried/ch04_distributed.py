"""Exercise 4.2 that says "dead" for an error it does not retry: the old brief's one word.

The library tells the two apart: out of attempts is DEAD (a dead letter, for a human);
an error not worth retrying is FAILED (an answer for the caller, no dead letter).
"""

from solutions.ch04_distributed import *  # noqa: F403  (the other exercises, solved)
from solutions.ch04_distributed import Decision

EXERCISE = "4.2"
EXPECT = "expected 'failed', not 'dead'"


def decide(attempt, max_attempts, error, *, retry_on, base_s=1.0, max_s=60.0):
    if attempt < 1 or max_attempts < 1:
        raise ValueError("attempt and max_attempts count from 1")
    if error is None:
        return Decision("ack")
    if not isinstance(error, Exception):
        raise TypeError("not a failure: hand the job back")
    what = f"{type(error).__name__}: {error}"
    if not isinstance(error, retry_on) or attempt >= max_attempts:
        return Decision("dead", 0.0, what)
    return Decision("retry", min(max_s, base_s * 2.0 ** min(attempt - 1, 1000)), what)
