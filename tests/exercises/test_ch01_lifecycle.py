"""Grading tests for exercises 1.1-1.3 (notebooks/01_task_lifecycle.ipynb).

Every task a test starts is stopped at its end, even one whose code under test
swallows cancellation (1.1's job queue can be closed for that), so that a wrong
answer fails its own checks and never hangs or leaks into the next test.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
from typing import Any

import pytest
from _support import _raise_if_failed, _stop, _within

MODULE = "ch01_lifecycle"
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


def _now() -> float:
    return asyncio.get_running_loop().time()



class _Tasks:
    """``async with _Tasks() as tasks:``, then ``tasks.start(coro, name=...)`` starts a task;
    those still running when the block ends are stopped. (In the test's body, not in a
    fixture: fixture teardown runs on the real clock, not the virtual one.)"""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []

    def start(self, coro, *, name: str | None = None) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        return task

    async def __aenter__(self) -> _Tasks:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            await _stop(task)



# --- 1.1 worker ------------------------------------------------------------------------


class _Stop(BaseException):
    """Raised by a closed _Jobs queue: stops a worker even if it swallows every cancel."""


class _Jobs(asyncio.Queue):
    """A job queue that the test closes at its end: get() then raises _Stop."""

    closed = False

    async def get(self):
        if self.closed:
            raise _Stop("the test is over")
        return await super().get()


@dataclasses.dataclass
class _Bench:
    """A worker task over a job queue, and what it did."""

    jobs: _Jobs
    done: list[float]
    handed_back: list[float]  # jobs whose requeue() has completed
    task: asyncio.Task[None] | None = None

    async def requeue(self, job: float) -> None:
        await asyncio.sleep(1)  # a network round trip
        self.jobs.put_nowait(job)
        self.handed_back.append(job)

    def assert_running(self) -> None:
        _raise_if_failed(self.task)
        assert not self.task.done(), "the worker stopped by itself: it should run until cancelled"

    async def cancel_and_wait(self, within_s: float = 30) -> None:
        self.assert_running()
        self.task.cancel()
        await self.wait_until_ended(within_s)

    async def wait_until_ended(self, within_s: float = 30) -> None:
        await asyncio.wait({self.task}, timeout=within_s)
        assert self.task.done(), (
            f"the worker was still running {within_s:g} s after cancel(): "
            "does it catch CancelledError and carry on?"
        )
        _raise_if_failed(self.task)

    def assert_cancelled(self) -> None:
        assert self.task.cancelled(), (
            "the worker returned normally after cancel(): re-raise the CancelledError "
            "after the cleanup"
        )


@contextlib.asynccontextmanager
async def _bench(ex):
    """``async with _bench(ex) as bench``: a worker task over an empty job queue."""
    bench = _Bench(_Jobs(), [], [])
    bench.task = asyncio.create_task(ex.worker(bench.jobs, bench.done, bench.requeue))
    try:
        yield bench
    finally:
        bench.jobs.closed = True
        await _stop(bench.task)


@pytest.mark.exercise("1.1")
async def test_worker_processes_jobs_one_after_another(ex):
    """Jobs are processed one after another, and the worker then waits for more."""
    async with _bench(ex) as bench:
        for job in (1, 2, 3):
            bench.jobs.put_nowait(job)
        await asyncio.sleep(2.5)
        bench.assert_running()
        assert bench.done == [1], f"after 2.5 s done is {bench.done!r}, expected [1]"
        await asyncio.sleep(4)
        bench.assert_running()
        assert bench.done == [1, 2, 3], f"after 6.5 s done is {bench.done!r}, expected [1, 2, 3]"


@pytest.mark.exercise("1.1")
async def test_worker_cancelled_mid_job_hands_the_job_back(ex):
    """Cancelled in the middle of a job: that job is handed back with requeue(), not lost."""
    async with _bench(ex) as bench:
        bench.jobs.put_nowait(5)
        await asyncio.sleep(2)
        await bench.cancel_and_wait()
        assert bench.handed_back == [5], f"jobs handed back: {bench.handed_back!r}, expected [5]"
        assert bench.done == [], "a job cut short is not done: it must not be in `done`"


@pytest.mark.exercise("1.1")
async def test_worker_cancelled_mid_job_ends_cancelled(ex):
    """Cancelled in the middle of a job: the task ends cancelled (CancelledError re-raised)."""
    async with _bench(ex) as bench:
        bench.jobs.put_nowait(5)
        await asyncio.sleep(2)
        await bench.cancel_and_wait()
        bench.assert_cancelled()


@pytest.mark.exercise("1.1")
async def test_worker_ends_only_after_the_requeue_has_finished(ex):
    """The worker waits for requeue() to finish before it ends."""
    async with _bench(ex) as bench:
        bench.jobs.put_nowait(5)
        await asyncio.sleep(2)
        await bench.cancel_and_wait()
        assert bench.handed_back == [5], (
            "the worker ended before the job was handed back: await requeue(job) before re-raising"
        )
        assert _now() == pytest.approx(3), (
            f"the worker ended at {_now():g} s: cancelled at 2 s, plus 1 s of requeue, is 3 s"
        )


@pytest.mark.exercise("1.1")
async def test_worker_cancelled_while_waiting_hands_nothing_back(ex):
    """Cancelled while waiting for a job: ends cancelled, a job already done is not handed back."""
    async with _bench(ex) as bench:
        bench.jobs.put_nowait(1)
        await asyncio.sleep(5)
        await bench.cancel_and_wait()
        bench.assert_cancelled()
        assert bench.done == [1], f"done is {bench.done!r}, expected [1]"
        assert bench.handed_back == [], (
            f"jobs handed back: {bench.handed_back!r}, but no job was in hand when cancelled"
        )


async def _cancel_during_the_hand_back(bench: _Bench, cancels: int, every_s: float) -> list:
    """Cancel the worker at 2 s, mid-job (a 5 s job), then ``cancels - 1`` more times,
    ``every_s`` apart, while its 1 s requeue() runs. Returns [(time the worker task
    ended, jobs handed back by then)], recorded by a done callback the moment it ends."""
    ended: list[tuple[float, list[float]]] = []
    bench.jobs.put_nowait(5)
    await asyncio.sleep(2)
    bench.assert_running()
    bench.task.add_done_callback(lambda _: ended.append((_now(), list(bench.handed_back))))
    bench.task.cancel()
    for _ in range(cancels - 1):
        await asyncio.sleep(every_s)
        if bench.task.done():
            break
        bench.task.cancel()
    await bench.wait_until_ended()
    return ended


def _assert_ended_after_the_hand_back(ended: list, cancels: int) -> None:
    (when, handed_back), = ended
    assert handed_back == [5], (
        f"a second cancel ended the worker at {when:g} s, before requeue() finished (3 s): "
        "keep waiting for the hand-back through every cancel (shield, in a loop), then raise"
    )


@pytest.mark.exercise("1.1")
async def test_worker_cancelled_twice_ends_only_after_the_requeue(ex):
    """A second cancel() during requeue(): the worker still ends only once the job is back."""
    async with _bench(ex) as bench:
        ended = await _cancel_during_the_hand_back(bench, cancels=2, every_s=0.5)
        _assert_ended_after_the_hand_back(ended, 2)
        bench.assert_cancelled()


@pytest.mark.exercise("1.1")
async def test_worker_cancelled_twice_then_shut_down_loses_nothing(ex):
    """A second cancel(), then a shutdown as asyncio.run() does it: the job is not lost."""
    async with _bench(ex) as bench:
        before = {t for t in asyncio.all_tasks() if t is not bench.task}
        await _cancel_during_the_hand_back(bench, cancels=2, every_s=0.5)
        # asyncio.run() ends by cancelling every task still running: do the same.
        leftovers = {t for t in asyncio.all_tasks() if not t.done()} - before
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=60)
        await asyncio.sleep(10)
        assert bench.handed_back == [5], (
            f"the job was lost (handed back: {bench.handed_back!r}): after a second cancel the "
            "worker ended, and the shutdown cancelled the requeue() it left running"
        )


@pytest.mark.exercise("1.1")
async def test_worker_cancelled_three_times_hands_the_job_back_once(ex):
    """Three cancels during requeue(): handed back exactly once; ends cancelled, after it."""
    async with _bench(ex) as bench:
        ended = await _cancel_during_the_hand_back(bench, cancels=3, every_s=0.3)
        await asyncio.sleep(10)
        assert bench.handed_back == [5], (
            f"after a third cancel, handed back {bench.handed_back!r}, expected [5] exactly once: "
            "did a cancel reach requeue() (awaited without shield), or start a new one?"
        )
        _assert_ended_after_the_hand_back(ended, 3)
        bench.assert_cancelled()


@pytest.mark.exercise("1.1")
async def test_worker_under_a_burst_of_1000_cancels_hands_back_once(ex):
    """1,000 cancels, 1 ms apart, during requeue(): handed back exactly once, ends cancelled."""
    async with _bench(ex) as bench:
        ended = await _cancel_during_the_hand_back(bench, cancels=1000, every_s=0.001)
        await asyncio.sleep(10)
        assert bench.handed_back == [5], (
            f"under 1,000 cancels, handed back {bench.handed_back!r}, expected [5] exactly once: "
            "start the hand-back once, then only wait for it"
        )
        _assert_ended_after_the_hand_back(ended, 1000)
        bench.assert_cancelled()


# --- 1.2 cancel_and_wait -----------------------------------------------------------------


async def _sleeper(cleanup_s: float = 0, seen: list[Any] | None = None) -> None:
    """Sleeps 'forever'; when cancelled, records the CancelledError's args, cleans up, ends."""
    try:
        await asyncio.sleep(1000)
    except asyncio.CancelledError as exc:
        if seen is not None:
            seen.append(exc.args)
        await asyncio.sleep(cleanup_s)
        if seen is not None:
            seen.append(("cleaned up at", _now()))
        raise


