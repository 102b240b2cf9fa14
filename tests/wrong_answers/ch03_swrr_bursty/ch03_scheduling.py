"""Exercise 3.1 answered with a plain round robin: each key its weight's picks in a row.

The shares per cycle are right ('aaaaabc' for 5, 1, 1); the picks are bunched.
"""

import itertools

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import SmoothWRR as _Solved

EXERCISE = "3.1"
EXPECT = "bunched"


class SmoothWRR(_Solved):
    def __init__(self, weights):
        super().__init__(weights)
        self._picks = itertools.cycle([k for k, w in self._weights.items() for _ in range(w)])

    def __next__(self):
        return next(self._picks)
