"""Task lifecycle: keep tasks alive, cancel them properly, shut down on signals.

One idea: a task you start is a task you must see end.

- ``cancel_and_wait(task)``: cancel, wait for the task's cleanup, say how it ended.
- ``BackgroundTasks``: strong references for fire-and-forget tasks (the loop keeps
  only weak ones), their exceptions logged and collected, a two-step ``close()``
  (grace period, then cancel with a hard deadline) that returns a ``ShutdownReport``.
- ``GracefulShutdown`` turns SIGINT/SIGTERM into a stop request; ``serve()`` waits
  for it, then closes a ``BackgroundTasks`` in two steps.
"""

__all__ = ["BackgroundTasks", "GracefulShutdown", "ShutdownReport", "cancel_and_wait", "serve"]

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Self

logger = logging.getLogger(__name__)


async def cancel_and_wait(
    task: asyncio.Task[Any], *, msg: str | None = None, timeout_s: float | None = None
) -> bool:
    """Cancel ``task``, wait until it has ended (cleanup included), say how it ended.

    Returns True when the task ended cancelled, False when it caught the cancel and
    returned anyway (its value stays in ``task.result()``). When it raised some other
    exception, that exception is raised here, as ``await task`` would: a cleanup that
    fails must not fail silently. A task already done is not cancelled again; its
    outcome is reported (or raised) at once. ``msg`` reaches the task's CancelledError.

    ``timeout_s`` bounds the wait. A task still running then (it suppresses
    cancellation, or its cleanup hangs) raises TimeoutError naming the task; the task
    keeps running, and an exception it ends with later is logged, not lost.

    If the caller is cancelled while waiting, its CancelledError propagates at once;
    the task, already cancelled, finishes its cleanup on its own (failures logged).
    Like TaskGroup and asyncio.timeout, this always calls ``cancel()``: a task already
    cleaning up from an earlier cancel gets another CancelledError at its next await.
    """
    if task is asyncio.current_task():
        raise RuntimeError(f"cancel_and_wait() cannot cancel the task that awaits it: {task!r}")
    if timeout_s is not None and timeout_s < 0:
        raise ValueError(f"timeout_s must be >= 0 or None, not {timeout_s!r}")
    if not task.done():
        task.cancel(msg)
        # asyncio.wait(), not `await task`: awaiting a cancelled task raises *its*
        # CancelledError in our frame, where nothing tells it from a cancel aimed at
        # us. wait() never raises the task's outcome and never cancels the task, so a
        # CancelledError out of it is ours, and our timeout needs no self-cancel (and
        # so no uncancel() bookkeeping).
        try:
            await asyncio.wait({task}, timeout=timeout_s)
        except BaseException:
            task.add_done_callback(_log_if_failed)  # nobody will await it now
            raise
        if not task.done():
            task.add_done_callback(_log_if_failed)
            raise TimeoutError(
                f"task {task.get_name()!r} still running {timeout_s} s after cancel(): it "
                f"suppresses cancellation or its cleanup hangs (at {_where(task)})"
            )
    if task.cancelled():
        return True
    exc = task.exception()
    if exc is not None:
        raise exc
    return False


@dataclasses.dataclass(frozen=True, slots=True)
class ShutdownReport:
    """How the tasks still running when ``close()`` began ended, by task name.

        ShutdownReport(finished=('job-1',), cancelled=('job-2',), failed=(), stuck=(),
                       elapsed_s=2.5)

    ``stuck`` tasks were still running at the hard deadline (they ignore cancellation).
    """

    finished: tuple[str, ...] = ()
    cancelled: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    stuck: tuple[str, ...] = ()
    elapsed_s: float = 0.0

    @property
    def clean(self) -> bool:
        """Nothing failed and nothing is left running."""
        return not (self.failed or self.stuck)

    def __str__(self) -> str:
        parts = (f"{field}=[{', '.join(getattr(self, field))}]" for field in _OUTCOMES)
        return f"{', '.join(parts)} in {self.elapsed_s:.2f} s"


_OUTCOMES = ("finished", "cancelled", "failed", "stuck")


class _State(enum.Enum):
    OPEN = "open"  # spawn() accepts tasks
    CLOSING = "closing"  # close() running: grace period, then cancel; spawn() refuses
    CLOSED = "closed"  # close() returned; stuck tasks may still be running


