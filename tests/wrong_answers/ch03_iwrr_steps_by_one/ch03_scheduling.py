"""Exercise 3.2 answered stepping the level down by 1, not by the gcd of the weights."""

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import InterleavedWRR as _Solved

EXERCISE = "3.2"
EXPECT = "gcd"


class InterleavedWRR(_Solved):
    def __init__(self, weights):
        super().__init__(weights)
        self._step = 1