async def _swallower() -> str:
    """Catches the cancel and returns a value instead."""
    try:
        await asyncio.sleep(1000)
    except asyncio.CancelledError:
        await asyncio.sleep(1)
    return "partial result"


async def _stubborn(resist_s: float) -> None:
    """Swallows every cancel for ``resist_s`` seconds (then gives up and returns)."""
    until = _now() + resist_s
    while _now() < until:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            pass


async def _started(task: asyncio.Task[Any]) -> asyncio.Task[Any]:
    await asyncio.sleep(1)
    assert not task.done(), "(test setup) the task should still be running"
    return task


_HANGS = "cancel_and_wait() was still waiting after {} s"


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_returns_true_for_a_task_that_ends_cancelled(ex):
    """A task that ends cancelled gives True."""
    async with _Tasks() as tasks:
        task = await _started(tasks.start(_sleeper()))
        result = await _within(60, ex.cancel_and_wait(task), _HANGS.format(60))
        assert task.cancelled(), "the task was not cancelled"
        assert result is True, f"returned {result!r}, expected True"


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_waits_for_the_tasks_cleanup(ex):
    """It returns only once the task's cleanup (3 s of awaiting) has finished."""
    async with _Tasks() as tasks:
        seen: list[Any] = []
        task = await _started(tasks.start(_sleeper(cleanup_s=3, seen=seen)))
        start = _now()
        await _within(60, ex.cancel_and_wait(task), _HANGS.format(60))
        took = _now() - start
        assert task.done(), "it returned while the task was still running its cleanup"
        assert took == pytest.approx(3), f"took {took:g} s; the task's cleanup takes 3 s"


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_returns_false_for_a_task_that_swallows_the_cancel(ex):
    """A task that catches the cancel and returns gives False (its result stays in the task)."""
    async with _Tasks() as tasks:
        task = await _started(tasks.start(_swallower()))
        result = await _within(60, ex.cancel_and_wait(task), _HANGS.format(60))
        assert task.done() and not task.cancelled(), "(test) the task should have returned"
        assert result is False, f"returned {result!r}, expected False"
        assert task.result() == "partial result"


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_raises_the_error_of_a_task_that_fails(ex):
    """A task whose cleanup raises: that exception comes out of cancel_and_wait()."""
    async with _Tasks() as tasks:

        async def broken_cleanup():
            try:
                await asyncio.sleep(1000)
            finally:
                await asyncio.sleep(1)
                raise ValueError("cleanup failed")

        task = await _started(tasks.start(broken_cleanup()))
        with pytest.raises(ValueError, match="cleanup failed"):
            await _within(60, ex.cancel_and_wait(task), _HANGS.format(60))


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_reports_a_task_already_done_at_once(ex):
    """A task already done is not cancelled again: False or True at once."""
    async with _Tasks() as tasks:
        finished = tasks.start(asyncio.sleep(1, result="done"))
        cancelled = tasks.start(asyncio.sleep(1000))
        await asyncio.sleep(2)
        cancelled.cancel()
        await asyncio.wait({cancelled})
        start = _now()
        assert await _within(60, ex.cancel_and_wait(finished), _HANGS.format(60)) is False, (
            "a task that finished normally should give False"
        )
        assert finished.result() == "done", "the finished task's result was changed"
        assert await _within(60, ex.cancel_and_wait(cancelled), _HANGS.format(60)) is True, (
            "a task already cancelled should give True"
        )
        assert _now() - start == pytest.approx(0), "tasks already done should be reported at once"


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_passes_msg_to_the_task(ex):
    """The msg argument reaches the task: its CancelledError carries the message."""
    async with _Tasks() as tasks:
        seen: list[Any] = []
        task = await _started(tasks.start(_sleeper(seen=seen)))
        await _within(60, ex.cancel_and_wait(task, msg="shutting down"), _HANGS.format(60))
        assert seen and seen[0] == ("shutting down",), (
            f"the task's CancelledError had args {seen[0] if seen else None!r}: pass msg to "
            "task.cancel()"
        )


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_gives_up_on_a_stubborn_task_with_timeouterror(ex):
    """A task that resists longer than timeout_s: TimeoutError naming it, after timeout_s."""
    async with _Tasks() as tasks:
        task = await _started(tasks.start(_stubborn(resist_s=100), name="stubborn-7"))
        start = _now()
        try:
            result = await _within(
                60,
                ex.cancel_and_wait(task, timeout_s=5),
                "still waiting for a task that resists cancellation, after 60 s: "
                "stop after timeout_s",
            )
        except TimeoutError as exc:
            error = exc
        else:
            pytest.fail(
                f"no TimeoutError: cancel_and_wait() returned {result!r} after "
                f"{_now() - start:g} s, waiting for a task that resisted all that time "
                "(timeout_s=5)"
            )
        took = _now() - start
        assert took == pytest.approx(5), f"gave up after {took:g} s, expected timeout_s = 5 s"
        assert "stubborn-7" in str(error), (
            f"the TimeoutError says {str(error)!r}: name the task (task.get_name())"
        )


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_within_timeout_returns_normally(ex):
    """A cleanup that ends before timeout_s: no TimeoutError, True as soon as it ends."""
    async with _Tasks() as tasks:
        task = await _started(tasks.start(_sleeper(cleanup_s=2)))
        start = _now()
        result = await _within(60, ex.cancel_and_wait(task, timeout_s=5), _HANGS.format(60))
        assert result is True, f"returned {result!r}, expected True"
        assert _now() - start == pytest.approx(2), "it should return as soon as the task has ended"


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_lets_the_callers_own_cancel_through(ex):
    """The caller cancelled while it waits for the task's cleanup ends cancelled too."""
    async with _Tasks() as tasks:
        task = await _started(tasks.start(_sleeper(cleanup_s=10)))
        caller = tasks.start(ex.cancel_and_wait(task))
        await asyncio.sleep(1)  # the task is now in its 10 s cleanup
        _raise_if_failed(caller)
        caller.cancel()
        await asyncio.wait({caller}, timeout=60)
        assert caller.done(), "the cancelled caller was still waiting 60 s later"
        _raise_if_failed(caller)
        assert caller.cancelled(), (
            f"the caller was cancelled, but cancel_and_wait() returned {caller.result()!r}: it "
            "swallowed the caller's own CancelledError (is it `await task`?)"
        )


