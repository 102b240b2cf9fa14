"""Helpers shared by the grading tests (tests/exercises/test_chNN_*.py).

Each keeps a wrong answer from hanging or spilling into the next check: bounded
waits with a hint, cleanup that cancels until a task really ends, outcomes read so
asyncio never reports them as "never retrieved".
"""

from __future__ import annotations

import asyncio
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
