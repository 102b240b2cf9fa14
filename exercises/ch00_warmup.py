"""Chapter 0: a warm-up exercise.

Edit the function below, then run ``check("0.1")`` in notebooks/00_start_here.ipynb.
"""

from __future__ import annotations

__all__ = ["gather_in_order"]

from collections.abc import Awaitable
from typing import Any


async def gather_in_order(*aws: Awaitable[Any]) -> list[Any]:
    """Exercise 0.1: run every awaitable in ``aws`` at the same time.

    ``aws`` may hold coroutines, tasks and futures. Return their results as a
    list, in the order they were given (not the order they finished). If one
    of them fails, the others must not be left running: cancel them, wait
    until they have finished, and let the error out. The same when
    ``gather_in_order`` itself is cancelled while it waits.
    """
    raise NotImplementedError("Exercise 0.1: gather_in_order")