async def _caller_cancelled_during_cleanup(
    ex, tasks: _Tasks, cancel_at: list[float], *, cleanup_s: float = 10, timeout_s=None,
    resist_s: float | None = None,
) -> dict[str, Any]:
    """A task is cancelled by cancel_and_wait() at 1 s and cleans up for ``cleanup_s``
    (or resists for ``resist_s``); its caller is cancelled at each time in ``cancel_at``.
    Returns what the caller saw: when it ended, whether the task had ended by then, how,
    and the caller's cancelling() count when the CancelledError reached it."""
    seen: dict[str, Any] = {}
    body = _stubborn(resist_s) if resist_s is not None else _sleeper(cleanup_s=cleanup_s)
    task = await _started(tasks.start(body))

    async def caller():
        try:
            return await ex.cancel_and_wait(task, timeout_s=timeout_s)
        except asyncio.CancelledError:
            seen["cancelling"] = asyncio.current_task().cancelling()
            raise
        finally:
            seen["ended_at"] = _now()
            seen["task_done"] = task.done()

    start = seen["started_at"] = _now()
    calling = tasks.start(caller())
    for at in cancel_at:
        await asyncio.sleep(start + at - _now())
        _raise_if_failed(calling)
        if calling.done():
            break
        calling.cancel()
    await asyncio.wait({calling}, timeout=120)
    assert calling.done(), "the cancelled caller was still waiting 120 s later"
    seen["caller"] = calling
    return seen


