"""Grading tests for exercises 2.1-2.3 (notebooks/02_timeouts.ipynb).

Every task a test starts, and every task the code under test leaves behind, is
stopped at the end of the test's own body (fixture teardown would run on the real
clock, not the virtual one); every wait on the code under test has a virtual-time
bound, so that a wrong answer that swallows cancellation fails its own checks and
never hangs or leaks into the next test.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterable
from typing import Any

import pytest
from _support import _Cleanup, _outcome, _raise_if_failed, _said, _within

MODULE = "ch02_timeouts"
pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]


def _now() -> float:
    """The loop's (virtual) time, rounded to the microsecond so that times compare exactly."""
    return round(asyncio.get_running_loop().time(), 6)



@contextlib.contextmanager
def _asyncio_logs():
    """``with _asyncio_logs() as logged:`` the first lines of what asyncio logs meanwhile."""
    logged: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage().partition("\n")[0])
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield logged
    finally:
        logger.removeHandler(handler)


# --- 2.1 first_within --------------------------------------------------------------------


class _Race(_Cleanup):
    """Racing coroutines that log, as (time, "name event"), what happens to them."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[float, str]] = []

    def racer(
        self,
        name: str,
        run_s: float,
        *,
        result: Any = None,
        error: Exception | None = None,
        cleanup_s: float = 0,
        cleanup_error: Exception | None = None,
    ):
        """A coroutine that runs ``run_s``, then returns ``result`` (or raises ``error``);
        cancelled, it cleans up for ``cleanup_s`` (then raises ``cleanup_error``, if any)."""
        return self.track(self._run(name, run_s, result, error, cleanup_s, cleanup_error))

    async def _run(self, name, run_s, result, error, cleanup_s, cleanup_error):
        try:
            await asyncio.sleep(run_s)
        except asyncio.CancelledError:
            self.log.append((_now(), f"{name} cancelled"))
            await asyncio.sleep(cleanup_s)
            self.log.append((_now(), f"{name} cleaned up"))
            if cleanup_error is not None:
                raise cleanup_error from None
            raise
        if error is not None:
            self.log.append((_now(), f"{name} failed"))
            raise error
        self.log.append((_now(), f"{name} returned"))
        return result

    def events(self, *words: str) -> list[str]:
        return [event for _, event in self.log if any(word in event for word in words)]

    def assert_nothing_left_running(self, when: str) -> None:
        left = self.leftovers()
        assert not left, (
            f"{when}, {len(left)} of its tasks were still running: cancel the others, "
            "then wait until they have ended (asyncio.wait)"
        )


_RACE_HANGS = "first_within() was still running after {} s"


@pytest.mark.exercise("2.1")
async def test_first_within_returns_the_fastest_result(ex):
    """The first result to arrive wins: 'fast' (1 s) beats 'mid' (2 s) and 'slow' (3 s)."""
    async with _Race() as race:
        result = await _within(
            60,
            ex.first_within(
                10,
                race.racer("slow", 3, result="slow"),
                race.racer("fast", 1, result="fast"),
                race.racer("mid", 2, result="mid"),
            ),
            _RACE_HANGS.format(60),
        )
        assert result == "fast", f"returned {result!r}, expected 'fast', the first to finish"
        assert _now() == pytest.approx(1), f"returned at {_now():g} s, expected at 1 s"


@pytest.mark.exercise("2.1")
async def test_first_within_leaves_no_task_running(ex):
    """When it returns, the losers are cancelled and none of its tasks is still running."""
    async with _Race() as race:
        await _within(
            60,
            ex.first_within(10, race.racer("slow", 5), race.racer("fast", 1), race.racer("mid", 3)),
            _RACE_HANGS.format(60),
        )
        race.assert_nothing_left_running("when first_within() returned")
        await asyncio.sleep(100)
        finished = race.events("slow returned", "mid returned")
        assert not finished, f"losers ran to the end: {finished!r}; cancel them"
        assert sorted(race.events("cancelled")) == ["mid cancelled", "slow cancelled"], (
            f"the losers were not cancelled: log {race.log!r}"
        )


@pytest.mark.exercise("2.1")
async def test_first_within_returns_only_after_the_losers_cleanup(ex):
    """It returns only once the losers' cleanup (2 s of awaiting) has finished."""
    async with _Race() as race:
        await _within(
            60,
            ex.first_within(
                10,
                race.racer("slow", 5, cleanup_s=2),
                race.racer("fast", 1, result="fast"),
                race.racer("mid", 3, cleanup_s=2),
            ),
            _RACE_HANGS.format(60),
        )
        race.log.append((_now(), "first_within returned"))
        order = [event for _, event in race.log]
        assert order.index("first_within returned") > max(
            (i for i, e in enumerate(order) if "cleaned up" in e), default=len(order)
        ), f"it returned before the losers had cleaned up: {order!r}; await them after cancel()"
        assert _now() == pytest.approx(3), (
            f"returned at {_now():g} s, expected 3 s: won at 1 s, then 2 s of the losers' cleanup"
        )


