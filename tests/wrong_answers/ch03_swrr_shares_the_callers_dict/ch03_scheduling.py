"""Exercise 3.1 answered keeping the caller's dict: when they change it, the cycle breaks."""

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "3.1"
EXPECT = "keep a copy of the weights"


class SmoothWRR:
    def __init__(self, weights):
        if not weights:
            raise ValueError("no keys")
        for key, weight in weights.items():
            if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0:
                raise ValueError(f"bad weight for {key!r}: {weight!r}")
        self.weights = weights  # the caller's own dict
        self.current = dict.fromkeys(weights, 0)

    def __iter__(self):
        return self

    def __next__(self):
        total = sum(self.weights.values())
        best = next(iter(self.weights))
        for key, weight in self.weights.items():
            self.current[key] = self.current.get(key, 0) + weight
            if self.current[key] > self.current[best]:
                best = key
        self.current[best] -= total
        return best

    def take(self, n):
        return [next(self) for _ in range(n)]