def _assert_caller_ended_cancelled(seen: dict[str, Any]) -> None:
    caller = seen["caller"]
    _raise_if_failed(caller)
    assert caller.cancelled(), (
        f"cancel_and_wait() swallowed the caller's own CancelledError and returned "
        f"{caller.result()!r} (is it `await task`?): wait, then raise CancelledError"
    )


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_cancelled_caller_waits_for_the_cleanup_first(ex):
    """Caller cancelled during the task's cleanup: waits for the task to end, then cancelled."""
    async with _Tasks() as tasks:
        seen = await _caller_cancelled_during_cleanup(ex, tasks, cancel_at=[1])
        assert seen["task_done"], (
            "the cancelled caller ended while its task was still running its cleanup: keep "
            "waiting for the task, then raise CancelledError (as TaskGroup does)"
        )
        _assert_caller_ended_cancelled(seen)


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_absorbs_a_second_cancel_of_the_caller(ex):
    """Caller cancelled twice: still waits for the task, then cancelled; no uncancel()."""
    async with _Tasks() as tasks:
        seen = await _caller_cancelled_during_cleanup(ex, tasks, cancel_at=[1, 3])
        assert seen["task_done"], (
            "after a second cancel of the caller it stopped waiting, the task still cleaning "
            "up: absorb every further cancel the same way, in a loop"
        )
        _assert_caller_ended_cancelled(seen)
        assert seen.get("cancelling") == 2, (
            f"the caller's cancelling() was {seen.get('cancelling')!r} at its CancelledError, "
            "expected 2 (two cancels): do not uncancel() a cancel aimed at the caller"
        )


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_cancelled_caller_is_bounded_by_timeout_s(ex):
    """Caller cancelled while a stubborn task resists: waits at most timeout_s, then cancelled."""
    async with _Tasks() as tasks:
        seen = await _caller_cancelled_during_cleanup(
            ex, tasks, cancel_at=[1, 2], timeout_s=5, resist_s=100
        )
        took = seen["ended_at"] - seen["started_at"]
        assert took == pytest.approx(5), (
            f"the cancelled caller ended {took:g} s after cancel_and_wait() began: with "
            "timeout_s=5 it waits for the task up to 5 s, no less and no more"
        )
        _assert_caller_ended_cancelled(seen)


