"""Chapter 2: timeouts and deadlines.

Edit the code below, then run ``check("2.1")``, ``check("2.2")`` and ``check("2.3")``
in notebooks/02_timeouts.ipynb.
"""

from __future__ import annotations

__all__ = ["Deadline", "first_within", "retry"]

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def first_within(deadline_s: float, *aws: Awaitable[Any]) -> Any:
    """Exercise 2.1: race the awaitables, keep the first success, clean up the rest.

    Run every awaitable in ``aws`` at the same time (each in a task of its own).
    Return the result of the first one to *succeed*, if that happens within
    ``deadline_s`` seconds. Before returning, cancel all the others and wait until
    they have really ended, their cleanup (``finally:`` blocks that await) included:
    when first_within() returns or raises, none of its tasks is still running.
    That holds even if first_within() is cancelled while it waits for that cleanup,
    once or several times: it keeps waiting until every task has ended, and only
    then raises CancelledError (as ``asyncio.TaskGroup`` does on exit).

    - One that fails (raises an Exception) does not win: keep waiting for the others.
    - All of them fail: raise ``ExceptionGroup`` holding their errors, one per
      awaitable, in the order the awaitables were given.
    - No success within ``deadline_s``: cancel everything, wait for it to end, then
      raise TimeoutError. ``deadline_s <= 0`` has already passed: TimeoutError.
    - first_within() itself is cancelled: cancel everything, wait for it to end,
      then let the CancelledError go on.
    - What the losers return or raise once cancelled is dropped: it never changes
      the result. Dropped, but looked at (``task.exception()``): asyncio logs "Task
      exception was never retrieved" for a failed task whose error nobody asked for.
    - No awaitables at all: raise ValueError.
    """
    raise NotImplementedError("Exercise 2.1: first_within")


async def retry(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    base_s: float,
    max_s: float,
    retry_on: type[Exception] | tuple[type[Exception], ...],
    rand: Callable[[], float] = random.random,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """Exercise 2.2: retry a failing call, with exponential backoff and full jitter.

    Each attempt is ``await fn()``: call ``fn()`` again for every attempt (a
    coroutine can be awaited only once). The first attempt that returns: return
    its value, at once.

    - ``retry_on`` (required): the Exception class, or tuple of classes, that the
      caller calls transient, e.g. ``ConnectionError``. Only those are retried; any
      other error goes out at once, as it is (retrying a bad request only adds load).
    - An attempt raises one of ``retry_on``: after the n-th failure (n = 1, 2, ...) wait
      ``rand() * min(max_s, base_s * 2 ** (n - 1))`` seconds, then try again. Wait
      with ``await sleep(delay)``, the function you are given, and call ``rand()``
      exactly once per wait. (Full jitter: a random wait between 0 and the cap, so
      that many clients retrying at once spread out.)
      ``attempts`` may be in the thousands: after 1,100 failures the cap is still
      ``max_s``, with no OverflowError on the way.
    - After ``attempts`` failures in all, give up at once (no wait after the last
      one): raise ``ExceptionGroup(f"{attempts} attempts failed", errors)``, with
      every attempt's error in the order they happened.
    - Only Exceptions are ever retried. A CancelledError, whether retry() itself is
      cancelled (during an attempt or during a wait) or ``fn()`` raises it, goes on
      at once: no further attempt, no further wait.
    - ``attempts < 1``: raise ValueError with a message that names ``attempts``
      (``f"attempts must be at least 1, not {attempts}"``), before calling ``fn()``.
    """
    raise NotImplementedError("Exercise 2.2: retry")


class Deadline:
    """Exercise 2.3: a deadline on the loop's clock, with child budgets that never outlive it.

        deadline = Deadline.after(2.0)          # 2 s from now
        async with deadline:                    # TimeoutError when it passes
            await fetch_user(deadline.child(0.5))   # at most 0.5 s of the 2
            await fetch_orders(deadline)            # whatever is left

    - ``Deadline(when)``: the deadline at ``when``, an absolute time on the running
      loop's clock (``asyncio.get_running_loop().time()``).
      ``Deadline.after(seconds)``: ``seconds`` from now.
    - ``.when``: that absolute time. ``.remaining()``: the seconds left, never below
      0. ``.expired`` (a property, not a method): True once the time has come.
    - ``.child(budget_s)``: a new Deadline, ``budget_s`` seconds from now, but never
      later than its parent: it ends at ``min(now + budget_s, parent.when)``.
    - ``async with deadline:`` runs the block under ``asyncio.timeout_at(deadline.when)``
      and gives the deadline itself (``as d``). When the deadline passes, the block is
      cancelled and TimeoutError comes out; any other cancellation (the task is
      cancelled from outside, an outer deadline fires) goes on as it is. Entered
      when already expired: TimeoutError at the first await inside.
    - The same Deadline can be entered again after its block has ended, and inside
      its own block.
    - One Deadline is shared: a request hands it to several tasks at once (a fan-out),
      each entering it with ``async with``, and their blocks end in any order. Each
      task's block must still end at the deadline, whatever the others do.
    """

    def __init__(self, when: float) -> None:
        raise NotImplementedError("Exercise 2.3: Deadline")

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        raise NotImplementedError("Exercise 2.3: Deadline")

    @property
    def when(self) -> float:
        raise NotImplementedError("Exercise 2.3: Deadline")

    def remaining(self) -> float:
        raise NotImplementedError("Exercise 2.3: Deadline")

    @property
    def expired(self) -> bool:
        raise NotImplementedError("Exercise 2.3: Deadline")

    def child(self, budget_s: float) -> Deadline:
        raise NotImplementedError("Exercise 2.3: Deadline")

    async def __aenter__(self) -> Deadline:
        raise NotImplementedError("Exercise 2.3: Deadline")

    async def __aexit__(self, *exc_info: object) -> bool | None:
        raise NotImplementedError("Exercise 2.3: Deadline")
