"""Exercise 3.2 answered keeping the caller's dict: when they change it, the cycle breaks."""

import math

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "3.2"
EXPECT = "keep a copy of the weights"


class InterleavedWRR:
    def __init__(self, weights):
        if not weights:
            raise ValueError("no keys")
        for key, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0:
                raise ValueError(f"bad weight for {key!r}: {weight!r}")
        self.weights = weights  # the caller's own dict
        self.i, self.cw = -1, 0

    def __iter__(self):
        return self

    def __next__(self):
        keys = list(self.weights)
        while True:
            self.i = (self.i + 1) % len(keys)
            if self.i == 0:
                self.cw -= math.gcd(*self.weights.values())
                if self.cw <= 0:
                    self.cw = max(self.weights.values())
            if self.weights[keys[self.i]] >= self.cw:
                return keys[self.i]

    def take(self, n):
        return [next(self) for _ in range(n)]