@pytest.mark.exercise("1.2")
async def test_cancel_and_wait_1000_callers_cancelled_twice_leave_nothing_running(ex):
    """1,000 callers cancelled twice each: every one ends cancelled, after its task has ended."""
    async with _Tasks() as tasks:
        n = 1000
        ended_early: list[int] = []
        targets = [tasks.start(_sleeper(cleanup_s=1 + i % 7)) for i in range(n)]
        await asyncio.sleep(1)

        async def caller(i):
            try:
                return await ex.cancel_and_wait(targets[i])
            finally:
                if not targets[i].done():
                    ended_early.append(i)

        callers = [tasks.start(caller(i)) for i in range(n)]
        for delay_s in (0.5, 0.5):
            await asyncio.sleep(delay_s)
            for c in callers:
                c.cancel()
        await asyncio.wait(callers, timeout=120)
        assert all(c.done() for c in callers), "callers were still waiting 120 s later"
        for c in callers:
            _raise_if_failed(c)
        assert not ended_early, (
            f"{len(ended_early)} of {n} cancelled callers ended while their task was still "
            "running its cleanup: keep waiting for it through every cancel"
        )
        returned = sum(not c.cancelled() for c in callers)
        assert returned == 0, (
            f"{returned} of {n} cancelled callers returned normally: raise CancelledError once "
            "the task has ended"
        )


