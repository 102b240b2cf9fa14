"""Helpers shared by the grading tests (tests/exercises/test_chNN_*.py).

Each keeps a wrong answer from hanging or spilling into the next check: bounded
waits with a hint, cleanup that cancels until a task really ends, outcomes read so
asyncio never reports them as "never retrieved".
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest


async def _stop(task: asyncio.Task[Any]) -> None:
    """Test cleanup: cancel ``task`` until it ends, and retrieve its outcome."""
    for _ in range(100):  # some wrong answers need more than one cancel
        if task.done():
            break
        task.cancel()
        await asyncio.wait({task}, timeout=60)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: the test has judged it already


async def _within(limit_s: float, aw, hint: str):
    """Await ``aw``, failing with ``hint`` if it takes more than ``limit_s`` (virtual) seconds."""
    async with asyncio.timeout(limit_s) as deadline:
        try:
            return await aw
        except asyncio.CancelledError:
            if deadline.expired():
                pytest.fail(hint)
            raise


def _raise_if_failed(task: asyncio.Task[Any]) -> None:
    """Let the exception a task ended with (the stub's NotImplementedError...) out in the test."""
    if task.done() and not task.cancelled():
        task.result()


def _running_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if not t.done()} - {asyncio.current_task()}


async def _outcome(limit_s: float, aw, hint: str) -> tuple[str, Any]:
    """("returned", value) or ("raised", exception); the stub's NotImplementedError goes on."""
    try:
        return "returned", await _within(limit_s, aw, hint)
    except NotImplementedError:
        raise
    except Exception as exc:
        return "raised", exc


def _said(outcome: tuple[str, Any]) -> str:
    how, what = outcome
    return f"returned {what!r}" if how == "returned" else f"raised {what!r}"


class _Cleanup:
    """``async with _Cleanup() as tasks:``: ``tasks.start(coro)`` starts a task, and at the
    end of the block every task started since it began, by the test or by the code under
    test, is stopped; coroutines handed over (``tasks.track(coro)``) and never started are
    closed, and futures handed back (``tasks.keep(future)``) are looked at, so that no
    "never awaited" or "never retrieved" lands on the test."""

    def __init__(self) -> None:
        self._before: set[asyncio.Task[Any]] = set()
        self._coros: list[Any] = []
        self._futures: list[Any] = []

    def start(self, coro, *, name: str | None = None) -> asyncio.Task[Any]:
        return asyncio.create_task(coro, name=name)

    def track(self, coro):
        self._coros.append(coro)
        return coro

    def keep(self, future):
        self._futures.append(future)
        return future

    def leftovers(self) -> set[asyncio.Task[Any]]:
        """Tasks started inside the block and still running."""
        return _running_tasks() - self._before

    async def __aenter__(self) -> _Cleanup:
        self._before = _running_tasks()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self.leftovers():
            await _stop(task)
        for coro in self._coros:
            if inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
                coro.close()
        for future in self._futures:
            if isinstance(future, asyncio.Future) and future.done() and not future.cancelled():
                future.exception()


# Sync tests carry no asyncio mark: pytest-asyncio warns about those.
_virtual_time = [pytest.mark.asyncio, pytest.mark.looptime]


def _async(test):
    """Mark an async test: pytest-asyncio's loop, looptime's virtual clock."""
    for mark in _virtual_time:
        test = mark(test)
    return test
