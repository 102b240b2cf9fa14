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


async def _settle(race: _Race) -> None:
    """Let what a wrong answer left running end, so its outcome cannot spill into the test."""
    for task in race.leftovers():
        await asyncio.wait({task}, timeout=60)


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
async def test_first_within_cancelled_during_the_losers_cleanup_still_waits_for_it(ex):
    """Cancelled at 2 s, while the losers clean up (1-3 s): it ends cancelled at 3 s, not before."""
    async with _Race() as race:
        caller = race.start(
            ex.first_within(
                10,
                race.racer("winner", 1, result="winner"),
                race.racer("loser", 5, cleanup_s=2),
            )
        )
        await asyncio.sleep(2)  # the winner won at 1 s; the loser cleans up until 3 s
        _raise_if_failed(caller)
        assert not caller.done(), (
            f"first_within() returned {caller.result()!r} at 2 s, while a loser was still "
            "cleaning up: wait until the losers have ended"
        )
        caller.cancel()
        await asyncio.wait({caller}, timeout=60)
        assert caller.done(), "first_within() was still running 60 s after it was cancelled"
        ended_s = _now()
        running = len(race.leftovers())
        await _settle(race)
        assert running == 0 and ended_s == pytest.approx(3), (
            f"cancelled during the cleanup, it ended at {ended_s:g} s with {running} of its "
            "tasks still running: a single `await asyncio.wait(tasks)` raises at once when "
            "you are cancelled. Keep waiting (catch the CancelledError, wait again) until every "
            "task has ended, then raise it"
        )
        _raise_if_failed(caller)
        assert caller.cancelled(), (
            f"first_within() was cancelled during its cleanup but returned {caller.result()!r}: "
            "after the cleanup, let the CancelledError go on"
        )


@pytest.mark.exercise("2.1")
async def test_first_within_a_second_cancel_during_cleanup_still_waits_for_it(ex):
    """Cancelled at 1 s, and again at 2 s while the racers clean up: it ends cancelled at 3 s."""
    async with _Race() as race:
        counts: list[int] = []

        async def caller_of_first_within():
            try:
                await ex.first_within(
                    10, race.racer("a", 5, cleanup_s=2), race.racer("b", 8, cleanup_s=2)
                )
            except asyncio.CancelledError:
                counts.append(asyncio.current_task().cancelling())
                raise

        caller = race.start(caller_of_first_within())
        await asyncio.sleep(1)
        _raise_if_failed(caller)
        caller.cancel()
        await asyncio.sleep(1)  # the racers clean up from 1 s to 3 s
        _raise_if_failed(caller)
        if not caller.done():
            caller.cancel()  # a second cancel, during the cleanup
        await asyncio.wait({caller}, timeout=60)
        assert caller.done(), "first_within() was still running 60 s after it was cancelled"
        ended_s = _now()
        running = len(race.leftovers())
        await _settle(race)
        assert running == 0 and ended_s == pytest.approx(3), (
            f"after a second cancel during the cleanup it ended at {ended_s:g} s with {running} "
            "of its tasks still running, expected 3 s and none: absorb every further cancel "
            "while you wait, and raise CancelledError once they have all ended"
        )
        _raise_if_failed(caller)
        assert caller.cancelled(), (
            f"cancelled twice, it returned {caller.result()!r}: let the CancelledError go on"
        )
        assert counts == [2], (
            f"the caller's cancelling() count was {counts!r} after two cancels, expected [2]: "
            "do not uncancel() a cancel that was not yours"
        )


@pytest.mark.exercise("2.1")
async def test_first_within_with_a_thousand_racers(ex):
    """1,000 racers, one success at 1 s: its result, and the 999 others cancelled and ended."""
    async with _Race() as race:
        racers = [race.racer(f"r{n}", 5 + n / 1000, cleanup_s=1) for n in range(999)]
        racers.insert(500, race.racer("winner", 1, result="winner"))
        outcome = await _outcome(60, ex.first_within(10, *racers), _RACE_HANGS.format(60))
        assert outcome == ("returned", "winner"), f"it {_said(outcome)}, expected 'winner'"
        race.assert_nothing_left_running("with 1,000 racers, when first_within() returned")
        assert len(race.events("cleaned up")) == 999, (
            f"{len(race.events('cleaned up'))} of the 999 losers cleaned up, expected all"
        )
        assert _now() == pytest.approx(2), f"returned at {_now():g} s, expected 2 s"


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


def _retry(
    ex, fn, *, attempts=10, base_s=1, max_s=100, retry_on=ValueError, rand=lambda: 0.5, **kwargs
):
    return ex.retry(
        fn, attempts=attempts, base_s=base_s, max_s=max_s, retry_on=retry_on, rand=rand, **kwargs
    )


