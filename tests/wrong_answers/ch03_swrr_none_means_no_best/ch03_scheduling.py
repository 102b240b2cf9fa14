"""Exercise 3.1 answered with ``best = None`` as "no best key yet": a key None never wins.

The course's own model answer had this bug until the 120-keys check found it.
"""

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import SmoothWRR as _Solved

EXERCISE = "3.1"
EXPECT = "no best key yet"


class SmoothWRR(_Solved):
    def __next__(self):
        best = None
        for key, weight in self._weights.items():
            self._current[key] += weight
            if best is None or self._current[key] > self._current[best]:
                best = key
        self._current[best] -= self._total
        return best
