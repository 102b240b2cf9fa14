"""Exercise 3.1 answered with ``>=``: on a tie the key inserted last wins, not the first."""

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import SmoothWRR as _Solved

EXERCISE = "3.1"
EXPECT = "on a tie, the key inserted first wins"


class SmoothWRR(_Solved):
    def __next__(self):
        best = None
        for key, weight in self._weights.items():
            self._current[key] += weight
            if best is None or self._current[key] >= self._current[best]:
                best = key
        self._current[best] -= self._total
        return best
