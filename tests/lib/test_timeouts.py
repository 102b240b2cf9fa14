"""course_lib.timeouts: Deadline, backoff_s, retry, first_completed, as_completed_within."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import pickle
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.timeouts import (
    Deadline,
    RetryError,
    as_completed_within,
    backoff_s,
    first_completed,
    retry,
)

LOGGER = "course_lib.timeouts"


def now() -> float:
    return asyncio.get_running_loop().time()


async def racer(label: str, delay_s: float, log: list[str], *, fail: bool = False,
                cleanup_s: float = 0.0) -> str:
    """Sleep delay_s, then return label (or raise); on cancel, clean up for cleanup_s."""
    try:
        await asyncio.sleep(delay_s)
    except asyncio.CancelledError:
        log.append(f"{label} cancelled at {now():g}")
        await asyncio.sleep(cleanup_s)
        log.append(f"{label} cleaned up at {now():g}")
        raise
    if fail:
        raise ConnectionError(label)
    return label


class Flaky:
    """A zero-argument callable: its first len(errors) calls fail with those errors."""

    def __init__(self, *errors: Exception, result: str = "ok", duration_s: float = 0.0) -> None:
        self.errors = list(errors)
        self.result = result
        self.duration_s = duration_s
        self.calls: list[float] = []  # loop time of each call

    def __call__(self):
        self.calls.append(now())
        return self._attempt(len(self.calls) - 1)

    async def _attempt(self, n: int) -> str:
        await asyncio.sleep(self.duration_s)
        if n < len(self.errors):
            raise self.errors[n]
        return self.result


class RecordingSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


# --- Deadline -----------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_after_is_relative_to_the_loop_clock_and_at_is_absolute():
    await asyncio.sleep(10)
    relative, absolute = Deadline.after(2.5), Deadline.at(12.5)
    assert relative.when == absolute.when == 12.5
    assert relative.remaining() == 2.5
    assert not relative.expired
    await asyncio.sleep(2.5)
    assert relative.expired and relative.remaining() == 0.0


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_remaining_is_clamped_at_zero_and_repr_says_how_long_ago():
    deadline = Deadline.after(1.25)
    assert repr(deadline) == "<Deadline in 1.25 s>"
    await asyncio.sleep(1.75)
    assert deadline.remaining() == 0.0
    assert deadline.expired
    assert repr(deadline) == "<Deadline expired 0.5 s ago>"


def test_repr_outside_a_running_loop_shows_the_loop_time():
    assert repr(Deadline.at(12.5)) == "<Deadline at loop time 12.5>"
    assert repr(Deadline.none()) == "<Deadline none>"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_none_means_no_limit():
    for deadline in (Deadline.none(), Deadline.after(None), Deadline.at(None)):
        assert deadline.when == math.inf
        assert deadline.remaining() == math.inf
        assert not deadline.expired
        assert repr(deadline) == "<Deadline none>"
        async with deadline:
            await asyncio.sleep(1e6)
    assert now() == 3e6


def test_a_nan_deadline_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        Deadline.at(math.nan)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_async_with_raises_timeout_error_when_the_deadline_passes():
    deadline = Deadline.after(3)
    with pytest.raises(TimeoutError):
        async with deadline:
            await asyncio.sleep(100)
    assert now() == 3


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_deadline_travels_to_other_tasks_as_an_absolute_time():
    deadline = Deadline.after(5)
    await asyncio.sleep(2)

    async def worker() -> float:
        try:
            async with deadline:
                await asyncio.sleep(100)
        except TimeoutError:
            return now()
        raise AssertionError("the deadline did not fire")

    assert await asyncio.gather(worker(), worker()) == [5, 5]  # same deadline, two tasks


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_tasks_sharing_a_deadline_leave_it_independently():
    deadline = Deadline.after(5)

    async def worker(work_s: float) -> str:
        try:
            async with deadline:
                await asyncio.sleep(work_s)
        except TimeoutError:
            return f"timed out at {now():g}"
        return f"done at {now():g}"

    # The short one enters first and leaves first, while the other is still inside:
    # its exit must close its own scope, not the one entered last.
    short = asyncio.create_task(worker(1))
    await asyncio.sleep(0)
    assert await asyncio.gather(worker(100), short) == ["timed out at 5", "done at 1"]


@settings(max_examples=200, deadline=None)
@given(
    parent_s=st.one_of(st.none(), st.floats(-100, 100, allow_nan=False)),
    budgets=st.lists(st.one_of(st.none(), st.floats(-100, 1e9, allow_nan=False)), max_size=4),
)
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_child_never_ends_later_than_its_parent(parent_s, budgets):
    deadline = Deadline.after(parent_s)
    for budget_s in budgets:
        child = deadline.child(budget_s)
        assert child.when <= deadline.when
        expected = deadline.when if budget_s is None else min(deadline.when, now() + budget_s)
        assert child.when == expected
        deadline = child


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_inner_deadline_that_fires_first_is_caught_inside_the_outer_one():
    outer = Deadline.after(10)
    async with outer:
        with pytest.raises(TimeoutError):
            async with outer.child(2):
                await asyncio.sleep(100)
        assert now() == 2
        await asyncio.sleep(1)  # the outer deadline still holds, and has not fired
    assert now() == 3


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_outer_deadline_that_fires_first_raises_out_of_the_outer_block_only():
    log: list[str] = []
    with pytest.raises(TimeoutError):
        async with Deadline.after(2):
            try:
                async with Deadline.after(10):
                    await asyncio.sleep(100)
            except TimeoutError:
                log.append("inner caught a TimeoutError")  # it must not: not its own
            log.append("after the inner block")
    assert log == []
    assert now() == 2


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_same_deadline_can_be_entered_again_and_nested():
    deadline = Deadline.after(5)
    async with deadline:
        await asyncio.sleep(1)
    async with deadline:  # again: a fresh asyncio.Timeout each time
        await asyncio.sleep(1)
    log: list[str] = []
    with pytest.raises(TimeoutError):
        async with deadline:
            try:
                async with deadline:
                    await asyncio.sleep(100)
            except TimeoutError:
                log.append("inner")  # both fire together: the outermost one reports it
    assert log == []
    assert now() == 5


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_deadline_in_the_past_raises_timeout_error_at_the_first_await():
    await asyncio.sleep(10)
    log: list[str] = []
    with pytest.raises(TimeoutError):
        async with Deadline.at(4):
            log.append("body starts")  # the code before the first await runs
            await asyncio.sleep(100)
            log.append("never")
    assert log == ["body starts"]
    assert now() == 10


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_outer_cancel_inside_a_deadline_stays_a_cancelled_error():
    async def victim():
        async with Deadline.after(10):
            await asyncio.sleep(100)

    task = asyncio.create_task(victim())
    await asyncio.sleep(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_outer_cancel_arriving_together_with_the_deadline_wins():
    entered = asyncio.Event()

    async def victim():
        async with Deadline.after(5):
            entered.set()
            await asyncio.sleep(100)

    task = asyncio.create_task(victim())
    await entered.wait()
    asyncio.get_running_loop().call_at(5, task.cancel)  # same loop iteration as the deadline
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled() and now() == 5


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_async_with_returns_the_deadline_itself():
    async with Deadline.after(4) as deadline:
        await asyncio.sleep(1)
        assert deadline.remaining() == 3


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_scope_is_a_fresh_asyncio_timeout_that_tells_whether_it_fired():
    deadline = Deadline.after(2)
    with pytest.raises(TimeoutError):
        async with deadline.scope() as scope:
            await asyncio.sleep(100)
    assert scope.expired() and scope.when() == 2
    assert deadline.scope() is not deadline.scope()
    assert Deadline.none().scope().when() is None


# --- backoff_s and retry -------------------------------------------------------------


def test_backoff_doubles_up_to_max_s_and_jitters_as_asked():
    caps = [backoff_s(n, base_s=0.5, max_s=3, jitter="none") for n in range(1, 6)]
    assert caps == [0.5, 1, 2, 3, 3]
    assert backoff_s(3, base_s=0.5, max_s=3, jitter="full", rand=lambda: 0.25) == 0.5
    assert backoff_s(3, base_s=0.5, max_s=3, jitter="equal", rand=lambda: 0.5) == 1.5
    assert backoff_s(10_000, base_s=0.5, max_s=3, jitter="none") == 3  # no overflow


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_retry_returns_the_first_success_after_exact_backoff_delays():
    fn = Flaky(ConnectionError("a"), ConnectionError("b"), ConnectionError("c"))
    assert await retry(fn, attempts=5, base_s=1, max_s=100, retry_on=ConnectionError,
                       jitter="none") == "ok"
    assert fn.calls == [0, 1, 3, 7]  # slept 1, 2, 4


@pytest.mark.asyncio
async def test_full_jitter_sleeps_rand_times_the_capped_delay():
    sleep = RecordingSleep()
    fn = Flaky(*(ConnectionError(str(n)) for n in range(5)))
    await retry(fn, attempts=6, base_s=1, max_s=5, retry_on=ConnectionError, sleep=sleep,
                rand=lambda: 0.5)
    assert sleep.delays == [0.5, 1, 2, 2.5, 2.5]


@pytest.mark.asyncio
async def test_equal_jitter_sleeps_half_the_cap_plus_a_random_half():
    sleep = RecordingSleep()
    fn = Flaky(ConnectionError("a"), ConnectionError("b"))
    await retry(fn, attempts=3, base_s=2, max_s=10, retry_on=ConnectionError, jitter="equal",
                sleep=sleep,
                rand=lambda: 0.5)
    assert sleep.delays == [1.5, 3]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_out_of_attempts_raises_a_retry_error_with_every_error_in_order():
    errors = [ConnectionError("a"), OSError("b"), ConnectionError("c")]
    fn = Flaky(*errors)
    with pytest.raises(RetryError) as caught:
        await retry(fn, attempts=3, base_s=1, max_s=10, retry_on=OSError, jitter="none")
    assert list(caught.value.exceptions) == errors
    assert caught.value.attempts == 3 and not caught.value.timed_out
    assert str(caught.value) == "gave up after 3 attempts (3 sub-exceptions)"
    assert now() == 3  # 1 + 2 s of backoff, and no sleep after the last attempt


@pytest.mark.asyncio
async def test_except_star_picks_errors_out_of_a_retry_error():
    fn = Flaky(ConnectionError("a"), ValueError("b"))
    try:
        await retry(fn, attempts=2, base_s=1, max_s=1, retry_on=(ConnectionError, ValueError),
                    sleep=RecordingSleep())
    except* ConnectionError as group:
        assert isinstance(group, RetryError) and group.attempts == 2
        assert [str(e) for e in group.exceptions] == ["a"]
    except* ValueError:
        pass


def test_a_retry_error_survives_pickling():
    error = RetryError("gave up", [ConnectionError("a")], 4, True)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.attempts, copy.timed_out, repr(copy)) == (4, True, repr(error))


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_non_retryable_error_is_raised_as_is_at_once():
    fn = Flaky(ConnectionError("a"), KeyError("not retryable"))
    with pytest.raises(KeyError, match="not retryable"):
        await retry(fn, attempts=5, base_s=1, max_s=10, jitter="none",
                    retry_on=(ConnectionError,))
    assert fn.calls == [0, 1]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_outer_cancel_during_an_attempt_propagates_with_no_further_attempt():
    fn = Flaky(*[ConnectionError("down")] * 5, duration_s=10)
    task = asyncio.create_task(retry(fn, attempts=5, base_s=1, max_s=1, retry_on=ConnectionError))
    await asyncio.sleep(5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled() and now() == 5
    assert fn.calls == [0]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_outer_cancel_during_the_backoff_sleep_propagates_at_once():
    fn = Flaky(*[ConnectionError("down")] * 5)
    task = asyncio.create_task(retry(fn, attempts=5, base_s=10, max_s=10, retry_on=ConnectionError,
                                     jitter="none"))
    await asyncio.sleep(5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled() and now() == 5
    assert fn.calls == [0]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_deadline_stops_the_retry_before_a_sleep_that_would_reach_it():
    errors = [ConnectionError("a"), ConnectionError("b")]
    fn = Flaky(*errors, *errors)
    with pytest.raises(RetryError) as caught:
        await retry(fn, attempts=5, base_s=4, max_s=100, retry_on=ConnectionError,
                    jitter="none", deadline=Deadline.after(10))
    assert now() == 4  # slept 4, then a backoff of 8 would have ended at 12 > 10
    assert fn.calls == [0, 4]
    assert caught.value.timed_out and caught.value.attempts == 2
    assert caught.value.exceptions[:2] == tuple(errors)
    [timeout] = caught.value.exceptions[2:]
    assert isinstance(timeout, TimeoutError) and "backoff" in str(timeout)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_deadline_passing_during_an_attempt_ends_the_retry_even_for_timeout_errors():
    fn = Flaky(ConnectionError("a"), duration_s=100)
    with pytest.raises(RetryError) as caught:
        await retry(fn, attempts=5, base_s=1, max_s=1, retry_on=(ConnectionError, TimeoutError),
                    deadline=Deadline.after(150), rand=lambda: 0.5)
    assert now() == 150 and fn.calls == [0, 100.5]
    assert caught.value.timed_out and caught.value.attempts == 2
    first, timeout = caught.value.exceptions
    assert str(first) == "a" and isinstance(timeout, TimeoutError)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_attempt_that_turns_the_deadlines_cancel_into_another_error_ends_the_retry():
    async def rude() -> None:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            raise ConnectionError("aborted") from None

    with pytest.raises(RetryError) as caught:
        await retry(rude, attempts=5, base_s=1, max_s=1, retry_on=ConnectionError,
                    deadline=Deadline.after(3))
    first, timeout = caught.value.exceptions
    assert str(first) == "aborted" and isinstance(timeout, TimeoutError)
    assert caught.value.timed_out and now() == 3


@pytest.mark.asyncio
async def test_an_exception_from_on_retry_ends_the_retry():
    def give_up(attempt: int, exc: Exception, delay_s: float) -> None:
        raise RuntimeError("circuit open")

    fn = Flaky(ConnectionError("a"))
    with pytest.raises(RuntimeError, match="circuit open"):
        await retry(fn, attempts=3, base_s=1, max_s=1, retry_on=ConnectionError,
                    sleep=RecordingSleep(), on_retry=give_up)
    assert len(fn.calls) == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_attempts_own_timeout_error_is_retried_under_the_deadline():
    fn = Flaky(TimeoutError("socket read"))
    assert await retry(fn, attempts=2, base_s=1, max_s=1, retry_on=TimeoutError, jitter="none",
                       deadline=Deadline.after(60)) == "ok"
    assert fn.calls == [0, 1]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_each_retry_is_logged_and_reported_to_on_retry(caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    seen: list[tuple[int, str, float]] = []
    fn = Flaky(ConnectionError("down"), ConnectionError("still down"))
    await retry(fn, attempts=5, base_s=0.4, max_s=10, retry_on=ConnectionError, jitter="none",
                on_retry=lambda n, exc, delay_s: seen.append((n, str(exc), delay_s)))
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        "↻ retry 2/5 in 0.4s after ConnectionError('down')",
        "↻ retry 3/5 in 0.8s after ConnectionError('still down')",
    ]
    assert seen == [(1, "down", 0.4), (2, "still down", 0.8)]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attempts": 0}, ValueError, "attempts must be an int >= 1"),
        ({"attempts": 2.5}, ValueError, "attempts must be an int >= 1"),
        ({"attempts": True}, ValueError, "attempts must be an int >= 1"),
        ({"base_s": 0}, ValueError, "base_s must be a finite number > 0"),
        ({"base_s": -1}, ValueError, "base_s must be a finite number > 0"),
        ({"base_s": math.nan}, ValueError, "base_s must be a finite number > 0"),
        ({"max_s": 0.5}, ValueError, "max_s must be finite and >= base_s"),
        ({"max_s": math.inf}, ValueError, "max_s must be finite and >= base_s"),
        ({"jitter": "half"}, ValueError, "jitter must be one of 'full', 'equal', 'none'"),
        ({"retry_on": BaseException}, TypeError, "Exception subclasses only"),
        ({"retry_on": (OSError, asyncio.CancelledError)}, TypeError, "Exception subclasses"),
        ({"retry_on": KeyboardInterrupt}, TypeError, "Exception subclasses only"),
        ({"retry_on": "OSError"}, TypeError, "Exception subclasses only"),
    ],
)
async def test_retry_refuses_bad_arguments_before_the_first_attempt(kwargs, error, match):
    fn = Flaky()
    with pytest.raises(error, match=match):
        await retry(fn, **{"attempts": 3, "base_s": 1, "max_s": 10, "retry_on": OSError, **kwargs})
    assert fn.calls == []


@pytest.mark.asyncio
async def test_retry_makes_the_caller_say_what_is_transient():
    # No default: retry_on=(Exception,) would retry a KeyError from a typo five times.
    fn = Flaky(KeyError("typo"))
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'retry_on'"):
        await retry(fn, attempts=3, base_s=1, max_s=10)  # type: ignore[call-arg]
    assert fn.calls == []
    assert inspect.signature(retry).parameters["retry_on"].default is inspect.Parameter.empty


@pytest.mark.asyncio
async def test_retry_refuses_a_coroutine_and_closes_it():
    coro = racer("a", 1, [])
    with pytest.raises(TypeError, match="zero-argument callable"):
        await retry(coro, attempts=3, base_s=1, max_s=1,  # type: ignore[arg-type]
                    retry_on=OSError)
    assert coro.cr_frame is None  # closed: no "never awaited" warning


@pytest.mark.asyncio
async def test_a_callable_that_returns_no_awaitable_is_a_type_error_not_retried():
    calls: list[int] = []
    with pytest.raises(TypeError, match="must return an awaitable"):
        await retry(lambda: calls.append(1), attempts=3, base_s=1, max_s=1, retry_on=OSError)
    assert calls == [1]


# --- first_completed ------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_fastest_success_wins_and_the_losers_are_cancelled_and_awaited():
    before = asyncio.all_tasks()
    log: list[str] = []
    winner = await first_completed(
        racer("a", 3, log, cleanup_s=0.5), racer("b", 1, log), racer("c", 2, log, cleanup_s=0.5)
    )
    assert winner == "b"
    assert sorted(log) == ["a cancelled at 1", "a cleaned up at 1.5",
                           "c cancelled at 1", "c cleaned up at 1.5"]
    assert now() == 1.5
    assert asyncio.all_tasks() == before


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_failure_does_not_win():
    log: list[str] = []
    assert await first_completed(racer("a", 1, log, fail=True), racer("b", 2, log)) == "b"
    assert now() == 2 and log == []


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_tie_goes_to_the_first_argument():
    assert await first_completed(racer("a", 1, []), racer("b", 1, [])) == "a"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_when_all_fail_an_exception_group_holds_their_errors_in_completion_order():
    with pytest.raises(ExceptionGroup) as caught:
        await first_completed(racer("a", 3, [], fail=True), racer("b", 1, [], fail=True))
    assert [str(e) for e in caught.value.exceptions] == ["b", "a"]
    assert str(caught.value) == "all 2 awaitables failed (2 sub-exceptions)"
    assert now() == 3


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_timeout_raises_timeout_error_after_the_cleanup():
    before = asyncio.all_tasks()
    log: list[str] = []
    with pytest.raises(TimeoutError, match="within 2 s") as caught:
        await first_completed(racer("a", 1, log, fail=True), racer("b", 10, log, cleanup_s=1),
                              timeout_s=2)
    assert log == ["b cancelled at 2", "b cleaned up at 3"]
    assert now() == 3
    assert [str(e) for e in caught.value.__cause__.exceptions] == ["a"]  # failures so far
    assert asyncio.all_tasks() == before


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_cancelled_caller_cancels_and_awaits_every_awaitable_before_raising():
    before = asyncio.all_tasks()
    log: list[str] = []
    caller = asyncio.create_task(
        first_completed(racer("a", 10, log, cleanup_s=2), racer("b", 20, log, cleanup_s=1))
    )
    await asyncio.sleep(1)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled()
    assert sorted(log) == ["a cancelled at 1", "a cleaned up at 3",
                           "b cancelled at 1", "b cleaned up at 2"]
    assert now() == 3
    assert asyncio.all_tasks() == before


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_second_cancel_of_the_caller_does_not_cut_the_losers_cleanup_short():
    log: list[str] = []
    caller = asyncio.create_task(first_completed(racer("a", 10, log, cleanup_s=4)))
    await asyncio.sleep(1)
    caller.cancel()
    await asyncio.sleep(1)
    caller.cancel()  # while "a" is cleaning up
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert log == ["a cancelled at 1", "a cleaned up at 5"]


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("cancels", [1, 2])
async def test_a_caller_cancelled_while_the_losers_clean_up_waits_for_them_then_raises(cancels):
    # The course's rule (course_lib.lifecycle's module doc): a winner is in, the losers
    # are cleaning up, and the caller is cancelled (twice): nothing is left running.
    before = asyncio.all_tasks()
    log: list[str] = []
    caller = asyncio.create_task(first_completed(
        racer("a", 1, log), racer("b", 10, log, cleanup_s=4), racer("c", 10, log, cleanup_s=2)
    ))
    await asyncio.sleep(2)  # "a" won at 1; "b" and "c" clean up until 5 and 3
    for _ in range(cancels):
        caller.cancel()
        await asyncio.sleep(0.5)
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert sorted(log) == ["b cancelled at 1", "b cleaned up at 5",
                           "c cancelled at 1", "c cleaned up at 3"]
    assert now() == 5 and caller.cancelling() == cancels
    assert asyncio.all_tasks() == before


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_caller_cancelled_after_the_timeout_still_waits_for_the_cleanup():
    before = asyncio.all_tasks()
    log: list[str] = []
    caller = asyncio.create_task(first_completed(racer("a", 10, log, cleanup_s=3), timeout_s=2))
    await asyncio.sleep(3)  # timed out at 2: "a" cleans up until 5
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):  # the cancel, not the TimeoutError
        await caller
    assert log == ["a cancelled at 2", "a cleaned up at 5"] and now() == 5
    assert asyncio.all_tasks() == before


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_loser_that_delays_its_cancellation_is_awaited_with_a_warning(caplog):
    before = asyncio.all_tasks()

    async def stubborn() -> str:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            await asyncio.sleep(8)  # swallows the cancel, finishes its work anyway
        return "late"

    assert await first_completed(asyncio.sleep(1, "fast"), stubborn()) == "fast"
    assert now() == 9
    [warning] = [r for r in caplog.records if r.name == LOGGER]
    assert warning.levelno == logging.WARNING
    assert "still waiting 5.0 s after cancel()" in warning.getMessage()
    assert asyncio.all_tasks() == before


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_loser_failing_in_its_cleanup_is_logged(caplog):
    async def broken() -> str:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            raise OSError("could not close the socket") from None
        return "never"

    assert await first_completed(asyncio.sleep(1, "fast"), broken()) == "fast"
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert record.levelno == logging.ERROR and "raised while being cancelled" in record.message


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_futures_are_accepted_and_cancelled_when_they_lose():
    loop = asyncio.get_running_loop()
    fast, slow = loop.create_future(), loop.create_future()
    loop.call_later(1, fast.set_result, "future")
    assert await first_completed(slow, fast, racer("coro", 2, [])) == "future"
    assert slow.cancelled()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_candidate_cancelled_by_someone_else_counts_as_failed():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_later(1, fut.cancel)
    with pytest.raises(BaseExceptionGroup) as caught:
        await first_completed(fut, racer("a", 2, [], fail=True))
    assert not isinstance(caught.value, ExceptionGroup)  # it holds a CancelledError
    assert [type(e) for e in caught.value.exceptions] == [asyncio.CancelledError, ConnectionError]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager task factory: Python 3.12+")
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_first_completed_under_an_eager_task_factory():
    async def instant() -> str:
        return "instant"  # finishes while its task is being created

    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)
    log: list[str] = []
    try:
        assert await first_completed(racer("slow", 5, log), instant()) == "instant"
    finally:
        loop.set_task_factory(None)
    assert log == ["slow cancelled at 0", "slow cleaned up at 0"]  # it had started eagerly


@pytest.mark.asyncio
async def test_first_completed_refuses_no_awaitables_a_bad_timeout_and_non_awaitables():
    with pytest.raises(ValueError, match="at least one awaitable"):
        await first_completed()
    coro = racer("a", 1, [])
    with pytest.raises(ValueError, match="timeout_s must be >= 0"):
        await first_completed(coro, timeout_s=-1)
    assert coro.cr_frame is None  # closed, not left to warn "never awaited"
    coro = racer("a", 1, [])
    with pytest.raises(TypeError, match="not awaitable: 42"):
        await first_completed(coro, 42)  # type: ignore[arg-type]
    assert coro.cr_frame is None


# --- as_completed_within --------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_as_completed_within_yields_in_completion_order_until_the_deadline():
    before = asyncio.all_tasks()
    log: list[str] = []
    got: list[str] = []
    async with as_completed_within(
        [racer("a", 3, log), racer("b", 1, log, fail=True), racer("c", 10, log, cleanup_s=1)],
        timeout_s=5,
    ) as done:
        async for fut in done:
            got.append(repr(fut.exception()) if fut.exception() else fut.result())
        assert done.timed_out and now() == 5
    assert got == ["ConnectionError('b')", "a"]
    assert log == ["c cancelled at 5", "c cleaned up at 6"]
    assert asyncio.all_tasks() == before


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_as_completed_within_ends_without_timing_out_when_all_are_done():
    async with as_completed_within([racer("a", 2, []), racer("b", 1, [])], timeout_s=5) as done:
        assert [fut.result() async for fut in done] == ["b", "a"]
    assert not done.timed_out and now() == 2


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_leaving_as_completed_within_early_cancels_and_awaits_the_rest():
    before = asyncio.all_tasks()
    log: list[str] = []
    async with as_completed_within([racer("a", 1, log), racer("b", 5, log, cleanup_s=2)]) as done:
        async for fut in done:
            assert fut.result() == "a"
            break
    assert log == ["b cancelled at 1", "b cleaned up at 3"]
    assert asyncio.all_tasks() == before


@pytest.mark.asyncio
async def test_as_completed_within_must_be_entered_before_iterating_and_only_once():
    completions = as_completed_within([asyncio.sleep(0)])
    with pytest.raises(RuntimeError, match="enter it first"):
        async for _ in completions:
            pass
    async with completions:
        with pytest.raises(RuntimeError, match="cannot be entered twice"):
            async with completions:
                pass
