"""Chapter 1: the task lifecycle, cancellation done right.

Edit the functions below, then run ``check("1.1")``, ``check("1.2")`` and
``check("1.3")`` in notebooks/01_task_lifecycle.ipynb.
"""

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
    """Exercise 1.1: process jobs until cancelled, and never lose the job in hand.

    Forever: take a job from ``jobs`` (a duration in seconds), process it with
    ``await asyncio.sleep(job)``, then append it to ``done``. The worker runs in a
    task, and the only way it stops is ``task.cancel()``.

    When it is cancelled in the middle of a job, that job is not done and must not
    be lost: hand it back with ``await requeue(job)`` (which takes a while, like a
    network call), wait until that has finished, and only then let the
    CancelledError go on. Never swallow it: whoever cancelled the worker must see
    its task end *cancelled*, not return normally.

    - Cancelled while waiting for a job: there is nothing to hand back (a job
      already finished is in ``done``, not in hand); just end cancelled.
    - A second (third, ...) ``cancel()`` that arrives while ``requeue(job)`` is still
      running must not lose the job either: the hand-back runs to its end, exactly
      once, and the worker ends (cancelled) only after it has finished. A worker
      that ends earlier leaves the hand-back running unowned, and ``asyncio.run()``
      cancels such leftovers on its way out: the job would be lost.
    """
    raise NotImplementedError("Exercise 1.1: worker")


async def cancel_and_wait(
    task: asyncio.Task[Any], *, msg: str | None = None, timeout_s: float | None = None
) -> bool:
    """Exercise 1.2: cancel ``task``, wait until it has really ended, say how it ended.

    Return True when the task ended cancelled, False when it caught the
    CancelledError and returned anyway. Return only once the task is done: its
    cleanup (``except CancelledError:`` / ``finally:`` blocks that await) included.

    - ``msg`` is passed to ``task.cancel()``, so it shows in the task's CancelledError.
    - A task that ends by raising another exception (its cleanup failed): raise that
      exception here, as ``await task`` would.
    - A task already done is not cancelled: say at once how it ended (or raise its
      exception).
    - ``timeout_s``: if the task is still running that many seconds after the
      cancel (it swallows cancellation, or its cleanup hangs), raise TimeoutError
      with the task's name (``task.get_name()``) in the message instead of hanging.
    - If the *caller* of cancel_and_wait() is cancelled while it waits, it keeps
      waiting until the task has ended (at most ``timeout_s``, when given), absorbing
      further cancels the same way, and then raises CancelledError: it never returns
      or raises while the task it cancelled still runs (``asyncio.TaskGroup`` does the
      same on exit). Do not ``uncancel()``: the caller's ``cancelling()`` count stays
      as the cancels left it. Careful: ``await task`` raises the task's
      CancelledError in your code, where nothing tells it from a cancel aimed at you.
    """
    raise NotImplementedError("Exercise 1.2: cancel_and_wait")


async def supervise(
    make_child: Callable[[], Awaitable[T]],
    *,
    max_restarts: int,
    base_delay_s: float,
    max_delay_s: float,
) -> T:
    """Exercise 1.3: run a child, restart it when it crashes, with exponential backoff.

    ``make_child()`` returns a new awaitable (a coroutine) each time it is called:
    a coroutine can be awaited only once, so every restart needs a fresh one.

    - The child returns a value: return it.
    - The child crashes (raises an Exception): wait, then start a new one. The
      waits grow: ``base_delay_s``, then twice that, then four times..., never
      more than ``max_delay_s``, however many restarts (thousands included).
    - After ``max_restarts`` restarts, the next crash is final: raise that last
      error at once (no wait first). ``max_restarts=0`` never restarts.
    - supervise() itself is cancelled: the running child gets the cancel, its
      cleanup finishes, then supervise() ends cancelled. The same during a wait
      between restarts: no new child is started after a cancel.
    - A CancelledError is not a crash, even one the child raises by itself:
      never restart on it, let it go on.
    - supervise() is cancelled and the child's cleanup then crashes (its exception
      replaces the CancelledError): no restart after a cancel; raise that error.
      A cancel request left over from before supervise() began is not a cancel of
      supervise(): crashes after it are restarted as usual.
    """
    raise NotImplementedError("Exercise 1.3: supervise")
