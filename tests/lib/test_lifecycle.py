"""course_lib.lifecycle: cancel_and_wait, BackgroundTasks, GracefulShutdown, serve."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import signal
import sys
import weakref
from pathlib import Path

import pytest

import course_lib.lifecycle
from course_lib.lifecycle import (
    BackgroundTasks,
    GracefulShutdown,
    ShutdownReport,
    cancel_and_wait,
    serve,
)

LOGGER = "course_lib.lifecycle"
REPO = Path(course_lib.lifecycle.__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="SIGUSR1, os.kill: POSIX only")


def now() -> float:
    return asyncio.get_running_loop().time()


async def sleeper(delay_s: float, *, cleanup_s: float = 0.0, log: list[str] | None = None):
    """Sleep; on cancel, clean up for cleanup_s (noting it in log) and re-raise."""
    log = [] if log is None else log
    try:
        await asyncio.sleep(delay_s)
    except asyncio.CancelledError as exc:
        log.append(f"cancelled {exc.args}")
        await asyncio.sleep(cleanup_s)
        log.append("cleanup done")
        raise
    return delay_s


async def stubborn(release: asyncio.Event, *, then_raise: BaseException | None = None):
    """Swallow every cancel until released: the bug cancel_and_wait and close() must survive."""
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            pass
    if then_raise is not None:
        raise then_raise


# --- cancel_and_wait ----------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cancel_and_wait_returns_true_once_the_cleanup_has_run():
    log: list[str] = []
    task = asyncio.create_task(sleeper(100, cleanup_s=2, log=log))
    await asyncio.sleep(1)
    assert await cancel_and_wait(task) is True
    assert log == ["cancelled ()", "cleanup done"]
    assert task.cancelled()
    assert now() == 3  # waited for the 2 s of cleanup


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cancel_and_wait_passes_msg_to_the_tasks_cancelled_error():
    log: list[str] = []
    task = asyncio.create_task(sleeper(100, log=log))
    await asyncio.sleep(0)
    assert await cancel_and_wait(task, msg="shutting down") is True
    assert log == ["cancelled ('shutting down',)", "cleanup done"]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cancel_and_wait_returns_false_when_the_task_swallows_the_cancel_and_returns():
    async def swallower():
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            await asyncio.sleep(1)
            return "finished anyway"

    task = asyncio.create_task(swallower())
    await asyncio.sleep(0)
    assert await cancel_and_wait(task) is False
    assert task.result() == "finished anyway"
    assert now() == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cancel_and_wait_raises_the_exception_the_cleanup_raised():
    async def broken_cleanup():
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            raise OSError("could not release the lock") from None

    task = asyncio.create_task(broken_cleanup())
    await asyncio.sleep(0)
    with pytest.raises(OSError, match="could not release"):
        await cancel_and_wait(task)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cancel_and_wait_on_a_done_task_reports_its_outcome_at_once():
    async def boom():
        raise KeyError("boom")

    returned = asyncio.create_task(sleeper(1))
    cancelled = asyncio.create_task(sleeper(100))
    failed = asyncio.create_task(boom())
    await asyncio.sleep(2)
    cancelled.cancel()
    await asyncio.wait({cancelled})
    started = now()
    assert await cancel_and_wait(returned, msg="ignored") is False
    assert returned.result() == 1
    assert await cancel_and_wait(cancelled) is True
    with pytest.raises(KeyError, match="boom"):
        await cancel_and_wait(failed)
    assert now() == started


@pytest.mark.asyncio
async def test_cancel_and_wait_refuses_to_cancel_the_current_task():
    with pytest.raises(RuntimeError, match="cannot cancel the task that awaits it"):
        await cancel_and_wait(asyncio.current_task())
    assert not asyncio.current_task().cancelling()  # and did not request a cancel either


@pytest.mark.asyncio
async def test_cancel_and_wait_refuses_a_negative_timeout():
    task = asyncio.create_task(asyncio.sleep(0))
    with pytest.raises(ValueError, match="timeout_s"):
        await cancel_and_wait(task, timeout_s=-1)
    await task


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cancel_and_wait_times_out_naming_a_task_that_suppresses_cancellation():
    release = asyncio.Event()
    task = asyncio.create_task(stubborn(release), name="stubborn-worker")
    await asyncio.sleep(0)
    try:
        with pytest.raises(TimeoutError, match=r"'stubborn-worker' still running 5 s after"):
            await cancel_and_wait(task, timeout_s=5)
        assert now() == 5  # bounded: no hang
        assert not task.done()
    finally:
        release.set()  # else the loop's teardown would cancel it forever in vain
        await task


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_failure_after_cancel_and_wait_gave_up_is_logged_not_lost(caplog):
    release = asyncio.Event()
    task = asyncio.create_task(stubborn(release, then_raise=ValueError("late")), name="late")
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):
        await cancel_and_wait(task, timeout_s=1)
    del task  # nobody holds it now: without the callback, "exception was never retrieved"
    release.set()
    await asyncio.sleep(0.1)
    failures = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert "'late' failed after cancel_and_wait() stopped waiting" in failures[0].getMessage()
    assert isinstance(failures[0].exc_info[1], ValueError)


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("cancels", [1, 2])
async def test_a_caller_cancelled_during_the_cleanup_waits_for_it_then_raises(cancels):
    # The course's one rule (lifecycle's module doc): nothing the helper cancelled is
    # still running when its CancelledError reaches the caller; a second cancel of the
    # caller does not change that, nor cut the task's cleanup short.
    log: list[str] = []
    task = asyncio.create_task(sleeper(100, cleanup_s=5, log=log))
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(1)  # the task is now in its 5 s cleanup
    caller.cancel("caller's own cancel")
    if cancels == 2:
        await asyncio.sleep(1)
        caller.cancel("and again")
    with pytest.raises(asyncio.CancelledError) as caught:
        await caller
    assert caught.value.args == ("caller's own cancel",)  # the caller's, not the task's
    assert task.done() and task.cancelled()
    assert log == ["cancelled ()", "cleanup done"]
    assert now() == 5
    assert caller.cancelled() and caller.cancelling() == cancels  # no uncancel()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_caller_cancelled_during_the_cleanup_still_stops_waiting_at_timeout_s(caplog):
    release = asyncio.Event()
    task = asyncio.create_task(stubborn(release), name="deaf")
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(task, timeout_s=3))
    try:
        await asyncio.sleep(1)
        caller.cancel()
        await asyncio.sleep(1)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):  # not TimeoutError: a cancel propagates
            await caller
        assert now() == 3
    finally:
        release.set()  # else the loop's teardown waits for it forever
        await asyncio.wait({task})
    [warning] = [r for r in caplog.records if r.name == LOGGER]
    assert "'deaf' still running 3 s after cancel_and_wait() cancelled it" in warning.getMessage()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cancel_and_wait_during_the_tasks_cleanup_cancels_it_again():
    # Same rule as TaskGroup and asyncio.timeout: cancel() always goes in, so a cleanup
    # still running from an earlier cancel is interrupted at its next await. Cleanup
    # that must finish belongs under asyncio.shield().
    log: list[str] = []
    task = asyncio.create_task(sleeper(100, cleanup_s=5, log=log))
    await asyncio.sleep(0)
    task.cancel("first")
    await asyncio.sleep(1)
    assert log == ["cancelled ('first',)"]
    assert await cancel_and_wait(task, msg="second") is True
    assert log == ["cancelled ('first',)"]  # the cleanup never reached its end
    assert now() == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_caller_cancel_that_crosses_the_tasks_end_wins_and_the_failure_is_logged(caplog):
    # The task ends (failing) and the caller is cancelled before it resumes: the
    # caller's cancel must not vanish, and the task's exception must not go unretrieved.
    async def fails_in_cleanup():
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            await asyncio.sleep(1)
            raise OSError("cleanup failed") from None

    task = asyncio.create_task(fails_in_cleanup(), name="flaky")
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait(task))
    await asyncio.sleep(0)  # cancel_and_wait has cancelled the task and waits
    task.add_done_callback(lambda _: caller.cancel())  # runs after wait() saw the end
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled() and task.done()  # not retrieved by the test: see the log
    del task
    await asyncio.sleep(0)
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert "'flaky' failed while cancel_and_wait()'s caller was cancelled" in record.getMessage()
    assert isinstance(record.exc_info[1], OSError)


# --- BackgroundTasks ----------------------------------------------------------------


async def wait_on_an_orphan_future():
    # The future is referenced only by this frame, so nothing but the task itself
    # keeps the task alive: the loop's registry of tasks is a WeakSet.
    await asyncio.get_running_loop().create_future()


@pytest.mark.asyncio
@pytest.mark.allow_asyncio_errors
async def test_a_bare_create_task_can_be_garbage_collected_while_pending(caplog):
    task = asyncio.create_task(wait_on_an_orphan_future(), name="orphan")
    await asyncio.sleep(0)
    ref = weakref.ref(task)
    del task
    gc.collect()
    assert ref() is None
    assert any("Task was destroyed but it is pending" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_spawn_keeps_a_task_alive_through_gc_collect():
    bg = BackgroundTasks(name="keeper")
    ref = weakref.ref(bg.spawn(wait_on_an_orphan_future(), name="orphan"))
    await asyncio.sleep(0)
    gc.collect()
    assert ref() is not None
    assert len(bg) == 1
    report = await bg.close(0)
    assert report.cancelled == ("orphan",)
    assert len(bg) == 0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_len_counts_the_running_tasks_and_join_waits_for_them():
    bg = BackgroundTasks()
    bg.spawn(asyncio.sleep(1))
    bg.spawn(asyncio.sleep(3))
    assert len(bg) == 2
    await asyncio.sleep(2)
    assert len(bg) == 1
    await bg.join()
    assert (len(bg), now()) == (0, 3)
    assert "<BackgroundTasks 'background' open, 0 running>" == repr(bg)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_failures_are_logged_and_collected_without_never_retrieved(caplog):
    bg = BackgroundTasks(name="mailer")
    error = ConnectionError("smtp down")

    async def send():
        await asyncio.sleep(1)
        raise error

    bg.spawn(send(), name="send-welcome")
    await bg.join()
    gc.collect()  # the conftest fails the test if asyncio reports it never retrieved
    assert bg.errors == (error,)
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.ERROR
    assert "'mailer'" in record.getMessage() and "'send-welcome' failed" in record.getMessage()
    assert record.exc_info[1] is error


@pytest.mark.asyncio
async def test_errors_keep_only_the_last_max_errors():
    bg = BackgroundTasks(max_errors=2, on_error=lambda task, exc: None)

    async def fail(n):
        raise ValueError(n)

    for n in range(5):
        bg.spawn(fail(n))
    await bg.join()
    assert [exc.args[0] for exc in bg.errors] == [3, 4]


@pytest.mark.asyncio
async def test_on_error_replaces_the_log_line_and_its_own_failure_is_logged(caplog):
    seen = []

    def on_error(task, exc):
        seen.append((task.get_name(), exc))
        raise RuntimeError("the error reporter is down too")

    bg = BackgroundTasks(on_error=on_error)
    error = ValueError("bad input")

    async def fail():
        raise error

    bg.spawn(fail(), name="parse")
    await bg.join()
    assert seen == [("parse", error)]
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert "on_error failed on task 'parse'" in record.getMessage()
    assert isinstance(record.exc_info[1], RuntimeError)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_close_lets_tasks_finish_within_the_grace_period():
    bg = BackgroundTasks()
    bg.spawn(sleeper(1), name="a")
    bg.spawn(sleeper(2), name="b")
    report = await bg.close(grace_s=5)
    assert report == ShutdownReport(finished=("a", "b"), elapsed_s=2)
    assert report.clean
    assert now() == 2  # returns as soon as all ended, not at the end of the grace


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_close_cancels_what_outlives_the_grace_period_and_waits_for_its_cleanup():
    log: list[str] = []
    bg = BackgroundTasks(name="jobs")
    bg.spawn(sleeper(1), name="fast")
    bg.spawn(sleeper(100, cleanup_s=0.5, log=log), name="slow")

    async def fail_late():
        await asyncio.sleep(2)
        raise ValueError("oops")

    bg.spawn(fail_late(), name="broken")
    report = await bg.close(grace_s=3, cancel_timeout_s=10)
    assert report == ShutdownReport(
        finished=("fast",), cancelled=("slow",), failed=("broken",), elapsed_s=3.5
    )
    assert not report.clean
    assert log == ["cancelled (\"<BackgroundTasks 'jobs' closing, 1 running> closing: "
                   "grace period of 3 s is over\",)", "cleanup done"]
    assert str(report) == (
        "finished=[fast], cancelled=[slow], failed=[broken], stuck=[] in 3.50 s"
    )
    assert bg.report is report and len(bg.errors) == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_stuck_task_hits_the_hard_deadline_and_is_logged_with_where_it_hangs(caplog):
    release = asyncio.Event()
    bg = BackgroundTasks(name="svc")
    bg.spawn(stubborn(release), name="stubborn")
    bg.spawn(sleeper(100), name="polite")
    try:
        report = await bg.close(grace_s=1, cancel_timeout_s=2)
        assert report == ShutdownReport(cancelled=("polite",), stuck=("stubborn",), elapsed_s=3)
        assert now() == 3
        [record] = [r for r in caplog.records if r.name == LOGGER]
        message = record.getMessage()
        assert "'stubborn' still running 2 s after cancel()" in message
        assert "stubborn() at " in message and "test_lifecycle.py:" in message
        assert len(bg) == 1  # still held: not garbage-collected while it runs
    finally:
        release.set()  # else the loop's teardown would cancel it forever in vain
        await bg.join()


@pytest.mark.asyncio
async def test_spawn_after_close_raises_naming_the_object_and_closes_the_coroutine():
    bg = BackgroundTasks(name="mailer")
    await bg.close()
    coro = sleeper(1)
    with pytest.raises(RuntimeError, match="'mailer' closed, 0 running> no longer accepts"):
        bg.spawn(coro, name="late")
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_spawn_during_the_grace_period_is_refused():
    bg = BackgroundTasks()
    refused: list[str] = []

    async def spawns_more():
        await asyncio.sleep(1)
        try:
            bg.spawn(sleeper(1))
        except RuntimeError as exc:
            refused.append(str(exc))

    bg.spawn(spawns_more(), name="spawner")
    report = await bg.close(grace_s=5)
    assert report.finished == ("spawner",)
    assert "closing" in refused[0] and "no longer accepts" in refused[0]


def test_spawn_without_a_running_loop_raises_and_closes_the_coroutine():
    coro = sleeper(1)
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        BackgroundTasks().spawn(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_async_with_closes_on_exit_after_the_grace_period():
    async with BackgroundTasks(grace_s=2, cancel_timeout_s=1) as bg:
        bg.spawn(sleeper(1), name="quick")
        bg.spawn(sleeper(100), name="endless")
    assert bg.report == ShutdownReport(finished=("quick",), cancelled=("endless",), elapsed_s=2)
    with pytest.raises(RuntimeError, match="cannot be entered again"):
        async with bg:
            pass


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_async_with_skips_the_grace_period_when_the_body_raises():
    with pytest.raises(KeyError):
        async with BackgroundTasks(grace_s=60) as bg:
            bg.spawn(sleeper(1), name="quick")
            raise KeyError("body failed")
    assert bg.report == ShutdownReport(cancelled=("quick",), elapsed_s=0)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_second_close_returns_the_first_report():
    bg = BackgroundTasks()
    bg.spawn(sleeper(100), name="t")
    first = asyncio.create_task(bg.close(grace_s=1))
    await asyncio.sleep(0)
    second = await bg.close(grace_s=50)  # concurrent: waits for the first one
    assert second is await first
    assert await bg.close() is second
    assert now() == 1


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("cancels", [1, 2])
async def test_cancelling_close_in_the_grace_period_cancels_the_rest_and_waits_for_them(cancels):
    log: list[str] = []
    bg = BackgroundTasks(name="svc")
    task = bg.spawn(sleeper(100, cleanup_s=3, log=log), name="job")
    closer = asyncio.create_task(bg.close(grace_s=10))
    await asyncio.sleep(2)
    closer.cancel()  # the grace period ends now
    if cancels == 2:
        await asyncio.sleep(1)
        closer.cancel()  # during the job's cleanup
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert task.done() and task.cancelled()  # nothing left running
    assert log[-1] == "cleanup done" and "close() was cancelled" in log[0]
    assert bg.report == ShutdownReport(cancelled=("job",), elapsed_s=5)
    assert now() == 5 and closer.cancelling() == cancels


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("cancels", [1, 2])
async def test_cancelling_close_during_the_cleanup_waits_for_it_to_the_end(cancels):
    log: list[str] = []
    bg = BackgroundTasks()
    task = bg.spawn(sleeper(100, cleanup_s=3, log=log), name="job")
    closer = asyncio.create_task(bg.close(grace_s=1))
    await asyncio.sleep(2)  # the grace is over: the job got its cancel and cleans up
    for _ in range(cancels):
        closer.cancel()
        await asyncio.sleep(0.5)
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert task.done()
    assert log == ["cancelled (\"<BackgroundTasks 'background' closing, 1 running> closing: "
                   "grace period of 1 s is over\",)", "cleanup done"]
    assert now() == 4
    assert bg.report == ShutdownReport(cancelled=("job",), elapsed_s=4)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cancelling_close_still_stops_waiting_at_cancel_timeout_s(caplog):
    release = asyncio.Event()
    bg = BackgroundTasks(name="svc")
    task = bg.spawn(stubborn(release), name="deaf")
    closer = asyncio.create_task(bg.close(grace_s=1, cancel_timeout_s=4))
    try:
        await asyncio.sleep(2)
        closer.cancel()
        await asyncio.sleep(1)
        closer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closer
        assert now() == 5  # grace 1 s + hard deadline 4 s
    finally:
        release.set()  # else the loop's teardown waits for it forever
        await asyncio.wait({task})
    assert bg.report == ShutdownReport(stuck=("deaf",), elapsed_s=5)
    [error] = [r for r in caplog.records if r.name == LOGGER]
    assert "task 'deaf' still running 4 s after cancel()" in error.getMessage()


@pytest.mark.asyncio
async def test_close_refuses_to_run_inside_one_of_its_own_tasks_or_with_negative_times():
    bg = BackgroundTasks(name="svc")

    async def closes_its_own_registry():
        await bg.close()

    task = bg.spawn(closes_its_own_registry(), name="worker")
    with pytest.raises(RuntimeError, match="own task 'worker' cannot close it"):
        await task
    with pytest.raises(ValueError, match="must be >= 0"):
        await bg.close(grace_s=-1)
    assert repr(bg) == "<BackgroundTasks 'svc' open, 0 running>"
    assert bg.errors  # the refused close was a failure of that task, logged as such


# --- serve --------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_serve_closes_in_two_steps_once_stop_is_requested():
    stop = asyncio.Event()
    bg = BackgroundTasks()
    bg.spawn(sleeper(10.5), name="short")
    bg.spawn(sleeper(100), name="long")
    asyncio.get_running_loop().call_later(10, stop.set)
    report = await serve(bg, stop, grace_s=1, cancel_timeout_s=1)
    assert report == ShutdownReport(finished=("short",), cancelled=("long",), elapsed_s=1)
    assert now() == 11


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_serve_returns_when_every_task_ended_on_its_own():
    async with GracefulShutdown(signals=()) as stop:
        bg = BackgroundTasks()
        bg.spawn(sleeper(3), name="only")
        report = await serve(bg, stop)
    assert report == ShutdownReport()
    assert now() == 3 and not stop.is_set()


# --- GracefulShutdown, in this process ----------------------------------------------


@pytest.fixture
def sigusr1_sentinel():
    """A known Python handler for SIGUSR1, so restoring it can be checked."""

    def sentinel(signum, frame):  # pragma: no cover - must never run
        raise AssertionError("the sentinel handler ran")

    original = signal.signal(signal.SIGUSR1, sentinel)
    yield sentinel
    signal.signal(signal.SIGUSR1, original)


@pytest.mark.asyncio
@posix_only
async def test_a_signal_requests_the_stop_and_the_previous_handler_comes_back(
    sigusr1_sentinel,
):
    async with GracefulShutdown(signals=(signal.SIGUSR1,)) as stop:
        assert stop.mode == "loop"
        assert not stop.is_set()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await asyncio.wait_for(stop.wait(), 5) == "SIGUSR1"
        assert "stop requested (SIGUSR1)" in repr(stop)
    assert signal.getsignal(signal.SIGUSR1) is sigusr1_sentinel


@pytest.mark.asyncio
async def test_default_signals_are_sigint_and_sigterm_and_both_are_restored():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    async with GracefulShutdown() as stop:
        assert stop.signals == (signal.SIGINT, signal.SIGTERM)
        assert signal.getsignal(signal.SIGINT) is not before[signal.SIGINT]
        stop.request("test")
        assert await stop.wait() == "test"
    assert {sig: signal.getsignal(sig) for sig in before} == before


@pytest.mark.asyncio
@posix_only
async def test_without_add_signal_handler_it_falls_back_to_signal_signal(
    sigusr1_sentinel, monkeypatch
):
    def unsupported(*args):  # what Windows event loops do
        raise NotImplementedError

    monkeypatch.setattr(asyncio.get_running_loop(), "add_signal_handler", unsupported)
    async with GracefulShutdown(signals=(signal.SIGUSR1,)) as stop:
        assert stop.mode == "signal"
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await asyncio.wait_for(stop.wait(), 5) == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is sigusr1_sentinel


@pytest.mark.asyncio
@posix_only
async def test_a_second_signal_without_force_exit_is_only_logged(sigusr1_sentinel, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    async with GracefulShutdown(signals=(signal.SIGUSR1,), force_exit=False) as stop:
        stop.request("deploy")
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.sleep(0.05)
        assert stop.reason == "deploy"  # the first request wins
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    again = "SIGUSR1: stop already requested (deploy)"
    assert messages == ["stop requested (deploy)", again, again]


@pytest.mark.asyncio
@posix_only
async def test_a_signal_that_cannot_be_caught_fails_loudly_and_installs_nothing(
    sigusr1_sentinel,
):
    with pytest.raises(RuntimeError, match="cannot be caught"):
        async with GracefulShutdown(signals=(signal.SIGUSR1, signal.SIGKILL)):
            pass  # pragma: no cover
    assert signal.getsignal(signal.SIGUSR1) is sigusr1_sentinel


@pytest.mark.asyncio
async def test_graceful_shutdown_cannot_be_entered_twice():
    stop = GracefulShutdown(signals=())
    async with stop:
        with pytest.raises(RuntimeError, match="cannot be entered twice"):
            async with stop:
                pass  # pragma: no cover


@pytest.mark.asyncio
async def test_outside_the_main_thread_it_logs_and_still_stops_on_request(caplog):
    async def in_a_thread():
        async with GracefulShutdown() as stop:
            asyncio.get_running_loop().call_later(0.01, stop.request, "by hand")
            return stop.mode, await asyncio.wait_for(stop.wait(), 5)

    before = signal.getsignal(signal.SIGTERM)
    assert await asyncio.to_thread(asyncio.run, in_a_thread()) == ("none", "by hand")
    assert signal.getsignal(signal.SIGTERM) is before
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "not in the main thread, signals not handled" in warning.getMessage()


# --- GracefulShutdown with real signals: the demo script in a subprocess -------------


async def start_demo(*args: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "course_lib.examples.shutdown_demo", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )
    lines: list[str] = []
    await read_until(proc, lines, "ready")
    return proc, lines


async def read_until(proc: asyncio.subprocess.Process, lines: list[str], prefix: str) -> None:
    try:
        async with asyncio.timeout(20):
            while not (lines and lines[-1].startswith(prefix)):
                line = await proc.stdout.readline()
                if not line:
                    raise AssertionError(f"exited before {prefix!r}: {lines}")
                lines.append(line.decode().rstrip("\n"))
    except TimeoutError:
        raise AssertionError(f"no {prefix!r} line within 20 s: {lines}") from None


async def finish(proc: asyncio.subprocess.Process, lines: list[str]) -> tuple[int, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines.extend(out.decode().splitlines())
    return proc.returncode, err.decode()


@posix_only
@pytest.mark.asyncio
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
async def test_demo_drains_within_the_grace_period_on_a_signal(sig):
    proc, lines = await start_demo("--job-s", "0.2", "--grace-s", "10")
    os.kill(proc.pid, sig)
    returncode, err = await finish(proc, lines)
    assert returncode == 0, (lines, err)
    assert f"stop requested ({sig.name})" in lines
    assert "draining 3 jobs, grace 10.0 s" in lines
    assert not any(line.startswith("cancelled:") for line in lines)
    report = next(line for line in lines if line.startswith("report: "))
    assert report.startswith(
        "report: finished=[worker-1, worker-2, worker-3], cancelled=[], failed=[], stuck=[]"
    )


@posix_only
@pytest.mark.asyncio
async def test_demo_cancels_jobs_that_outlive_the_grace_period():
    proc, lines = await start_demo("--job-s", "60", "--grace-s", "0.2", "--jobs", "10")
    os.kill(proc.pid, signal.SIGTERM)
    returncode, err = await finish(proc, lines)
    assert returncode == 0, (lines, err)
    assert "draining 3 jobs, grace 0.2 s" in lines
    cleaned = sorted(line for line in lines if line.startswith("cancelled:"))
    assert cleaned == [f"cancelled: worker-{n} (cleanup done)" for n in (1, 2, 3)]
    report = next(line for line in lines if line.startswith("report: "))
    assert report.startswith(
        "report: finished=[], cancelled=[worker-1, worker-2, worker-3], failed=[], stuck=[]"
    )
    assert "jobs left in the queue: 10" in lines  # the cancelled jobs were handed back


@posix_only
@pytest.mark.asyncio
async def test_a_second_sigint_forces_the_demo_to_exit_at_once():
    proc, lines = await start_demo("--job-s", "60", "--grace-s", "60")
    os.kill(proc.pid, signal.SIGINT)
    await read_until(proc, lines, "draining")
    os.kill(proc.pid, signal.SIGINT)
    returncode, err = await finish(proc, lines)
    assert returncode == -signal.SIGINT, (lines, err)  # killed by the signal, as a shell expects
    assert "second SIGINT: exiting now" in err
    assert not any(line.startswith("report:") for line in lines)


@posix_only
@pytest.mark.asyncio
@pytest.mark.parametrize("blocking", [True, False], ids=["time.sleep", "await"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
async def test_a_second_signal_during_a_cleanup_that_never_ends_exits_at_once(sig, blocking):
    # The cleanup blocks the loop (time.sleep) or awaits for an hour: either way the
    # second signal must end the process, killed by it. The 20 s in finish() only
    # guards against a hang; the cleanup alone would take 3,600 s.
    proc, lines = await start_demo("--workers", "1", "--job-s", "3600", "--grace-s", "0",
                                   "--cleanup-s", "3600", "--cancel-timeout-s", "3600",
                                   *(["--blocking-cleanup"] if blocking else []))
    os.kill(proc.pid, sig)
    await read_until(proc, lines, "draining")
    if blocking:
        await read_until(proc, lines, "worker-1: cleaning up, blocking the loop")
    os.kill(proc.pid, sig)
    returncode, err = await finish(proc, lines)
    assert returncode == -sig, (lines, err)  # a shell shows 128 + signum
    assert f"second {sig.name}: exiting now" in err
    assert not any(line.startswith(("cancelled:", "report:")) for line in lines)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_cancelled_serve_leaves_none_of_its_own_tasks_running():
    bg = BackgroundTasks(name="svc")
    job = bg.spawn(sleeper(100), name="job")
    before = asyncio.all_tasks()
    server = asyncio.create_task(serve(bg, asyncio.Event()))
    await asyncio.sleep(1)
    server.cancel()
    with pytest.raises(asyncio.CancelledError):
        await server
    assert asyncio.all_tasks() == before  # its two waiters have ended too; bg is the caller's
    await cancel_and_wait(job)