class BackgroundTasks:
    """Keep fire-and-forget tasks alive until they end, report failures, close in two steps.

        async with BackgroundTasks(name="mailer", grace_s=10) as bg:
            bg.spawn(send_welcome(user), name=f"welcome-{user.id}")
            ...
        print(bg.report)  # leaving the block: grace period, cancel, wait for cleanup

    The event loop holds only weak references to tasks: a task nobody references can
    be garbage-collected mid-flight. ``spawn()`` holds one until the task ends, then
    retrieves its outcome, so a failure is logged (logger ``course_lib.lifecycle``, or
    ``on_error(task, exc)`` instead) and kept in ``errors`` (the last ``max_errors``),
    never reported as "Task exception was never retrieved".
    """

    def __init__(
        self,
        *,
        name: str = "background",
        grace_s: float = 5.0,
        cancel_timeout_s: float | None = 5.0,
        on_error: Callable[[asyncio.Task[Any], BaseException], None] | None = None,
        max_errors: int = 100,
    ) -> None:
        self.name = name
        self.grace_s = grace_s
        self.cancel_timeout_s = cancel_timeout_s
        self.report: ShutdownReport | None = None  # set by close()
        self._on_error = on_error
        self._errors: deque[BaseException] = deque(maxlen=max_errors)  # bounded: no leak
        self._tasks: set[asyncio.Task[Any]] = set()
        self._state = _State.OPEN
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        return f"<BackgroundTasks {self.name!r} {self._state.value}, {len(self)} running>"

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def errors(self) -> tuple[BaseException, ...]:
        """Exceptions of tasks that failed, oldest first (at most ``max_errors``)."""
        return tuple(self._errors)

    def spawn(
        self, coro: Coroutine[Any, Any, Any], *, name: str | None = None
    ) -> asyncio.Task[Any]:
        """Run ``coro`` as a task held here until it ends; refuse once closing."""
        if self._state is not _State.OPEN:
            coro.close()  # refused: close it, or it warns "coroutine ... was never awaited"
            raise RuntimeError(f"{self!r} no longer accepts tasks (refused {name or coro!r})")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            raise RuntimeError(f"{self!r}.spawn() needs a running event loop") from None
        task = loop.create_task(coro, name=name)
        self._tasks.add(task)
        self._idle.clear()
        # Added after creation: a task an eager task factory (3.12+) already finished
        # still gets the callback, scheduled soon, so it leaves the set all the same.
        task.add_done_callback(self._on_done)
        return task

    async def join(self) -> None:
        """Wait until no task is running (tasks spawned meanwhile included)."""
        await self._idle.wait()

    async def close(
        self, grace_s: float | None = None, *, cancel_timeout_s: float | None = None
    ) -> ShutdownReport:
        """Stop accepting tasks, wait up to ``grace_s``, cancel the rest, wait for cleanup.

        The wait after cancel ends at ``cancel_timeout_s`` (a hard deadline); tasks
        still running then are logged with where they hang and reported as ``stuck``
        (still held, so they are not garbage-collected). Returns the report, also kept
        in ``self.report``; a second ``close()`` returns the first one's report. If the
        caller is cancelled meanwhile, every remaining task is cancelled, not awaited.
        """
        if (me := asyncio.current_task()) in self._tasks:
            raise RuntimeError(f"{self!r}: its own task {me.get_name()!r} cannot close it, "
                               "it would wait for itself; request a stop instead")
        if self._state is not _State.OPEN:
            await self._closed.wait()
            assert self.report is not None
            return self.report
        grace_s = self.grace_s if grace_s is None else grace_s
        hard_s = self.cancel_timeout_s if cancel_timeout_s is None else cancel_timeout_s
        if grace_s < 0 or (hard_s is not None and hard_s < 0):
            raise ValueError(f"grace_s and cancel_timeout_s must be >= 0: {grace_s}, {hard_s}")
        self._state = _State.CLOSING
        loop = asyncio.get_running_loop()
        started = loop.time()
        tasks = pending = set(self._tasks)
        cancel_sent = False
        try:
            if pending and grace_s > 0:
                _, pending = await asyncio.wait(pending, timeout=grace_s)
            # In name order, so what the cancelled tasks print or log comes out the
            # same way every run (a set's order changes from run to run).
            for task in sorted(pending, key=asyncio.Task.get_name):
                task.cancel(f"{self!r} closing: grace period of {grace_s} s is over")
            cancel_sent = True
            if pending:
                await asyncio.wait(pending, timeout=hard_s)
        except asyncio.CancelledError:
            # Our caller gave up on the shutdown: cancel what is left, once (a second
            # cancel would cut short cleanups already running), and wait no more.
            for task in () if cancel_sent else pending:
                task.cancel(f"{self!r} closing: close() was cancelled")
            raise
        finally:
            self.report = _report(tasks, round(loop.time() - started, 3))
            self._state = _State.CLOSED
            self._closed.set()
        for task in tasks:
            if not task.done():
                logger.error(
                    "%r: task %r still running %s s after cancel(), at %s",
                    self, task.get_name(), hard_s, _where(task),
                )
        return self.report

    async def __aenter__(self) -> Self:
        if self._state is not _State.OPEN:
            raise RuntimeError(f"{self!r} cannot be entered again")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        # A failing or cancelled body skips the grace period, as a TaskGroup cancels
        # its children at once when its body raises.
        await self.close(0.0 if exc_type is not None else None)

    def _on_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()
        if task.cancelled():
            return
        exc = task.exception()  # retrieving it is what silences "never retrieved"
        if exc is None:
            return
        self._errors.append(exc)
        if self._on_error is None:
            logger.error("%r: task %r failed", self, task.get_name(), exc_info=exc)
            return
        try:
            self._on_error(task, exc)
        except Exception:
            logger.exception("%r: on_error failed on task %r, which raised %r",
                             self, task.get_name(), exc)