@pytest.mark.exercise("2.1")
async def test_first_within_a_failure_does_not_win(ex):
    """One that fails at 1 s does not win: the success at 2 s is returned."""
    async with _Race() as race:
        outcome = await _outcome(
            60,
            ex.first_within(
                10,
                race.racer("broken", 1, error=ValueError("broken")),
                race.racer("ok", 2, result="ok"),
            ),
            _RACE_HANGS.format(60),
        )
        assert outcome == ("returned", "ok"), (
            f"it {_said(outcome)}, expected 'ok': a failure does not win, keep waiting"
        )
        assert _now() == pytest.approx(2), f"returned at {_now():g} s, expected at 2 s"


@pytest.mark.exercise("2.1")
async def test_first_within_all_failing_raises_an_exceptiongroup_of_every_error(ex):
    """All fail: an ExceptionGroup of their errors, in the order given, once the last fails."""
    async with _Race() as race:
        errors = [ValueError("a"), KeyError("b"), OSError("c")]
        outcome = await _outcome(
            60,
            ex.first_within(
                10,
                race.racer("a", 3, error=errors[0]),
                race.racer("b", 1, error=errors[1]),
                race.racer("c", 2, error=errors[2]),
            ),
            _RACE_HANGS.format(60),
        )
        how, error = outcome
        assert how == "raised" and isinstance(error, ExceptionGroup), (
            f"it {_said(outcome)}, expected an ExceptionGroup of all three errors"
        )
        assert list(error.exceptions) == errors, (
            f"the group holds {list(error.exceptions)!r}, expected {errors!r} "
            "(one per awaitable, in the order given)"
        )
        assert _now() == pytest.approx(3), (
            f"raised at {_now():g} s, expected 3 s, when the last one failed"
        )


@pytest.mark.exercise("2.1")
async def test_first_within_raises_timeouterror_at_the_deadline(ex):
    """No success within deadline_s=5: TimeoutError at 5 s, the racers cancelled and ended."""
    async with _Race() as race:
        outcome = await _outcome(
            60,
            ex.first_within(5, race.racer("a", 10), race.racer("b", 20)),
            _RACE_HANGS.format(60),
        )
        how, error = outcome
        assert how == "raised" and isinstance(error, TimeoutError), (
            f"it {_said(outcome)}, expected TimeoutError"
        )
        assert _now() == pytest.approx(5), f"raised at {_now():g} s, expected at 5 s"
        race.assert_nothing_left_running("when first_within() raised TimeoutError")
        assert sorted(race.events("cancelled")) == ["a cancelled", "b cancelled"], (
            f"the racers were not cancelled: log {race.log!r}"
        )