# --- 1.3 supervise -----------------------------------------------------------------------


@dataclasses.dataclass
class _Children:
    """A child factory: each child records its start, runs ``run_s``, crashes ``crashes``
    times in all (a ValueError "crash N"), then returns ``result``."""

    crashes: int = 0
    run_s: float = 0
    result: Any = "ok"
    cleanup_s: float = 0
    starts: list[float] = dataclasses.field(default_factory=list)
    running: int = 0
    cleaned_up: list[float] = dataclasses.field(default_factory=list)

    async def child(self) -> Any:
        self.starts.append(_now())
        n = len(self.starts)
        self.running += 1
        try:
            await asyncio.sleep(self.run_s)
        except asyncio.CancelledError:
            await asyncio.sleep(self.cleanup_s)
            self.cleaned_up.append(_now())
            raise
        finally:
            self.running -= 1
        if n <= self.crashes:
            raise ValueError(f"crash {n}")
        return self.result


_SUPERVISE_HANGS = "supervise() was still running after {} s"


def _supervise(ex, children: _Children, *, max_restarts=10, base_delay_s=1, max_delay_s=100):
    return ex.supervise(
        children.child,
        max_restarts=max_restarts,
        base_delay_s=base_delay_s,
        max_delay_s=max_delay_s,
    )


@pytest.mark.exercise("1.3")
async def test_supervise_returns_the_childs_result(ex):
    """A child that returns: its result comes back, no restart."""
    children = _Children(result=42, run_s=2)
    result = await _within(600, _supervise(ex, children), _SUPERVISE_HANGS.format(600))
    assert result == 42, f"returned {result!r}, expected the child's 42"
    assert children.starts == [0], f"children started at {children.starts!r}, expected [0]"


@pytest.mark.exercise("1.3")
async def test_supervise_restarts_with_exponential_backoff(ex):
    """Crashes are restarted after base, 2*base, 4*base...: starts at 0, 1, 3, 7 s."""
    children = _Children(crashes=3)
    result = await _within(600, _supervise(ex, children), _SUPERVISE_HANGS.format(600))
    assert children.starts == [0, 1, 3, 7], (
        f"children started at {children.starts!r} s, expected [0, 1, 3, 7] (waits of 1, 2, 4 s)"
    )
    assert result == "ok", f"returned {result!r}, expected the last child's 'ok'"


@pytest.mark.exercise("1.3")
async def test_supervise_caps_the_backoff_at_max_delay(ex):
    """Waits never exceed max_delay_s: 1, 2, 3, 3, 3 s with max_delay_s=3."""
    children = _Children(crashes=5)
    await _within(600, _supervise(ex, children, max_delay_s=3), _SUPERVISE_HANGS.format(600))
    assert children.starts == [0, 1, 3, 6, 9, 12], (
        f"children started at {children.starts!r} s, expected [0, 1, 3, 6, 9, 12] "
        "(waits of 1, 2, 3, 3, 3 s)"
    )


@pytest.mark.exercise("1.3")
async def test_supervise_gives_up_after_max_restarts_with_the_last_error(ex):
    """After max_restarts restarts, the next crash is raised at once: the last error."""
    children = _Children(crashes=100)
    with pytest.raises(ValueError) as info:
        await _within(600, _supervise(ex, children, max_restarts=3), _SUPERVISE_HANGS.format(600))
    assert len(children.starts) == 4, (
        f"{len(children.starts)} children started, expected 4 (the first and 3 restarts)"
    )
    assert str(info.value) == "crash 4", f"raised {info.value!r}, expected the last: crash 4"
    assert _now() == pytest.approx(7), (
        f"gave up at {_now():g} s, expected 7 s: no wait after the last crash"
    )


