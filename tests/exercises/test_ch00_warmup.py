"""Grading tests for exercise 0.1 (notebooks/00_start_here.ipynb)."""

from __future__ import annotations

import asyncio

import pytest
from _support import _Cleanup, _outcome, _said

MODULE = "ch00_warmup"
pytestmark = [pytest.mark.exercise("0.1"), pytest.mark.asyncio, pytest.mark.looptime]

HANG = "gather_in_order() was still running 60 s later"


async def _after(delay_s: float, value):
    await asyncio.sleep(delay_s)
    return value


class _Child:
    """A child that sleeps ``run_s``, then returns; cancelled, it cleans up for ``cleanup_s``."""

    def __init__(self, run_s: float, cleanup_s: float = 0.0) -> None:
        self.run_s, self.cleanup_s = run_s, cleanup_s
        self.state = "never started"  # then running, cleaning up, cleaned up, finished
        self.task: asyncio.Task | None = None

    async def __call__(self):
        self.state, self.task = "running", asyncio.current_task()
        try:
            await asyncio.sleep(self.run_s)
        except asyncio.CancelledError:
            self.state = "cleaning up"
            await asyncio.sleep(self.cleanup_s)  # cleanup that takes time
            self.state = "cleaned up"
            raise
        self.state = "finished"
        return self.run_s

    def seen(self) -> str:
        """Its state, where "running" with a cancel on its way counts as "cleaning up"."""
        if self.state == "running" and self.task is not None and self.task.cancelling():
            return "cleaning up"
        return self.state


async def _broken(after_s: float = 1):
    await asyncio.sleep(after_s)
    raise ValueError("broken")


def _holds(error: BaseException, kind: type[BaseException]) -> bool:
    """``error`` is a ``kind``, or an exception group holding one."""
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(kind) is not None
    return isinstance(error, kind)


async def test_results_come_back_in_the_order_given(ex):
    """Results come back in the order given, not the order they finished."""
    results = await ex.gather_in_order(_after(3, "slow"), _after(1, "fast"), _after(2, "mid"))
    assert results == ["slow", "fast", "mid"], f"got {results!r}"


async def test_runs_everything_at_once(ex):
    """Three 1-second sleeps take 1 second in all, not 3."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    await ex.gather_in_order(_after(1, 1), _after(1, 2), _after(1, 3))
    took = loop.time() - start
    assert took == pytest.approx(1), f"took {took:.1f} s: are they awaited one after another?"


async def test_nothing_to_run_gives_an_empty_list(ex):
    """No awaitables at all gives an empty list."""
    assert await ex.gather_in_order() == []


async def test_a_failure_cancels_the_others_and_raises(ex):
    """When one fails, the error comes out at once and the others are cancelled."""
    slow = [_Child(10), _Child(10)]
    loop = asyncio.get_running_loop()
    async with _Cleanup() as tasks:
        coros = [tasks.track(slow[0]()), _broken(1), tasks.track(slow[1]())]
        start = loop.time()
        outcome = await _outcome(60, ex.gather_in_order(*coros), HANG)
        took = loop.time() - start
        how, error = outcome
        assert how == "raised", f"one child raised ValueError, but gather_in_order {_said(outcome)}"
        assert _holds(error, ValueError), f"the child's ValueError is missing from {error!r}"
        states = [c.seen() for c in slow]
        assert "running" not in states, (
            f"the others were not cancelled: still running after the error came out ({states})"
        )
        assert took == pytest.approx(1), (
            f"the error came out after {took:.0f} s, not 1 s: the others were waited for, "
            "not cancelled"
        )
        await asyncio.sleep(20)
        assert "finished" not in [c.state for c in slow], (
            "the others were not cancelled: they ran to the end after the error"
        )


async def test_a_failure_waits_for_the_others_cleanup(ex):
    """When one fails, the cancelled others finish their cleanup before the error comes out."""
    slow = [_Child(10, cleanup_s=2), _Child(10, cleanup_s=2)]
    async with _Cleanup() as tasks:
        coros = [tasks.track(slow[0]()), _broken(1), tasks.track(slow[1]())]
        outcome = await _outcome(60, ex.gather_in_order(*coros), HANG)
        assert outcome[0] == "raised", (
            f"one child raised ValueError, but gather_in_order {_said(outcome)}"
        )
        states = [c.seen() for c in slow]
        assert "running" not in states and "finished" not in states, (
            f"the others were not cancelled after the failure ({states})"
        )
        assert "cleaning up" not in states, (
            f"the others were cancelled but not awaited: the error came out while they were "
            f"still cleaning up ({states})"
        )


async def test_cancelled_while_waiting_it_cancels_and_awaits_every_child(ex):
    """Cancelled while it waits, it cancels every child and waits for their cleanup."""
    children = [_Child(10, cleanup_s=2), _Child(10, cleanup_s=2)]
    async with _Cleanup() as tasks:
        coros = [tasks.track(child()) for child in children]
        caller = tasks.start(ex.gather_in_order(*coros))
        await asyncio.sleep(1)
        caller.cancel()
        await asyncio.wait({caller}, timeout=60)
        if caller.done() and not caller.cancelled():
            caller.result()  # the stub's NotImplementedError, or what it raised instead
        states = [c.seen() for c in children]
        assert caller.done(), f"cancelled, gather_in_order was still running 60 s later {states}"
        assert caller.cancelled(), (
            f"cancelled while waiting, it ended without CancelledError (children: {states})"
        )
        assert "running" not in states, (
            f"cancelled while waiting, it ended with children still running ({states}): "
            "cancel them too"
        )
        assert "cleaning up" not in states, (
            f"cancelled while waiting, it ended before its children's cleanup ({states}): "
            "await them"
        )


async def test_futures_and_tasks_are_awaitables_too(ex):
    """A Future or a Task passed in works like a coroutine."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    loop.call_later(2, future.set_result, "future")
    async with _Cleanup() as tasks:
        task = tasks.start(_after(1, "task"))
        outcome = await _outcome(60, ex.gather_in_order(future, task, _after(3, "coro")), HANG)
        how, results = outcome
        if how == "raised" and _holds(results, TypeError):
            pytest.fail(
                "a Future and a Task passed in raised TypeError: create_task() takes "
                "coroutines only"
            )
        assert outcome == ("returned", ["future", "task", "coro"]), (
            f"given a Future, a Task and a coroutine, it {_said(outcome)}"
        )