class GracefulShutdown:
    """Turn SIGINT/SIGTERM into a stop request to await; a second signal exits at once.

        async with GracefulShutdown() as stop:
            ...start serving...
            print(f"stop requested ({await stop.wait()})")   # e.g. "SIGTERM"
            ...drain...
        # the previous signal handlers are back

    Handlers go in with ``loop.add_signal_handler``; on loops without it (Windows),
    with ``signal.signal`` handing over to the loop by ``call_soon_threadsafe``
    (``mode`` says which). Outside the main thread no handler can be installed:
    ``mode`` is "none", a warning is logged, and only ``request()`` stops it. A second
    signal, while the first one's shutdown runs, ends the process at once, killed by
    that signal, unless ``force_exit=False``. A handler someone else added to the same
    loop for the same signal is replaced and not restored.
    """

    def __init__(
        self, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM), *, force_exit: bool = True
    ) -> None:
        self.signals = tuple(signal.Signals(sig) for sig in signals)
        self.force_exit = force_exit
        self.mode: str | None = None  # "loop", "signal" or "none", once entered
        self.reason: str | None = None  # "SIGTERM", or what request() was given
        self._event = asyncio.Event()
        self._signals_received = 0
        self._entered = False
        self._restore: list[Callable[[], None]] = []

    def __repr__(self) -> str:
        names = ",".join(sig.name for sig in self.signals)
        state = f"stop requested ({self.reason})" if self.is_set() else "running"
        return f"<GracefulShutdown {names} mode={self.mode} {state}>"

    def request(self, reason: str = "requested") -> None:
        """Request the stop by hand (from the loop's thread; else use call_soon_threadsafe)."""
        if self._event.is_set():
            return
        self.reason = reason
        logger.info("stop requested (%s)", reason)
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> str:
        """Wait for the stop request; return its reason (e.g. "SIGINT")."""
        await self._event.wait()
        assert self.reason is not None
        return self.reason

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError(f"{self!r} cannot be entered twice")
        self._entered = True
        loop = asyncio.get_running_loop()
        self.mode = "none"
        if threading.current_thread() is not threading.main_thread():
            # CPython runs signal handlers in the main thread only, and only the main
            # thread may install them (set_wakeup_fd, signal.signal raise ValueError).
            logger.warning("%r: not in the main thread, signals not handled; "
                           "stop it with request()", self)
            return self
        try:
            for sig in self.signals:
                self._install(loop, sig)
        except BaseException:
            self._uninstall()  # a signal that cannot be caught (SIGKILL) fails loudly
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        self._uninstall()

    def _install(self, loop: asyncio.AbstractEventLoop, sig: signal.Signals) -> None:
        # Python-level handler to put back; None when installed from C: leave it then.
        previous = signal.getsignal(sig)
        try:
            loop.add_signal_handler(sig, self._on_signal, sig)
        except NotImplementedError:  # Windows event loops
            # The handler runs between two bytecodes of the main thread, maybe inside
            # the loop's own code: touch nothing, hand over thread-safely.
            def handler(signum: int, frame: object) -> None:
                loop.call_soon_threadsafe(self._on_signal, signal.Signals(signum))

            signal.signal(sig, handler)
            self.mode = "signal"
            self._restore.append(lambda: signal.signal(sig, previous or signal.SIG_DFL))
            return
        self.mode = "loop"
        self._restore.append(lambda: loop.remove_signal_handler(sig))
        if previous is not None:
            # remove_signal_handler() resets SIGINT to default_int_handler, not to
            # what was there, e.g. asyncio.run()'s own SIGINT handler, which it
            # checks by identity when it finishes.
            self._restore.append(lambda: signal.signal(sig, previous))

    def _uninstall(self) -> None:
        while self._restore:
            try:
                self._restore.pop(0)()
            except Exception:  # put back every other handler all the same
                logger.exception("%r: could not restore a signal handler", self)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals_received += 1
        if self._signals_received > 1 and self.force_exit:
            _exit_by_signal(sig)
        if self._event.is_set():
            logger.warning("%s: stop already requested (%s)", sig.name, self.reason)
        else:
            self.request(sig.name)