@pytest.mark.exercise("1.3")
async def test_supervise_with_no_restarts_raises_the_first_crash(ex):
    """max_restarts=0: the first crash is raised at once, never restarted."""
    children = _Children(crashes=100, run_s=2)
    with pytest.raises(ValueError) as info:
        await _within(600, _supervise(ex, children, max_restarts=0), _SUPERVISE_HANGS.format(600))
    assert str(info.value) == "crash 1", f"raised {info.value!r}, expected the first: crash 1"
    assert children.starts == [0], f"children started at {children.starts!r}, expected [0]"
    assert _now() == pytest.approx(2), f"raised at {_now():g} s, expected at once (2 s)"


@pytest.mark.exercise("1.3")
async def test_supervise_cancelled_waits_for_the_childs_cleanup(ex):
    """Cancelled while the child runs: the child cleans up (2 s), then supervise ends cancelled."""
    async with _Tasks() as tasks:
        children = _Children(run_s=1000, cleanup_s=2)
        supervisor = tasks.start(_supervise(ex, children))
        await asyncio.sleep(5)
        _raise_if_failed(supervisor)
        supervisor.cancel()
        await asyncio.wait({supervisor}, timeout=60)
        assert supervisor.done(), "supervise() was still running 60 s after cancel()"
        _raise_if_failed(supervisor)
        assert supervisor.cancelled(), "supervise() should end cancelled when it is cancelled"
        assert _now() == pytest.approx(7), (
            f"supervise() ended at {_now():g} s, before its child's cleanup ended (7 s)"
        )
        assert children.cleaned_up == [7], (
            f"the child's cleanup finished at {children.cleaned_up!r}, expected [7] "
            "(cancelled at 5 s, 2 s of cleanup)"
        )


@pytest.mark.exercise("1.3")
async def test_supervise_cancelled_does_not_restart_the_child(ex):
    """Cancelled while the child runs: the child is not restarted, nothing is left running."""
    async with _Tasks() as tasks:
        children = _Children(run_s=1000)
        supervisor = tasks.start(_supervise(ex, children))
        await asyncio.sleep(5)
        _raise_if_failed(supervisor)
        supervisor.cancel()
        await asyncio.wait({supervisor}, timeout=60)
        await asyncio.sleep(100)
        _raise_if_failed(supervisor)
        assert children.starts == [0], (
            f"children started at {children.starts!r}: a cancel is not a crash, never restart on it"
        )
        assert children.running == 0, "a child was left running after supervise() was cancelled"
        assert supervisor.cancelled(), "supervise() should end cancelled when it is cancelled"


@pytest.mark.exercise("1.3")
async def test_supervise_cancelled_during_the_backoff_starts_nothing(ex):
    """Cancelled while waiting to restart: ends cancelled at once, no child started later."""
    async with _Tasks() as tasks:
        children = _Children(crashes=100)
        supervisor = tasks.start(_supervise(ex, children, base_delay_s=10))
        await asyncio.sleep(5)  # the first child crashed at 0 s; the restart is due at 10 s
        _raise_if_failed(supervisor)
        supervisor.cancel()
        await asyncio.wait({supervisor}, timeout=60)
        assert supervisor.done(), "supervise() was still running 60 s after cancel()"
        _raise_if_failed(supervisor)
        assert _now() == pytest.approx(5), (
            f"supervise() ended at {_now():g} s, expected at once (5 s)"
        )
        assert supervisor.cancelled(), "supervise() should end cancelled when it is cancelled"
        await asyncio.sleep(100)
        assert children.starts == [0], (
            f"children started at {children.starts!r}: no restart after a cancel"
        )


@pytest.mark.exercise("1.3")
async def test_supervise_does_not_restart_a_child_raising_cancellederror(ex):
    """A child that raises CancelledError itself is not restarted: the CancelledError goes on."""
    async with _Tasks() as tasks:
        starts: list[float] = []

        async def child():
            starts.append(_now())
            await asyncio.sleep(1)
            raise asyncio.CancelledError("the child gave up")

        supervisor = tasks.start(
            ex.supervise(child, max_restarts=5, base_delay_s=1, max_delay_s=10)
        )
        await asyncio.wait({supervisor}, timeout=60)
        await asyncio.sleep(100)
        _raise_if_failed(supervisor)
        assert starts == [0], f"children started at {starts!r}: a CancelledError is not a crash"
        assert supervisor.cancelled(), "the child's CancelledError should come out of supervise()"