@pytest.mark.exercise("2.1")
async def test_first_within_at_the_deadline_waits_for_the_cleanup_then_raises(ex):
    """At the deadline (5 s) the racers clean up (2 s), then TimeoutError, at 7 s."""
    async with _Race() as race:
        outcome = await _outcome(
            60,
            ex.first_within(5, race.racer("a", 10, cleanup_s=2), race.racer("b", 20, cleanup_s=2)),
            _RACE_HANGS.format(60),
        )
        how, error = outcome
        assert how == "raised" and isinstance(error, TimeoutError), (
            f"it {_said(outcome)}, expected TimeoutError"
        )
        cleaned = [t for t, e in race.log if "cleaned up" in e]
        assert cleaned == [7, 7], f"racers cleaned up at {cleaned!r} s, expected [7, 7]"
        assert _now() == pytest.approx(7), (
            f"raised at {_now():g} s, expected 7 s: the deadline (5 s), then 2 s of cleanup"
        )


@pytest.mark.exercise("2.1")
async def test_first_within_with_a_deadline_already_passed_raises_timeouterror(ex):
    """deadline_s=0 or below: TimeoutError at once, nothing runs to the end."""
    async with _Race() as race:
        for deadline_s in (0, -1):
            outcome = await _outcome(
                60,
                ex.first_within(deadline_s, race.racer("a", 1), race.racer("b", 2)),
                _RACE_HANGS.format(60),
            )
            how, error = outcome
            assert how == "raised" and isinstance(error, TimeoutError), (
                f"deadline_s={deadline_s}: it {_said(outcome)}, expected TimeoutError"
            )
            assert _now() == pytest.approx(0), (
                f"deadline_s={deadline_s}: raised at {_now():g} s, expected at once (0 s)"
            )
            race.assert_nothing_left_running(f"deadline_s={deadline_s}: when it raised")
        await asyncio.sleep(10)
        assert not race.events("returned"), f"racers ran to the end: {race.log!r}"


@pytest.mark.exercise("2.1")
async def test_first_within_cancelled_cancels_and_awaits_the_racers(ex):
    """Cancelled itself at 1 s: racers clean up (2 s), then it ends cancelled, at 3 s."""
    async with _Race() as race:
        caller = race.start(
            ex.first_within(10, race.racer("a", 5, cleanup_s=2), race.racer("b", 8, cleanup_s=2))
        )
        await asyncio.sleep(1)
        _raise_if_failed(caller)
        assert not caller.done(), (
            f"first_within() returned {caller.result()!r} at 1 s, before any racer finished"
        )
        caller.cancel()
        await asyncio.wait({caller}, timeout=60)
        assert caller.done(), "first_within() was still running 60 s after it was cancelled"
        _raise_if_failed(caller)
        assert caller.cancelled(), (
            f"first_within() was cancelled but returned {caller.result()!r}: "
            "let the CancelledError go on after the cleanup"
        )
        assert _now() == pytest.approx(3), (
            f"it ended at {_now():g} s, expected 3 s: cancelled at 1 s, then 2 s of cleanup"
        )
        cleaned = [t for t, e in race.log if "cleaned up" in e]
        assert cleaned == [3, 3], (
            f"racers cleaned up at {cleaned!r} s, expected [3, 3]: cancel them, then await them"
        )
        race.assert_nothing_left_running("when first_within() ended cancelled")


@pytest.mark.exercise("2.1")
async def test_first_within_drops_what_a_loser_raises_in_its_cleanup(ex):
    """A loser whose cleanup raises does not change the result, and its error is retrieved."""
    async with _Race() as race:
        with _asyncio_logs() as logged:
            outcome = await _outcome(
                60,
                ex.first_within(
                    10,
                    race.racer(
                        "loser", 5, cleanup_s=1, cleanup_error=RuntimeError("cleanup failed")
                    ),
                    race.racer("winner", 1, result="winner"),
                ),
                _RACE_HANGS.format(60),
            )
            assert outcome == ("returned", "winner"), (
                f"it {_said(outcome)}, expected 'winner': what a loser raises once cancelled is "
                "dropped (asyncio.wait, or gather(..., return_exceptions=True))"
            )
            await asyncio.sleep(1)
            gc.collect()  # the loser's task is freed: asyncio complains if nobody looked
        unretrieved = [line for line in logged if "never retrieved" in line]
        assert not unretrieved, (
            "asyncio logged 'Task exception was never retrieved': after waiting for the "
            "losers, look at each one's outcome (task.exception()) to drop it"
        )