def _no_attempt_after_cancel(starts: list[float]) -> str:
    """The message when attempts ran at ``starts`` though one at 0 s, then none, was expected."""
    if not starts:
        return (
            "fn() was never called: the first attempt is `await fn()`, at once, before any "
            "wait"
        )
    return (
        f"attempts started at {starts!r} s, expected [0]: a CancelledError is not a failure "
        "to retry (catch Exception, not BaseException)"
    )


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
        assert flaky.starts == [0], _no_attempt_after_cancel(flaky.starts)


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
        assert retrying.done(), "retry() was still running 60 s after it was cancelled" + (
            ": a CancelledError is not a failure to retry (catch Exception, not BaseException);"
            f" it started another attempt at {flaky.starts[1]:g} s"
            if len(flaky.starts) > 1
            else ""
        )
        _raise_if_failed(retrying)
        assert retrying.cancelled(), (
            f"retry() was cancelled but returned {retrying.result()!r}: a cancel is never retried"
        )
        assert _now() == pytest.approx(5), f"it ended at {_now():g} s, expected at once (5 s)"
        await asyncio.sleep(200)
        assert flaky.starts == [0], _no_attempt_after_cancel(flaky.starts)


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
        assert starts == [0], (
            "a CancelledError is not retried (catch Exception, not BaseException): attempts "
            f"started at {starts!r} s"
        )
        assert retrying.cancelled(), "fn()'s CancelledError should come out of retry()"


@pytest.mark.exercise("2.2")
async def test_retry_with_attempts_below_one_raises_valueerror(ex):
    """attempts=0 or -1: a ValueError of its own that names attempts, and fn() is never called."""
    for attempts in (0, -1):
        flaky = _Flaky()
        outcome = await _outcome(
            600, _retry(ex, flaky, attempts=attempts), _RETRY_HANGS.format(600)
        )
        how, error = outcome
        assert flaky.calls == 0, f"fn() was called with attempts={attempts}"
        assert how == "raised" and isinstance(error, ValueError), (
            f"attempts={attempts}: it {_said(outcome)}, expected ValueError"
        )
        assert "non-empty sequence" not in str(error), (
            f"attempts={attempts}: the ValueError came from ExceptionGroup(..., []) (a group "
            "cannot be empty), not from a check of attempts: check `attempts < 1` first"
        )
        assert "attempts" in str(error), (
            f"attempts={attempts}: ValueError({str(error)!r}) does not say what is wrong: "
            "name attempts in the message"
        )


@pytest.mark.exercise("2.2")
async def test_retry_raises_an_error_not_in_retry_on_at_once(ex):
    """retry_on=(KeyError, ValueError): ValueError is retried, then TypeError goes out as is."""
    starts: list[float] = []
    sleeps = _Sleeps()

    async def fn():
        starts.append(_now())
        if len(starts) == 1:
            raise ValueError("transient")
        raise TypeError("a bug: not transient")

    outcome = await _outcome(
        600,
        _retry(ex, fn, retry_on=(KeyError, ValueError), rand=lambda: 1.0, sleep=sleeps),
        _RETRY_HANGS.format(600),
    )
    how, error = outcome
    assert starts[:1] == [0] and len(starts) >= 2, (
        f"attempts started at {starts!r} s: ValueError is in retry_on, retry it"
    )
    assert starts == [0, 1], (
        f"attempts started at {starts!r} s, expected [0, 1]: TypeError is not in retry_on, so "
        "it is not retried (`except retry_on`, not `except Exception`)"
    )
    assert how == "raised" and type(error) is TypeError, (
        f"it {_said(outcome)}, expected the TypeError itself, at once: an error not in "
        "retry_on goes out as it is, not in a group"
    )
    assert sleeps.delays == [1], f"waits {sleeps.delays!r}, expected [1]: no wait after it"


@pytest.mark.exercise("2.2")
async def test_retry_survives_a_thousand_failures(ex):
    """1,100 failing attempts, base_s=0.5, max_s=4, rand()=1: waits 0.5, 1, 2, then 4 s each."""
    flaky, sleeps = _Flaky(fails=10_000), _Sleeps()
    outcome = await _outcome(
        100_000,
        _retry(ex, flaky, attempts=1100, base_s=0.5, max_s=4, rand=lambda: 1.0, sleep=sleeps),
        _RETRY_HANGS.format(100_000),
    )
    how, error = outcome
    if isinstance(error, OverflowError):
        pytest.fail(
            f"OverflowError after {len(flaky.starts)} failures: base_s * 2 ** (n - 1) is too "
            "large for a float past n = 1,024; keep the cap as a number you double and clip "
            "with min(max_s, ...)"
        )
    assert how == "raised" and isinstance(error, ExceptionGroup), (
        f"after 1,100 failed attempts it {_said(outcome)}, expected an ExceptionGroup"
    )
    assert len(error.exceptions) == 1100, (
        f"the group holds {len(error.exceptions)} errors, expected 1,100"
    )
    assert sleeps.delays[:3] == [0.5, 1, 2] and set(sleeps.delays[3:]) == {4}, (
        f"waits began {sleeps.delays[:5]!r} and took the values {sorted(set(sleeps.delays))!r}, "
        "expected [0.5, 1, 2, 4, 4, ...]: the cap doubles, then stays at max_s"
    )


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


