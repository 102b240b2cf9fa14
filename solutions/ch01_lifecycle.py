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
            # The hand-back runs in a task of its own, which this worker holds and
            # waits for to the end. shield() keeps a further cancel() away from it;
            # the cancel still lands here, and we go on waiting. (`await
            # shield(...)` once, then `raise`, would end the worker at the second
            # cancel and leave the requeue running unowned: asyncio.run() cancels
            # such orphans on its way out, and the job is lost.)
            handing_back = asyncio.ensure_future(requeue(job))
            while not handing_back.done():
                try:
                    await asyncio.shield(handing_back)
                except asyncio.CancelledError:
                    continue  # asked again to stop: we are stopping, once the job is back
            handing_back.result()  # a failed hand-back is an error, not a silent loss
            raise  # the first CancelledError goes on: the task ends cancelled
        done.append(job)


async def cancel_and_wait(
    task: asyncio.Task[Any], *, msg: str | None = None, timeout_s: float | None = None
) -> bool:
    """Exercise 1.2: cancel ``task``, wait for its cleanup, True if it ended cancelled.

    If the caller is cancelled while it waits, it keeps waiting until the task has
    ended (or ``timeout_s`` has passed), absorbing further cancels, and then raises
    CancelledError: it never returns or raises while the task it cancelled still
    runs. This is what ``asyncio.TaskGroup`` does on exit.
    """
    if not task.done():
        task.cancel(msg)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        ours: asyncio.CancelledError | None = None  # a cancel aimed at the caller
        while not task.done():
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                break
            # asyncio.wait(), not `await task`: awaiting a cancelled task raises *its*
            # CancelledError here, where nothing tells it from a cancel aimed at us
            # (and a cancel aimed at us would also be passed on into the task, cutting
            # its cleanup short). wait() never raises the task's outcome and never
            # cancels it, so a CancelledError out of it is ours.
            try:
                await asyncio.wait({task}, timeout=left)
            except asyncio.CancelledError as exc:
                ours = ours or exc  # remember it, and keep waiting for the cleanup
        if ours is not None:
            raise ours  # no uncancel(): the caller's cancelling() stays as the cancels left it
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
    me = asyncio.current_task()
    asked_to_stop_at_start = me.cancelling() if me is not None else 0
    restarts = 0
    delay_s = min(base_delay_s, max_delay_s)
    while True:
        try:
            return await make_child()
        except Exception:  # not BaseException: a CancelledError is never a crash
            if restarts >= max_restarts:
                raise  # the last error, at once
            if me is not None and me.cancelling() > asked_to_stop_at_start:
                # We were cancelled and the child's cleanup crashed (its error replaced
                # the CancelledError): that is no crash to restart. Compare with the
                # count on entry, as asyncio.timeout does: a leftover request from
                # before we started is not ours to act on.
                raise
        # Outside the except block: a cancel during this sleep propagates as is,
        # not chained to the old crash.
        await asyncio.sleep(delay_s)
        restarts += 1
        # Doubled and capped, never computed as base * 2**restarts: that overflows a
        # float (OverflowError) after about 1,024 restarts.
        delay_s = min(delay_s * 2, max_delay_s)