@pytest.mark.exercise("1.3")
async def test_supervise_survives_1200_restarts(ex):
    """1,200 crashes in a row: no OverflowError, waits capped at max_delay_s, result returned."""
    children = _Children(crashes=1200)
    try:
        result = await _within(
            5000,
            _supervise(ex, children, max_restarts=2000, base_delay_s=0.001, max_delay_s=1.0),
            _SUPERVISE_HANGS.format(5000),
        )
    except OverflowError:
        pytest.fail(
            f"OverflowError after {len(children.starts)} starts: base_delay_s * 2**restarts "
            "overflows a float past ~1,024 restarts; double a delay you keep, capped"
        )
    assert result == "ok", f"returned {result!r}, expected the last child's 'ok'"
    assert len(children.starts) == 1201, f"{len(children.starts)} starts, expected 1201"
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(children.starts[20:])}
    assert gaps == {1.0}, f"late waits were {sorted(gaps)!r} s, expected max_delay_s = 1 s"


@pytest.mark.exercise("1.3")
async def test_supervise_cancelled_twice_during_the_childs_cleanup(ex):
    """A second cancel during the child's cleanup: ends cancelled, no restart, nothing running."""
    async with _Tasks() as tasks:
        children = _Children(run_s=1000, cleanup_s=5)
        supervisor = tasks.start(_supervise(ex, children))
        await asyncio.sleep(5)
        _raise_if_failed(supervisor)
        supervisor.cancel()
        await asyncio.sleep(1)  # the child is cleaning up
        _raise_if_failed(supervisor)
        supervisor.cancel()
        await asyncio.wait({supervisor}, timeout=60)
        assert supervisor.done(), "supervise() was still running 60 s after a second cancel()"
        await asyncio.sleep(100)
        _raise_if_failed(supervisor)
        assert supervisor.cancelled(), "supervise() should end cancelled when it is cancelled"
        assert children.starts == [0], (
            f"children started at {children.starts!r}: no restart after a cancel"
        )
        assert children.running == 0, "a child was left running after supervise() ended"


@pytest.mark.exercise("1.3")
async def test_supervise_does_not_restart_a_child_whose_cleanup_crashes_after_a_cancel(ex):
    """Cancelled, then the child's cleanup crashes: no restart after a cancel."""
    async with _Tasks() as tasks:
        starts: list[float] = []

        async def child():
            starts.append(_now())
            try:
                await asyncio.sleep(1000)
            except asyncio.CancelledError:
                await asyncio.sleep(1)
                raise ValueError("cleanup crashed") from None

        supervisor = tasks.start(
            ex.supervise(child, max_restarts=5, base_delay_s=1, max_delay_s=10)
        )
        await asyncio.sleep(5)
        _raise_if_failed(supervisor)
        supervisor.cancel()
        await asyncio.wait({supervisor}, timeout=60)
        await asyncio.sleep(100)
        assert starts == [0], (
            f"children started at {starts!r}: a cleanup crash is no crash to restart after a "
            "cancel; compare current_task().cancelling() with its value on entry"
        )
        assert supervisor.done(), "supervise() was still running 100 s after cancel()"
        if not supervisor.cancelled():
            with pytest.raises(ValueError, match="cleanup crashed"):
                supervisor.result()


@pytest.mark.exercise("1.3")
async def test_supervise_restarts_despite_a_leftover_cancel_request(ex):
    """A cancel request left over from before supervise() began: crashes still restarted."""
    children = _Children(crashes=2)

    async def in_a_task_with_a_leftover_request():
        me = asyncio.current_task()
        me.cancel()
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            pass  # swallowed without uncancel(): cancelling() stays at 1
        assert me.cancelling() == 1, "(test setup) cancelling() should be 1"
        return await _supervise(ex, children)

    try:
        result = await _within(
            600,
            asyncio.create_task(in_a_task_with_a_leftover_request()),
            _SUPERVISE_HANGS.format(600),
        )
    except ValueError as exc:
        pytest.fail(
            f"raised {exc!r} instead of restarting: cancelling() was already 1 when supervise() "
            "began; compare it with its value on entry, as asyncio.timeout does"
        )
    assert result == "ok", (
        f"returned {result!r}: a request from before supervise() began is not ours; compare "
        "cancelling() with its value on entry, as asyncio.timeout does"
    )
    assert len(children.starts) == 3, f"{len(children.starts)} children started, expected 3"
