"""Grading tests for exercise 0.1 (notebooks/00_start_here.ipynb)."""

from __future__ import annotations

import asyncio

import pytest

MODULE = "ch00_warmup"
pytestmark = [pytest.mark.exercise("0.1"), pytest.mark.asyncio, pytest.mark.looptime]


async def _after(delay_s: float, value):
    await asyncio.sleep(delay_s)
    return value


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
    """When one fails, the error comes out and the others are cancelled, not left running."""
    finished = []

    async def slow(i):
        await asyncio.sleep(10)
        finished.append(i)

    async def broken():
        await asyncio.sleep(1)
        raise ValueError("broken")

    with pytest.raises((ValueError, ExceptionGroup)) as info:
        await ex.gather_in_order(slow(1), broken(), slow(2))
    error = info.value
    if isinstance(error, ExceptionGroup):
        assert error.subgroup(ValueError) is not None, f"the ValueError is missing from {error!r}"
    await asyncio.sleep(20)
    assert finished == [], "the other coroutines kept running after the failure"
