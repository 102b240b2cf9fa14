"""Chapter 1: the task lifecycle, cancellation done right, solved."""

from __future__ import annotations

__all__ = ["cancel_and_wait", "supervise", "worker"]

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def worker(
    jobs: asyncio.Queue[float],
    done: list[float],
    requeue: Callable[[float], Awaitable[None]],
) -> None:
    """Exercise 1.1: process jobs until cancelled; a cancelled job is handed back.

    The try block covers the job in hand and nothing else: a cancel while waiting
    in ``jobs.get()`` simply propagates, and a job already finished is never
    handed back twice.
    """
    while True:
        job = await jobs.get()
        try:
            await asyncio.sleep(job)
        except asyncio.CancelledError:
            # shield(): a second cancel() during the hand-back must not cut it short
            # (the job would be lost). It ends this task at once instead, while the
            # shielded requeue runs to completion on its own.
            await asyncio.shield(requeue(job))
            raise  # the same CancelledError goes on: the task ends cancelled
        done.append(job)


async def cancel_and_wait(
    task: asyncio.Task[Any], *, msg: str | None = None, timeout_s: float | None = None
) -> bool:
    """Exercise 1.2: cancel ``task``, wait for its cleanup, True if it ended cancelled."""
    if not task.done():
        task.cancel(msg)
        # asyncio.wait(), not `await task`: awaiting a cancelled task raises *its*
        # CancelledError here, where nothing tells it from a cancel aimed at us (and
        # a cancel aimed at us would also be passed on into the task). wait() never
        # raises the task's outcome and never cancels it, so a CancelledError out of
        # it is ours and propagates untouched; its timeout needs no cancel either.
        await asyncio.wait({task}, timeout=timeout_s)
        if not task.done():
            raise TimeoutError(
                f"task {task.get_name()!r} still running {timeout_s} s after cancel(): "
                "it swallows CancelledError, or its cleanup hangs"
            )
    if task.cancelled():
        return True
    task.result()  # raises the task's own exception, if it failed
    return False


async def supervise(
    make_child: Callable[[], Awaitable[T]],
    *,
    max_restarts: int,
    base_delay_s: float,
    max_delay_s: float,
) -> T:
    """Exercise 1.3: restart a crashing child with exponential backoff.

    The child is awaited right here, not in a task of its own: a cancel of
    supervise() is delivered straight into the child, the child's cleanup runs
    before the CancelledError reaches us, and no child can outlive us.
    """
    restarts = 0
    while True:
        try:
            return await make_child()
        except Exception:  # not BaseException: a CancelledError is never a crash
            if restarts >= max_restarts:
                raise  # the last error, at once
        # Outside the except block: a cancel during this sleep propagates as is,
        # not chained to the old crash.
        await asyncio.sleep(min(base_delay_s * 2**restarts, max_delay_s))
        restarts += 1
