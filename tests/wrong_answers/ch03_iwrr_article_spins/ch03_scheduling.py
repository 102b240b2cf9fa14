"""Exercise 3.2 answered with the article's round robin: the weights are used up, then
``while True`` spins for ever. The grader must stop it with a message, not hang."""

import math

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "3.2"
EXPECT = "loops forever"


class InterleavedWRR:
    def __init__(self, weights):
        if not weights:
            raise ValueError("no keys")
        for key, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0:
                raise ValueError(f"bad weight for {key!r}: {weight!r}")
        self.credit = dict(weights)
        self.keys = list(weights)
        self.gcd = math.gcd(*weights.values())
        self.index = -1

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            self.index = (self.index + 1) % len(self.keys)
            key = self.keys[self.index]
            if self.credit[key] >= self.gcd:
                self.credit[key] -= self.gcd
                return key

    def take(self, n):
        return [next(self) for _ in range(n)]
