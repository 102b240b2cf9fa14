"""Chapter 0: a warm-up exercise, solved."""

from __future__ import annotations

__all__ = ["gather_in_order"]

import asyncio
from collections.abc import Awaitable
from typing import Any


async def gather_in_order(*aws: Awaitable[Any]) -> list[Any]:
    """Exercise 0.1: run every awaitable at once; results in the order given.

    A TaskGroup starts them all, waits for all, and, when one fails, cancels
    the rest and waits for their cleanup before raising an ExceptionGroup.
    Cancelled while it waits, it does the same, then lets CancelledError out.
    """
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(_as_coroutine(aw)) for aw in aws]
    return [task.result() for task in tasks]


async def _as_coroutine(aw: Awaitable[Any]) -> Any:
    # create_task() takes coroutines only; this also accepts futures and tasks.
    return await aw