@pytest.mark.exercise("2.1")
async def test_first_within_without_awaitables_raises_valueerror(ex):
    """No awaitables at all: ValueError."""
    with pytest.raises(ValueError):
        await _within(60, ex.first_within(10), _RACE_HANGS.format(60))


# --- 2.2 retry ---------------------------------------------------------------------------


class _Flaky:
    """``fn`` for retry(): each call makes a new coroutine that records its start, runs
    ``run_s``, fails ``fails`` times in all (ValueError "fail N"), then returns "ok"."""

    def __init__(self, fails: int = 0, run_s: float = 0) -> None:
        self.fails = fails
        self.run_s = run_s
        self.starts: list[float] = []
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return self._attempt()

    async def _attempt(self) -> str:
        self.starts.append(_now())
        n = len(self.starts)
        await asyncio.sleep(self.run_s)
        if n <= self.fails:
            raise ValueError(f"fail {n}")
        return "ok"


class _Sleeps:
    """An injected ``sleep``: records each delay, then sleeps it (in virtual time)."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(delay)


def _rands(values: Iterable[float]):
    """An injected ``rand``: gives ``values`` one after the other."""
    it = iter(values)

    def rand() -> float:
        try:
            return next(it)
        except StopIteration:
            pytest.fail("rand() was called more often than once per wait")

    return rand


_RETRY_HANGS = "retry() was still running after {} s"


def _retry(ex, fn, *, attempts=10, base_s=1, max_s=100, rand=lambda: 0.5, **kwargs):
    return ex.retry(fn, attempts=attempts, base_s=base_s, max_s=max_s, rand=rand, **kwargs)


@pytest.mark.exercise("2.2")
async def test_retry_returns_the_first_success_at_once(ex):
    """A first attempt that succeeds: its value, at once, with no wait and no second call."""
    flaky, sleeps = _Flaky(run_s=2), _Sleeps()
    outcome = await _outcome(600, _retry(ex, flaky, sleep=sleeps), _RETRY_HANGS.format(600))
    assert outcome == ("returned", "ok"), f"it {_said(outcome)}, expected 'ok'"
    assert flaky.starts == [0], f"attempts started at {flaky.starts!r} s, expected [0]"
    assert sleeps.delays == [], f"it waited {sleeps.delays!r} after a success"
    assert _now() == pytest.approx(2), f"returned at {_now():g} s, expected 2 s"


@pytest.mark.exercise("2.2")
async def test_retry_backs_off_exponentially_with_jitter(ex):
    """rand()=0.5, base_s=1: waits 0.5, 1, 2 s, attempts at 0, 0.5, 1.5, 3.5 s."""
    flaky = _Flaky(fails=3)
    outcome = await _outcome(600, _retry(ex, flaky), _RETRY_HANGS.format(600))
    assert flaky.starts == [0, 0.5, 1.5, 3.5], (
        f"attempts started at {flaky.starts!r} s, expected [0, 0.5, 1.5, 3.5] "
        "(waits of 0.5 * 1, 0.5 * 2, 0.5 * 4 s)"
    )
    assert outcome == ("returned", "ok"), f"it {_said(outcome)}, expected 'ok'"


@pytest.mark.exercise("2.2")
async def test_retry_caps_the_wait_at_max_s(ex):
    """rand()=1, base_s=1, max_s=3: waits 1, 2, 3, 3, 3 s."""
    flaky = _Flaky(fails=5)
    await _outcome(600, _retry(ex, flaky, max_s=3, rand=lambda: 1.0), _RETRY_HANGS.format(600))
    assert flaky.starts == [0, 1, 3, 6, 9, 12], (
        f"attempts started at {flaky.starts!r} s, expected [0, 1, 3, 6, 9, 12] "
        "(waits of 1, 2, 3, 3, 3 s: never more than max_s)"
    )


@pytest.mark.exercise("2.2")
async def test_retry_scales_each_wait_by_a_fresh_rand(ex):
    """Full jitter: rand() gives 0.25, 1, 0, 0.5, so base_s=2 waits 0.5, 4, 0, 8 s."""
    flaky, sleeps = _Flaky(fails=4), _Sleeps()
    await _outcome(
        600,
        _retry(ex, flaky, base_s=2, rand=_rands([0.25, 1.0, 0.0, 0.5]), sleep=sleeps),
        _RETRY_HANGS.format(600),
    )
    assert flaky.starts == [0, 0.5, 4.5, 4.5, 12.5], (
        f"attempts started at {flaky.starts!r} s, expected [0, 0.5, 4.5, 4.5, 12.5]: each wait "
        "is rand() * the cap (2, 4, 8, 16 s), so rand()=0 retries at once"
    )


@pytest.mark.exercise("2.2")
async def test_retry_waits_with_the_sleep_it_is_given(ex):
    """Waits go through the sleep function it is given: 0.5, 1, 2 s."""
    flaky, sleeps = _Flaky(fails=3), _Sleeps()
    await _outcome(600, _retry(ex, flaky, sleep=sleeps), _RETRY_HANGS.format(600))
    assert sleeps.delays == [0.5, 1, 2], (
        f"the sleep function given was called with {sleeps.delays!r}, expected [0.5, 1, 2]"
        + (": wait with `await sleep(delay)`, not asyncio.sleep" if not sleeps.delays else "")
    )


@pytest.mark.exercise("2.2")
async def test_retry_gives_up_after_attempts_with_every_error(ex):
    """After 3 failed attempts: ExceptionGroup of the 3 errors, at once, with no last wait."""
    flaky, sleeps = _Flaky(fails=100), _Sleeps()
    outcome = await _outcome(
        600, _retry(ex, flaky, attempts=3, rand=lambda: 1.0, sleep=sleeps), _RETRY_HANGS.format(600)
    )
    assert flaky.starts == [0, 1, 3], (
        f"attempts started at {flaky.starts!r} s, expected [0, 1, 3] (3 attempts)"
    )
    how, error = outcome
    assert how == "raised" and isinstance(error, ExceptionGroup), (
        f"it {_said(outcome)}, expected an ExceptionGroup of the 3 errors"
    )
    said = [str(e) for e in error.exceptions]
    assert said == ["fail 1", "fail 2", "fail 3"], (
        f"the group holds {said!r}, expected ['fail 1', 'fail 2', 'fail 3'] (in order)"
    )
    assert sleeps.delays == [1, 2] and _now() == pytest.approx(3), (
        f"waits {sleeps.delays!r}, gave up at {_now():g} s; expected waits [1, 2], giving up "
        "at 3 s, when the last attempt failed: no wait after it"
    )


@pytest.mark.exercise("2.2")
async def test_retry_with_one_attempt_never_retries(ex):
    """attempts=1: the one failure is raised at once, in an ExceptionGroup of one."""
    flaky, sleeps = _Flaky(fails=100, run_s=2), _Sleeps()
    outcome = await _outcome(
        600, _retry(ex, flaky, attempts=1, sleep=sleeps), _RETRY_HANGS.format(600)
    )
    how, error = outcome
    assert how == "raised" and isinstance(error, ExceptionGroup), (
        f"it {_said(outcome)}, expected an ExceptionGroup of the one error"
    )
    assert [str(e) for e in error.exceptions] == ["fail 1"], f"the group is {error!r}"
    assert flaky.starts == [0], f"attempts started at {flaky.starts!r} s, expected [0]"
    assert sleeps.delays == [] and _now() == pytest.approx(2), (
        f"waits {sleeps.delays!r}, gave up at {_now():g} s; expected no wait, at 2 s"
    )


@pytest.mark.exercise("2.2")
async def test_retry_calls_fn_afresh_for_each_attempt(ex):
    """Each attempt awaits a new fn() (a coroutine can be awaited only once)."""
    flaky = _Flaky(fails=2)
    outcome = await _outcome(600, _retry(ex, flaky), _RETRY_HANGS.format(600))
    assert flaky.calls == 3, (
        f"fn() was called {flaky.calls} time(s) for 3 attempts: call it again for each attempt"
    )
    assert outcome == ("returned", "ok"), f"it {_said(outcome)}, expected 'ok'"


@pytest.mark.exercise("2.2")
async def test_retry_cancelled_during_a_wait_stops_at_once(ex):
    """Cancelled while waiting to retry: ends cancelled at once, no further attempt."""
    async with _Cleanup() as tasks:
        flaky = _Flaky(fails=100)
        retrying = tasks.start(_retry(ex, flaky, base_s=10, rand=lambda: 1.0))
        await asyncio.sleep(5)  # the first attempt failed at 0 s; the next is due at 10 s
        _raise_if_failed(retrying)
        retrying.cancel()
        await asyncio.wait({retrying}, timeout=60)
        assert retrying.done(), "retry() was still running 60 s after it was cancelled"
        _raise_if_failed(retrying)
        assert retrying.cancelled(), (
            f"retry() was cancelled but returned {retrying.result()!r}: a cancel is never retried"
        )
        assert _now() == pytest.approx(5), f"it ended at {_now():g} s, expected at once (5 s)"
        await asyncio.sleep(100)
        assert flaky.starts == [0], (
            f"attempts started at {flaky.starts!r} s: no attempt after a cancel"
        )


@pytest.mark.exercise("2.2")
async def test_retry_cancelled_during_an_attempt_stops_at_once(ex):
    """Cancelled during an attempt: ends cancelled at once, the attempt is not retried."""
    async with _Cleanup() as tasks:
        flaky = _Flaky(run_s=100)
        retrying = tasks.start(_retry(ex, flaky))
        await asyncio.sleep(5)
        _raise_if_failed(retrying)
        retrying.cancel()
        await asyncio.wait({retrying}, timeout=60)
        assert retrying.done(), "retry() was still running 60 s after it was cancelled"
        _raise_if_failed(retrying)
        assert retrying.cancelled(), (
            f"retry() was cancelled but returned {retrying.result()!r}: a cancel is never retried"
        )
        assert _now() == pytest.approx(5), f"it ended at {_now():g} s, expected at once (5 s)"
        await asyncio.sleep(200)
        assert flaky.starts == [0], (
            f"attempts started at {flaky.starts!r} s: a CancelledError is not a failure to "
            "retry (catch Exception, not BaseException)"
        )


@pytest.mark.exercise("2.2")
async def test_retry_does_not_retry_a_cancellederror_raised_by_fn(ex):
    """fn() raising CancelledError itself is not retried: the CancelledError goes on."""
    async with _Cleanup() as tasks:
        starts: list[float] = []

        async def gives_up():
            starts.append(_now())
            await asyncio.sleep(1)
            raise asyncio.CancelledError("gave up")

        retrying = tasks.start(_retry(ex, gives_up))
        await asyncio.wait({retrying}, timeout=60)
        await asyncio.sleep(100)
        _raise_if_failed(retrying)
        assert starts == [0], f"attempts started at {starts!r} s: a CancelledError is not retried"
        assert retrying.cancelled(), "fn()'s CancelledError should come out of retry()"


@pytest.mark.exercise("2.2")
async def test_retry_with_attempts_below_one_raises_valueerror(ex):
    """attempts=0: ValueError, and fn() is never called."""
    flaky = _Flaky()
    with pytest.raises(ValueError):
        await _within(600, _retry(ex, flaky, attempts=0), _RETRY_HANGS.format(600))
    assert flaky.calls == 0, "fn() was called with attempts=0"


# --- 2.3 Deadline ------------------------------------------------------------------------


def _expired(deadline) -> bool:
    """``deadline.expired``, checked to be a property (a method would always look true)."""
    expired = deadline.expired
    assert not callable(expired), "expired is a method: make it a property (@property)"
    return expired


@pytest.mark.exercise("2.3")
async def test_deadline_after_counts_from_the_loops_clock(ex):
    """Deadline.after(10) at 3 s has when=13; Deadline(20) has when=20."""
    await asyncio.sleep(3)
    after = ex.Deadline.after(10)
    assert after.when == pytest.approx(13), (
        f"Deadline.after(10) at 3 s has when={after.when!r}, expected 13: "
        "asyncio.get_running_loop().time() + seconds"
    )
    at = ex.Deadline(20)
    assert at.when == pytest.approx(20), f"Deadline(20).when is {at.when!r}, expected 20"
    assert at.remaining() == pytest.approx(17), (
        f"Deadline(20).remaining() at 3 s is {at.remaining()!r}, expected 17"
    )


@pytest.mark.exercise("2.3")
async def test_deadline_remaining_and_expired_follow_the_clock(ex):
    """remaining() counts down to 0 and never below; expired turns True when it reaches 0."""
    deadline = ex.Deadline.after(10)
    for wait_s, remaining_s, expired in ((0, 10, False), (4, 6, False), (6, 0, True), (5, 0, True)):
        await asyncio.sleep(wait_s)
        got = deadline.remaining()
        assert got == pytest.approx(remaining_s), (
            f"at {_now():g} s remaining() is {got!r}, expected {remaining_s}"
            + (" (never below 0)" if got < 0 else "")
        )
        assert _expired(deadline) is expired, (
            f"at {_now():g} s expired is {deadline.expired!r}, expected {expired}"
        )


@pytest.mark.exercise("2.3")
async def test_deadline_child_never_outlives_its_parent(ex):
    """A child's budget is capped by its parent: child(10) of a 5 s deadline ends at 5 s."""
    parent = ex.Deadline.after(5)
    child = parent.child(10)
    assert child.when == pytest.approx(5), (
        f"child(10) of a deadline at 5 s has when={child.when!r}, expected 5: "
        "min(now + budget_s, parent.when)"
    )
    await asyncio.sleep(7)
    late = parent.child(1)
    assert _expired(late) is True, (
        f"child(1) of a deadline that passed 2 s ago has when={late.when!r}: it should be "
        "expired already"
    )


