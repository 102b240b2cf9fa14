"""SAQ's side: ``saq saq_jobs.settings`` (concurrency from $PEERS_CONCURRENCY).

SAQ's defaults stay: a blocking dequeue (BLMOVE) woken at once, results kept
600 s, JSON payloads, a sweep and stats upkeep in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import _jobs
from saq import Queue

QUEUE = "peers"
ENQUEUE_BATCH = 100  # enqueue calls in flight at once


async def noop(ctx: dict[str, Any]) -> None:
    await _jobs.noop_async(_jobs.async_client())


async def io(ctx: dict[str, Any]) -> None:
    await _jobs.io_async(_jobs.async_client())


async def warm(ctx: dict[str, Any]) -> None:
    await _jobs.warm_async(_jobs.async_client())


settings = {
    "queue": Queue.from_url(os.environ.get(_jobs.URL_ENV, "redis://127.0.0.1"), name=QUEUE),
    "functions": [noop, io, warm],
    "concurrency": int(os.environ.get("PEERS_CONCURRENCY", "10")),
}


@contextlib.asynccontextmanager
async def enqueuer() -> AsyncIterator[Callable[[str, int], Awaitable[None]]]:
    queue = Queue.from_url(_jobs.redis_url(), name=QUEUE)
    await queue.connect()

    async def enqueue(task: str, n: int) -> None:
        for start in range(0, n, ENQUEUE_BATCH):
            await asyncio.gather(*(queue.enqueue(task)
                                   for _ in range(min(ENQUEUE_BATCH, n - start))))

    try:
        yield enqueue
    finally:
        await queue.disconnect()
