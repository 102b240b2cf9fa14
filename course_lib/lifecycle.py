"""Task lifecycle: keep tasks alive, cancel them properly, shut down on signals.

One idea: a task you start is a task you must see end.

- ``cancel_and_wait(task)``: cancel, wait for the task's cleanup, say how it ended.
- ``BackgroundTasks``: strong references for fire-and-forget tasks (the loop keeps
  only weak ones), their exceptions logged and collected, a two-step ``close()``
  (grace period, then cancel with a hard deadline) that returns a ``ShutdownReport``.
- ``GracefulShutdown`` turns SIGINT/SIGTERM into a stop request; ``serve()`` waits
  for it, then closes a ``BackgroundTasks`` in two steps.

One rule for a caller cancelled during cleanup, here (``cancel_and_wait``,
``BackgroundTasks.close()``, ``serve()``) and in ``course_lib.timeouts.first_completed``:
a helper that has started or cancelled tasks never returns or raises while they
still run. If the caller is cancelled while the helper waits for that cleanup, the
helper keeps waiting until every such task has ended (bounded only by the helper's
own timeout argument, when it has one), absorbing further cancels the same way, and
then raises CancelledError to its caller (no ``uncancel()``: the caller's
``cancelling()`` count stays as the cancels left it). This is what
``asyncio.TaskGroup`` does on exit.
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

    If the caller is cancelled while waiting, the wait goes on until the task has
    ended (or ``timeout_s`` has passed), further cancels included, and then the
    caller's CancelledError is raised, not the task's outcome: a failure of the task
    is logged then. So after the CancelledError the task is no longer running (unless
    it outlived ``timeout_s``, which is logged). Like TaskGroup and asyncio.timeout,
    this always calls ``cancel()``: a task already cleaning up from an earlier cancel
    gets another CancelledError at its next await.
    """
    if task is asyncio.current_task():
        raise RuntimeError(f"cancel_and_wait() cannot cancel the task that awaits it: {task!r}")
    if timeout_s is not None and timeout_s < 0:
        raise ValueError(f"timeout_s must be >= 0 or None, not {timeout_s!r}")
    if not task.done():
        task.cancel(msg)
        loop = asyncio.get_running_loop()
        until = None if timeout_s is None else loop.time() + timeout_s
        ours = await _wait_through_cancels({task}, until)
        if not task.done():
            task.add_done_callback(_log_if_failed)  # nobody will await it now
            if ours is not None:
                logger.warning("task %r still running %s s after cancel_and_wait() cancelled "
                               "it, at %s", task.get_name(), timeout_s, _where(task))
                raise ours
            raise TimeoutError(
                f"task {task.get_name()!r} still running {timeout_s} s after cancel(): it "
                f"suppresses cancellation or its cleanup hangs (at {_where(task)})"
            )
        if ours is not None:
            if not task.cancelled() and (exc := task.exception()) is not None:
                logger.error("task %r failed while cancel_and_wait()'s caller was cancelled",
                             task.get_name(), exc_info=exc)
            raise ours
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
        in ``self.report``; a second ``close()`` returns the first one's report.

        If the caller is cancelled meanwhile, the grace period ends at once: the tasks
        still running are cancelled, and close() waits for their cleanup up to
        ``cancel_timeout_s`` as usual, further cancels included, then sets the report
        and raises the caller's CancelledError. So after it, no task is still running
        but those reported ``stuck``.
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
        tasks = set(self._tasks)
        ours: asyncio.CancelledError | None = None
        try:
            if tasks and grace_s > 0:
                try:
                    await asyncio.wait(tasks, timeout=grace_s)
                except asyncio.CancelledError as exc:
                    ours = exc  # our caller gave up on the grace period: cancel now
            why = "close() was cancelled" if ours else f"grace period of {grace_s} s is over"
            pending = {task for task in tasks if not task.done()}
            # In name order, so what the cancelled tasks print or log comes out the
            # same way every run (a set's order changes from run to run).
            for task in sorted(pending, key=asyncio.Task.get_name):
                task.cancel(f"{self!r} closing: {why}")
            # Once: a second cancel would cut short cleanups already running, so a
            # cancel of our caller from here on only waits on (see the module doc).
            until = None if hard_s is None else loop.time() + hard_s
            late = await _wait_through_cancels(pending, until)
            ours = ours or late
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
        if ours is not None:
            raise ours
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
    ``mode`` is "none", a warning is logged, and only ``request()`` stops it. A handler
    someone else added to the same loop for the same signal is replaced and not restored.

    A second signal, while the first one's shutdown runs, ends the process at once,
    unless ``force_exit=False``: it dies of that signal, as CPython does for an
    uncaught KeyboardInterrupt (exit status 128 + signum in a shell: 130 for SIGINT,
    143 for SIGTERM; ``returncode == -signum`` for ``subprocess``). "At once" holds even
    while a cleanup blocks the loop (``time.sleep``, a CPU-bound step): the signals
    are counted by a Python-level handler, which runs in the main thread between two
    bytecodes, not by the loop, which would see the signal only once it runs again.
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

        # Runs in the main thread between two bytecodes, maybe inside the loop's own
        # code or a cleanup that blocks the loop: count, exit if it is the second, and
        # otherwise touch nothing (the loop hears of the signal through its wake-up
        # fd, or through call_soon_threadsafe).
        def handler(signum: int, frame: object) -> None:
            self._signals_received += 1
            if self._signals_received > 1 and self.force_exit:
                _exit_by_signal(signal.Signals(signum))
            if self.mode == "signal":
                loop.call_soon_threadsafe(self._on_signal, signal.Signals(signum))

        try:
            loop.add_signal_handler(sig, self._on_signal, sig)
        except NotImplementedError:  # Windows event loops
            signal.signal(sig, handler)
            self.mode = "signal"
            self._restore.append(lambda: signal.signal(sig, previous or signal.SIG_DFL))
            return
        self.mode = "loop"
        self._restore.append(lambda: loop.remove_signal_handler(sig))
        # add_signal_handler() set a no-op Python handler and the loop's wake-up fd;
        # ours replaces the no-op only: the C handler still writes the wake-up fd, so
        # the loop still runs _on_signal. Without it a second signal during a blocking
        # cleanup would wait in the pipe, and be dropped if the handlers are removed
        # before the loop reads it.
        signal.signal(sig, handler)
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
        # In the loop, once per signal; counting and the forced exit happen in handler().
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
    A cancel of the caller while waiting for ``stop`` raises once serve()'s own two
    waiting tasks have ended, leaving ``bg`` open; during the close it follows
    ``close()``'s rule (see the module doc).
    """
    waiters = {asyncio.create_task(stop.wait()), asyncio.create_task(bg.join())}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:  # both only wait: a cancel ends them at their next step
            waiter.cancel()
        if ours := await _wait_through_cancels(waiters, None):
            raise ours
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


async def _wait_through_cancels(
    tasks: set[asyncio.Task[Any]], until: float | None
) -> asyncio.CancelledError | None:
    """Wait until every task has ended or loop time ``until``; return our first cancel.

    asyncio.wait(), not `await task`: awaiting a cancelled task raises *its*
    CancelledError in our frame, where nothing tells it from a cancel aimed at us.
    wait() never raises a task's outcome and never cancels the tasks, so a
    CancelledError out of it is ours; we note it and wait on, as TaskGroup.__aexit__
    does, and our timeout needs no self-cancel (so no uncancel() bookkeeping).
    """
    loop = asyncio.get_running_loop()
    ours: asyncio.CancelledError | None = None
    pending = {task for task in tasks if not task.done()}
    while pending:
        left_s = None if until is None else max(0.0, until - loop.time())
        try:
            _, pending = await asyncio.wait(pending, timeout=left_s)
            break
        except asyncio.CancelledError as exc:
            if ours is None:
                ours = exc  # the first cancel's message is the one the caller sees
            pending = {task for task in pending if not task.done()}
    return ours


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