async def serve(
    bg: BackgroundTasks,
    stop: GracefulShutdown | asyncio.Event,
    *,
    grace_s: float | None = None,
    cancel_timeout_s: float | None = None,
) -> ShutdownReport:
    """Run until ``stop`` is requested or ``bg`` has nothing left to run, then close ``bg``.

        async with GracefulShutdown() as stop:
            bg = BackgroundTasks(name="workers")
            for n in range(3):
                bg.spawn(worker(queue, stop), name=f"worker-{n}")
            report = await serve(bg, stop, grace_s=10)

    ``stop`` is a GracefulShutdown or an asyncio.Event. The close has two steps: a
    grace period, then cancel with a hard deadline (see ``BackgroundTasks.close``).
    """
    waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(bg.join())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:  # both only wait: a cancel ends them at once, nothing lost
            waiter.cancel()
    grace = bg.grace_s if grace_s is None else grace_s
    logger.info("%r: closing %d tasks, grace %s s", bg, len(bg), grace)
    return await bg.close(grace, cancel_timeout_s=cancel_timeout_s)


def _exit_by_signal(sig: signal.Signals) -> None:
    logger.critical("second %s: exiting now, skipping the rest of the cleanup", sig.name)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if sys.platform != "win32":
        # Die *of the signal*, as CPython does for an uncaught KeyboardInterrupt: a
        # shell running us in a loop then stops too, which `exit(130)` would not do.
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(128 + sig)


def _report(tasks: set[asyncio.Task[Any]], elapsed_s: float) -> ShutdownReport:
    names: dict[str, list[str]] = {outcome: [] for outcome in _OUTCOMES}
    for task in sorted(tasks, key=lambda t: t.get_name()):
        if not task.done():
            outcome = "stuck"
        elif task.cancelled():
            outcome = "cancelled"
        else:
            outcome = "failed" if task.exception() is not None else "finished"
        names[outcome].append(task.get_name())
    return ShutdownReport(**{k: tuple(v) for k, v in names.items()}, elapsed_s=elapsed_s)


def _log_if_failed(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("task %r failed after cancel_and_wait() stopped waiting for it",
                     task.get_name(), exc_info=task.exception())


def _where(task: asyncio.Task[Any]) -> str:
    """The chain of coroutines a task is suspended in, outermost first, with file:line."""
    coro, where = task.get_coro(), []
    while (frame := getattr(coro, "cr_frame", None)) is not None:
        code = frame.f_code
        where.append(f"{code.co_name}() at {code.co_filename}:{frame.f_lineno}")
        coro = coro.cr_await  # type: ignore[union-attr]
    return " > ".join(where) or "an unknown place"
