"""arq's side: ``arq arq_jobs.WorkerSettings`` (max_jobs from $PEERS_CONCURRENCY).

arq's defaults stay as they are: ``poll_delay`` 0.5 s (it polls a sorted set;
there is no blocking read), results kept 1 day, jobs pickled. Only its log is
turned down to warnings, as every worker here runs: arq's CLI logs two lines per job
at INFO and has no --quiet, so ``on_startup`` does it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar

import _jobs
from arq import create_pool
from arq.connections import RedisSettings

ENQUEUE_BATCH = 100  # enqueue_job calls in flight at once (arq has no batch enqueue)


async def noop(ctx: dict[str, Any]) -> None:
    await _jobs.noop_async(_jobs.async_client())


async def io(ctx: dict[str, Any]) -> None:
    await _jobs.io_async(_jobs.async_client())


async def warm(ctx: dict[str, Any]) -> None:
    await _jobs.warm_async(_jobs.async_client())


async def quiet(ctx: dict[str, Any]) -> None:
    logging.getLogger("arq").setLevel(logging.WARNING)


class WorkerSettings:
    functions: ClassVar = [noop, io, warm]
    on_startup = quiet
    redis_settings = RedisSettings.from_dsn(os.environ.get(_jobs.URL_ENV, "redis://127.0.0.1"))
    max_jobs = int(os.environ.get("PEERS_CONCURRENCY", "10"))


@contextlib.asynccontextmanager
async def enqueuer() -> AsyncIterator[Callable[[str, int], Awaitable[None]]]:
    import asyncio

    pool = await create_pool(RedisSettings.from_dsn(_jobs.redis_url()))

    async def enqueue(task: str, n: int) -> None:
        for start in range(0, n, ENQUEUE_BATCH):
            await asyncio.gather(*(pool.enqueue_job(task)
                                   for _ in range(min(ENQUEUE_BATCH, n - start))))

    try:
        yield enqueue
    finally:
        await pool.aclose()