@pytest.mark.exercise("2.3")
async def test_deadline_child_with_a_smaller_budget_ends_first(ex):
    """child(3) made at 2 s of a deadline at 10 s ends at 5 s; the parent still at 10 s."""
    parent = ex.Deadline.after(10)
    await asyncio.sleep(2)
    child = parent.child(3)
    assert child.when == pytest.approx(5), (
        f"child(3) made at 2 s has when={child.when!r}, expected 5 (2 s + 3 s)"
    )
    assert parent.when == pytest.approx(10), f"the parent's when changed to {parent.when!r}"
    grandchild = child.child(100)
    assert grandchild.when == pytest.approx(5), (
        f"child(100) of the child has when={grandchild.when!r}, expected the child's 5"
    )


@pytest.mark.exercise("2.3")
async def test_deadline_async_with_raises_timeouterror_when_it_passes(ex):
    """`async with deadline as d` gives the deadline; an overrun gets TimeoutError right at it."""
    deadline = ex.Deadline.after(5)
    async with deadline as entered:
        await asyncio.sleep(1)  # well within the deadline
    assert entered is deadline, f"`async with deadline as d` gave {entered!r}, not the deadline"
    reached = []
    with pytest.raises(TimeoutError):
        async with deadline:
            await asyncio.sleep(100)
            reached.append(_now())
    assert reached == [], f"the block ran to the end at {reached!r} s: apply asyncio.timeout_at()"
    assert _now() == pytest.approx(5), f"TimeoutError at {_now():g} s, expected 5 s"


