"""Run a coroutine on a loop of its own: from a script, a notebook cell, or a coroutine.

``asyncio.run()`` refuses to start while a loop is already running in the
thread, and a Jupyter kernel always has one. Two ways around it:

    from course_lib.runtime import run, run_in_thread
    result = run(main(), timeout_s=5)                    # blocks the calling thread
    result = await run_in_thread(main(), timeout_s=5)    # the caller's loop runs on

``run()`` is for synchronous code. With no running loop it behaves like
``asyncio.run()``. Inside a running loop (a notebook cell) it runs the
coroutine on a *fresh* loop in a helper thread and blocks the calling thread
until it ends: the loop of that thread, the kernel's in a notebook, stalls,
and every task on it (a heartbeat, another cell's background work) waits
until ``run()`` returns. ``run_in_thread()`` is the awaitable form for
coroutines: the same fresh loop in a helper thread, while the caller's loop
keeps running. Both leave the kernel's own loop untouched, unlike
``nest_asyncio``, which patches asyncio for the whole process (chapter 0
measures what that costs).

In a notebook, plain top-level ``await main()`` is usually what you want. A
loop of its own is for code that must not share the kernel's loop: a uvloop
run (``loop_factory=uvloop.new_event_loop``), or a benchmark.
"""

from __future__ import annotations

__all__ = ["run", "run_in_thread"]

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
logger = logging.getLogger(__name__)


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

    It blocks the calling thread until the coroutine is done. From inside a
    running loop the new loop lives in a helper thread, and the running loop
    stalls meanwhile: no other task on it runs until run() returns. From a
    coroutine, ``await run_in_thread(...)`` instead. Interrupting the wait
    (Ctrl-C, or the kernel's interrupt button) cancels the coroutine, waits for
    its cleanup and re-raises ``KeyboardInterrupt``.
    """
    if not inspect.iscoroutine(coro):
        _refuse(coro, "run")
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


async def run_in_thread(
    coro: Coroutine[Any, Any, T],
    *,
    timeout_s: float | None = None,
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
) -> T:
    """Run ``coro`` on a fresh loop in a helper thread; the caller's loop runs on.

        rows = await run_in_thread(benchmark(), loop_factory=uvloop.new_event_loop)

    Returns what ``coro`` returns, raises what it raises; ``timeout_s`` and
    ``loop_factory`` as in ``run()``. Context variables of the awaiting task
    reach the coroutine. Cancelling the awaiting task cancels the coroutine in
    its thread and waits for its cleanup to end, further cancels included, then
    raises CancelledError: nothing is left running in the helper thread (the
    course's rule, see ``course_lib.lifecycle``). Unlike ``run()``, Ctrl-C is not
    handled here: in a script, asyncio.run() turns it into a cancel of the main
    task, which reaches the coroutine through that rule.
    """
    if not inspect.iscoroutine(coro):
        _refuse(coro, "run_in_thread")
    caller_loop = asyncio.get_running_loop()
    main = _with_timeout(coro, timeout_s)
    try:
        loop = (loop_factory or asyncio.new_event_loop)()
    except BaseException:
        main.close()
        coro.close()
        raise
    task = loop.create_task(main)  # copies the awaiting task's context
    ended = caller_loop.create_future()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            with asyncio.Runner(loop_factory=lambda: loop) as runner:
                outcome["result"] = runner.run(_wait(task))
        except BaseException as exc:  # handed to the caller's loop, never lost
            outcome["error"] = exc
        finally:
            # After the Runner has closed the loop (async generators and the
            # default executor shut down too): once `ended` is set, nothing runs.
            try:
                caller_loop.call_soon_threadsafe(_set_done, ended)
            except RuntimeError:  # the caller's loop is closed: nobody is waiting
                pass

    thread = threading.Thread(target=target, name="course_lib.runtime.run_in_thread")
    thread.start()
    ours: asyncio.CancelledError | None = None
    while not ended.done():
        try:
            # shield(): a cancel of the caller must not cancel `ended`, which only
            # the helper thread may finish.
            await asyncio.shield(ended)
        except asyncio.CancelledError as exc:
            if ours is None:
                ours = exc
                with contextlib.suppress(RuntimeError):  # closed: the work is over
                    loop.call_soon_threadsafe(task.cancel)
    thread.join()  # the thread has returned or is returning: no real wait
    if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
        coro.close()  # cancelled before its first step: no "never awaited" warning
    if ours is not None:
        error = outcome.pop("error", None)
        if error is not None and not isinstance(error, asyncio.CancelledError):
            logger.error("run_in_thread(): the cancelled coroutine failed in its cleanup",
                         exc_info=error)
        del error
        raise ours
    if "error" in outcome:
        error = outcome.pop("error")
        try:
            raise error
        finally:
            del error  # no reference cycle through the traceback
    return outcome["result"]


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _refuse(obj: object, fn: str) -> None:
    if inspect.iscoroutinefunction(obj):
        name = getattr(obj, "__qualname__", repr(obj))
        raise TypeError(
            f"{fn}() needs a coroutine, not the function {name}: call it, {fn}({name}(...))"
        )
    if inspect.isawaitable(obj):
        raise TypeError(
            f"{fn}() needs a coroutine object, got {type(obj).__name__}: a task or future "
            "belongs to the loop that made it; await it there instead"
        )
    raise TypeError(f"{fn}() needs a coroutine, got {type(obj).__name__}: {obj!r}")


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