@pytest.mark.exercise("2.3")
async def test_deadline_can_be_entered_again_inside_its_own_block(ex):
    """Entered inside its own block (a helper applies the deadline it was handed): fires at 5 s."""
    deadline = ex.Deadline.after(5)
    reached = []
    with pytest.raises(TimeoutError):
        async with deadline:
            async with deadline:  # e.g. fetch(deadline) called inside `async with deadline`
                await asyncio.sleep(1)
            reached.append(_now())
            await asyncio.sleep(100)
    assert reached == [1], f"the inner block ended at {reached!r} s, expected [1]"
    assert _now() == pytest.approx(5), f"TimeoutError at {_now():g} s, expected 5 s"


@pytest.mark.exercise("2.3")
async def test_deadline_shared_by_two_tasks_fires_in_both(ex):
    """Fan-out: two tasks enter one 5 s deadline; one ends at 1 s, the other is cut at 5 s."""
    async with _Cleanup() as tasks:
        deadline = ex.Deadline.after(5)
        ended: dict[str, tuple[float, str]] = {}

        async def part(name: str, seconds: float):
            try:
                async with deadline:
                    await asyncio.sleep(seconds)
            except TimeoutError:
                ended[name] = (_now(), "TimeoutError")
                raise
            ended[name] = (_now(), "finished")

        quick = tasks.start(part("quick", 1))
        slow = tasks.start(part("slow", 10))
        await asyncio.wait({quick, slow}, timeout=60)
        for task in (quick, slow):
            _raise_if_failed_except_timeout(task)
        assert ended.get("quick") == (1, "finished"), (
            f"the quick task's block ended as {ended.get('quick')!r}, expected (1, 'finished')"
        )
        assert ended.get("slow") == (5, "TimeoutError"), (
            "one list shared by every task? Leaving its block, the quick task exited the slow "
            f"one's scope: that block ended as {ended.get('slow')!r}, not (5, 'TimeoutError')."
            " Keep each task's scopes apart (a dict keyed by asyncio.current_task())"
        )


@pytest.mark.exercise("2.3")
async def test_deadline_shared_by_a_thousand_tasks(ex):
    """1,000 tasks share one 5 s deadline, ending in any order: every one past 5 s is cut at 5 s."""
    async with _Cleanup() as tasks:
        deadline = ex.Deadline.after(5)
        ended: dict[int, tuple[float, str]] = {}

        async def part(n: int):
            try:
                async with deadline:
                    await asyncio.sleep(1 + (n * 7919 % 1000) / 100)  # 1 s to 11 s, shuffled
            except TimeoutError:
                ended[n] = (_now(), "TimeoutError")
                return
            ended[n] = (_now(), "finished")

        started = [tasks.start(part(n)) for n in range(1000)]
        await asyncio.wait(started, timeout=60)
        failed = [t.exception() for t in started if t.done() and not t.cancelled()]
        failed = [e for e in failed if e is not None]
        assert not failed, (
            f"{len(failed)} of 1,000 tasks sharing one deadline failed, e.g. with {failed[0]!r}:"
            " keep each task's scopes apart"
        )
        assert len(ended) == 1000, (
            f"only {len(ended)} of 1,000 tasks sharing one deadline left their block in 60 s"
        )
        late = {n: e for n, e in ended.items() if e[0] > 5}
        assert not late, (
            f"{len(late)} of 1,000 tasks sharing a 5 s deadline ran past it, e.g. "
            f"{next(iter(late.values()), None)!r}: keep each task's scopes apart"
        )
        cut = sum(1 for when, how in ended.values() if how == "TimeoutError")
        assert cut == sum(1 for n in range(1000) if 1 + (n * 7919 % 1000) / 100 >= 5), (
            f"{cut} tasks got TimeoutError, expected every one whose sleep reaches 5 s"
        )


def _raise_if_failed_except_timeout(task: asyncio.Task[Any]) -> None:
    """Like _raise_if_failed, but a TimeoutError is an outcome the test reads itself."""
    if task.done() and not task.cancelled() and not isinstance(task.exception(), TimeoutError):
        task.result()