@pytest.mark.exercise("2.3")
async def test_deadline_child_fires_first_and_the_parent_goes_on(ex):
    """A 2 s child inside a 10 s parent: TimeoutError at 2 s, caught inside; the parent goes on."""
    parent = ex.Deadline.after(10)
    fired = []
    async with parent:
        try:
            async with parent.child(2):
                await asyncio.sleep(100)
        except TimeoutError:
            fired.append(_now())
        await asyncio.sleep(3)  # still inside the parent, which has 8 s left
    assert fired == [2], f"the child's TimeoutError came at {fired!r} s, expected [2]"
    assert not _expired(parent), "the parent expired, but it had time left"
    assert _now() == pytest.approx(5), f"the parent's block ended at {_now():g} s, expected 5 s"


@pytest.mark.exercise("2.3")
async def test_deadline_parent_fires_inside_the_child(ex):
    """The parent (3 s) fires inside a child(100): TimeoutError out of the parent's block at 3 s."""
    parent = ex.Deadline.after(3)
    after_child = []
    with pytest.raises(TimeoutError):
        async with parent:
            async with parent.child(100):
                await asyncio.sleep(50)
            after_child.append(_now())
    assert after_child == [], (
        f"code after the child's block ran at {after_child!r} s: the parent's deadline had passed"
    )
    assert _now() == pytest.approx(3), f"TimeoutError at {_now():g} s, expected 3 s"


