"""Chapter 2: timeouts and deadlines, solved."""

from __future__ import annotations

__all__ = ["Deadline", "first_within", "retry"]

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def first_within(deadline_s: float, *aws: Awaitable[Any]) -> Any:
    """Exercise 2.1: the first success within ``deadline_s``; the rest cancelled and awaited.

    Not ``asyncio.wait_for()`` around the race: its cancel would reach only the
    coroutine doing the waiting, and the racers' tasks would be left running.
    """
    if not aws:
        raise ValueError("first_within() needs at least one awaitable")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    try:
        pending = set(tasks)
        while pending:
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise TimeoutError(f"no result within {deadline_s} s")
            done, pending = await asyncio.wait(
                pending, timeout=remaining_s, return_when=asyncio.FIRST_COMPLETED
            )
            for task in tasks:  # in the order given: a tie goes to the first
                if task in done and not task.cancelled() and task.exception() is None:
                    return task.result()
        raise ExceptionGroup(
            f"all {len(tasks)} awaitables failed", [task.exception() for task in tasks]
        )
    finally:
        # Every way out passes here: a winner, all failed, the deadline, our own
        # cancel. The return value or exception waits until the losers have ended.
        for task in tasks:
            task.cancel()
        # wait(), not gather(): it never raises what a loser raised in its cleanup.
        await asyncio.wait(tasks)
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: no "Task exception was never retrieved"


async def retry(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    base_s: float,
    max_s: float,
    rand: Callable[[], float] = random.random,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> T:
    """Exercise 2.2: retry ``fn()`` with full-jitter exponential backoff.

    ``fn()`` is awaited right here, not in a task: a cancel of retry() goes straight
    into the attempt, and no attempt can outlive retry().
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    errors: list[Exception] = []
    cap_s = min(max_s, base_s)  # doubled step by step: base_s * 2**n overflows a float
    for n in range(1, attempts + 1):
        try:
            return await fn()
        except Exception as exc:  # not BaseException: a CancelledError is never retried
            errors.append(exc)
        if n < attempts:
            # Outside the except block: a cancel during the wait propagates as is,
            # not chained to the attempt's error.
            await sleep(rand() * cap_s)
            cap_s = min(max_s, cap_s * 2)
    raise ExceptionGroup(f"{attempts} attempts failed", errors)


class Deadline:
    """A deadline on the loop's clock, with child budgets that never outlive it.

        deadline = Deadline.after(2.0)
        async with deadline:
            await fetch_user(deadline.child(0.5))   # at most 0.5 s of the 2
    """

    def __init__(self, when: float) -> None:
        self._when = when
        # Each `async with` gets a fresh asyncio.timeout_at(): one can be entered only
        # once. A stack, so that entering this deadline again inside its own block
        # works too (in one task: entered from two tasks at once, their exits could
        # pop each other's scope; course_lib.timeouts.Deadline keeps one per task).
        self._scopes: list[asyncio.Timeout] = []

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(asyncio.get_running_loop().time() + seconds)

    @property
    def when(self) -> float:
        return self._when

    def remaining(self) -> float:
        return max(0.0, self._when - asyncio.get_running_loop().time())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def child(self, budget_s: float) -> Deadline:
        now = asyncio.get_running_loop().time()
        return type(self)(min(now + budget_s, self._when))

    async def __aenter__(self) -> Deadline:
        # timeout_at() turns only its own cancel into TimeoutError (it counts cancel
        # requests with uncancel()): an outer cancel, or an outer deadline firing,
        # passes through unchanged.
        scope = asyncio.timeout_at(self._when)
        await scope.__aenter__()
        self._scopes.append(scope)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        return await self._scopes.pop().__aexit__(*exc_info)

    def __repr__(self) -> str:
        return f"Deadline(when={self._when:g})"
