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

    It never returns or raises while one of its tasks still runs. Cancelled while it
    waits for their cleanup (even again and again), it keeps waiting until every one
    has ended, then raises CancelledError, as ``asyncio.TaskGroup`` does on exit.
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
        await _cancel_and_wait(tasks)


async def _cancel_and_wait(tasks: list[asyncio.Future[Any]]) -> None:
    """Cancel ``tasks`` once, then wait until every one has ended, even through our own cancel.

    A single ``await asyncio.wait(tasks)`` is not enough: cancelled while it waits, it
    raises at once and leaves the tasks running behind our back.
    """
    for task in tasks:
        task.cancel()  # once: a second cancel would cut short a cleanup already running
    cancelled: asyncio.CancelledError | None = None
    pending = {task for task in tasks if not task.done()}
    while pending:
        try:
            # wait(), not gather(): it never raises what a loser raised in its cleanup.
            _, pending = await asyncio.wait(pending)
        except asyncio.CancelledError as exc:
            cancelled = exc  # remembered, and passed on once they have all ended
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: no "Task exception was never retrieved"
    if cancelled is not None:
        # No uncancel(): our caller's cancelling() count stays as the cancels left it.
        raise cancelled


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
    """Exercise 2.2: retry ``fn()`` on the errors the caller calls transient, with
    full-jitter exponential backoff.

    ``fn()`` is awaited right here, not in a task: a cancel of retry() goes straight
    into the attempt, and no attempt can outlive retry().
    """
    if attempts < 1:  # checked first: with no attempt, there would be no error to report
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    if not all(isinstance(c, type) and issubclass(c, Exception) for c in classes):
        # A BaseException class would catch CancelledError: a cancel would be retried.
        raise TypeError(f"retry_on takes Exception subclasses only, not {retry_on!r}")
    errors: list[Exception] = []
    cap_s = min(max_s, base_s)  # doubled step by step: base_s * 2**n overflows a float
    for n in range(1, attempts + 1):
        try:
            return await fn()
        except classes as exc:  # only what the caller called transient; never a cancel
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
        # once. Kept per task: one deadline is often shared by several tasks (a request
        # fanning out), and their exits come in any order; one shared list would let a
        # task pop, and disarm, another task's scope. Within one task the exits are
        # nested, so a list per task (a stack) is right, and the same deadline can be
        # entered again inside its own block.
        self._scopes: dict[asyncio.Task[Any] | None, list[asyncio.Timeout]] = {}

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
        self._scopes.setdefault(asyncio.current_task(), []).append(scope)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        task = asyncio.current_task()
        stack = self._scopes[task]
        scope = stack.pop()  # this task's last entered scope: ours
        if not stack:
            del self._scopes[task]  # keep no reference to a finished task
        return await scope.__aexit__(*exc_info)

    def __repr__(self) -> str:
        return f"Deadline(when={self._when:g})"