@pytest.mark.exercise("2.3")
async def test_deadline_does_not_claim_an_outer_deadlines_timeout(ex):
    """An outer deadline (3 s) firing inside an inner one (100 s) is the outer's TimeoutError."""
    outer, inner = ex.Deadline.after(3), ex.Deadline.after(100)
    claimed = []
    with pytest.raises(TimeoutError):
        async with outer:
            try:
                async with inner:
                    await asyncio.sleep(50)
            except TimeoutError:
                claimed.append(_now())
                raise
    assert claimed == [], (
        "the inner deadline raised TimeoutError when the outer one fired: turn only your own "
        "cancel into TimeoutError (asyncio.timeout_at does), let others go on"
    )
    assert _now() == pytest.approx(3), f"TimeoutError at {_now():g} s, expected 3 s"


@pytest.mark.exercise("2.3")
async def test_deadline_lets_an_outer_cancel_through(ex):
    """task.cancel() inside `async with deadline` ends the task cancelled, not TimeoutError."""
    async with _Cleanup() as tasks:
        deadline = ex.Deadline.after(100)

        async def guarded():
            async with deadline:
                await asyncio.sleep(1000)

        task = tasks.start(guarded())
        await asyncio.sleep(5)
        _raise_if_failed(task)
        task.cancel()
        await asyncio.wait({task}, timeout=60)
        assert task.done(), "the task was still running 60 s after it was cancelled"
        if not task.cancelled():
            error = task.exception()
            pytest.fail(
                f"the cancelled task ended with {error!r}, not cancelled: only the deadline's "
                "own cancel becomes TimeoutError"
                if error
                else "the cancelled task returned normally: the CancelledError was swallowed"
            )


