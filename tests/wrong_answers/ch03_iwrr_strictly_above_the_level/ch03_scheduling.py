"""Exercise 3.2 answered with ``weight > cw``: the top level picks nobody, and with all
weights equal no key ever qualifies: it spins."""

from solutions.ch03_scheduling import *  # noqa: F403  (the other exercises, solved)
from solutions.ch03_scheduling import InterleavedWRR as _Solved

EXERCISE = "3.2"
EXPECT = "level 4 lets a through"


class InterleavedWRR(_Solved):
    def __next__(self):
        n = len(self._keys)
        while True:
            self._i = (self._i + 1) % n
            if self._i == 0:
                self._cw -= self._step
                if self._cw <= 0:
                    self._cw = self._max
            key = self._keys[self._i]
            if self._weights[key] > self._cw:
                return key
