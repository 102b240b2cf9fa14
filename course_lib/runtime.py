"""Run a coroutine to completion from anywhere: a script, or a notebook cell.

``asyncio.run()`` refuses to start while a loop is already running in the
thread, and a Jupyter kernel always has one. ``run()`` works in both places:

    from course_lib.runtime import run
    result = run(main(), timeout_s=5)

With no running loop it behaves like ``asyncio.run()``. Inside a running loop
(a notebook cell, or sync code called from a coroutine) it runs the coroutine
on a *fresh* loop in a helper thread and blocks the caller until it ends. The
kernel's own loop stays untouched, unlike ``nest_asyncio``, which patches
asyncio for the whole process (chapter 0 measures what that costs).

In a notebook, plain top-level ``await main()`` is usually what you want.
``run()`` is for code that must not share the kernel's loop: a uvloop run
(``run(main(), loop_factory=uvloop.new_event_loop)``), a benchmark, or a
blocking call made from synchronous code.
"""

from __future__ import annotations

__all__ = ["run"]

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(
    coro: Coroutine[Any, Any, T],
    *,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    timeout_s: float | None = None,
) -> T:
    """Run ``coro`` on a new event loop and return its result.

    Raises whatever ``coro`` raises. With ``timeout_s``, the work is cancelled
    when time runs out, its cleanup (``except``/``finally`` blocks) is awaited,
    and ``TimeoutError`` is raised. ``loop_factory`` picks the loop
    (``uvloop.new_event_loop``, for example).

    From inside a running loop the new loop lives in a helper thread: the
    caller's thread blocks until the coroutine is done. Interrupting that wait
    (Ctrl-C, or the kernel's interrupt button) cancels the coroutine, waits for
    its cleanup and re-raises ``KeyboardInterrupt``.
    """
    if not inspect.iscoroutine(coro):
        _refuse(coro)
    main = _with_timeout(coro, timeout_s)
    try:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                return runner.run(main)
        return _run_in_thread(main, loop_factory)
    finally:
        # When the loop could not even start (a failing loop_factory), close
        # both coroutines so the error is not followed by "never awaited".
        if inspect.getcoroutinestate(main) == inspect.CORO_CREATED:
            main.close()
            coro.close()


def _refuse(obj: object) -> None:
    if inspect.iscoroutinefunction(obj):
        name = getattr(obj, "__qualname__", repr(obj))
        raise TypeError(
            f"run() needs a coroutine, not the function {name}: call it, run({name}(...))"
        )
    if inspect.isawaitable(obj):
        raise TypeError(
            f"run() needs a coroutine object, got {type(obj).__name__}: a task or future "
            "belongs to the loop that made it; await it there instead"
        )
    raise TypeError(f"run() needs a coroutine, got {type(obj).__name__}: {obj!r}")


async def _with_timeout(coro: Coroutine[Any, Any, T], timeout_s: float | None) -> T:
    # asyncio.timeout cancels the task running this coroutine and waits for the
    # coroutine's own cleanup before it raises TimeoutError: no half-finished
    # work is left behind when run() returns.
    async with asyncio.timeout(timeout_s):
        return await coro


def _run_in_thread(
    main: Coroutine[Any, Any, T],
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None,
) -> T:
    # Loop and task are made here, before the thread starts, so that an
    # interrupt arriving at any moment finds a task to cancel. The task copies
    # this thread's context: context variables set by the caller (a request id,
    # a log level) are visible to the coroutine, as with asyncio.run().
    loop = (loop_factory or asyncio.new_event_loop)()
    task = loop.create_task(main)
    outcome: dict[str, Any] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            with asyncio.Runner(loop_factory=lambda: loop) as runner:
                outcome["result"] = runner.run(_wait(task))
        except BaseException as exc:  # handed to the caller's thread, never lost
            outcome["error"] = exc
        finally:
            finished.set()

    thread = threading.Thread(target=target, name="course_lib.runtime.run")
    try:
        thread.start()
        # An Event, not thread.join(): on 3.11 a KeyboardInterrupt landing in
        # join() can mark the thread stopped while it still runs (the bpo-45274
        # fix releases a lock it does not own), and a second join() then
        # returns before the cleanup is done.
        finished.wait()
    except KeyboardInterrupt:
        # Ctrl-C, or the kernel's interrupt button: cancel the work, let its
        # cleanup run to the end, then report the interrupt.
        if thread.ident is None:  # interrupted before the thread existed
            task.cancel()
            main.close()
            loop.close()
            raise
        loop.call_soon_threadsafe(task.cancel)
        finished.wait()
        raise
    finally:
        if finished.is_set():
            thread.join()
    if "error" in outcome:
        error = outcome.pop("error")
        try:
            raise error
        finally:
            del error  # no reference cycle through the traceback
    return outcome["result"]


async def _wait(task: asyncio.Task[T]) -> T:
    return await task