@pytest.mark.exercise("2.3")
async def test_deadline_already_passed_raises_timeouterror_at_once(ex):
    """A deadline that has passed: TimeoutError at the first await inside, at once."""
    await asyncio.sleep(10)
    for deadline in (ex.Deadline(5), ex.Deadline.after(0), ex.Deadline.after(-1)):
        finished = []
        with pytest.raises(TimeoutError):
            async with deadline:
                await asyncio.sleep(1)
                finished.append(_now())
        assert finished == [], f"{deadline!r}, already passed, let the block run to the end"
        assert _now() == pytest.approx(10), f"TimeoutError at {_now():g} s, expected at once (10 s)"


@pytest.mark.exercise("2.3")
async def test_deadline_can_be_entered_again(ex):
    """The same Deadline entered a second time, after the first block: it fires at its time."""
    deadline = ex.Deadline.after(10)
    async with deadline:
        await asyncio.sleep(1)
    with pytest.raises(TimeoutError):
        async with deadline:
            await asyncio.sleep(100)
    assert _now() == pytest.approx(10), f"TimeoutError at {_now():g} s, expected 10 s"
    with pytest.raises(TimeoutError):
        async with deadline:  # a third time, now that it has passed
            await asyncio.sleep(1)
    assert _now() == pytest.approx(10), f"TimeoutError at {_now():g} s, expected at once (10 s)"
