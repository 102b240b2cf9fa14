"""The course worker's side: a TaskRegistry with the two jobs, and its enqueuer.

    python -m course_lib.distributed worker --app course_jobs:registry --queue peers \\
        --concurrency 10
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import _jobs

from course_lib.distributed import Queue, TaskRegistry
from course_lib.distributed.job import Job
from course_lib.redis import connect

QUEUE = "peers"
ENQUEUE_BATCH = 100  # jobs per Queue.enqueue_many call (one pipeline), as queue_throughput

registry = TaskRegistry()


@registry.task
async def noop() -> None:
    await _jobs.noop_async(_jobs.async_client())


@registry.task
async def io() -> None:
    await _jobs.io_async(_jobs.async_client())


@registry.task
async def warm() -> None:
    await _jobs.warm_async(_jobs.async_client())


@contextlib.asynccontextmanager
async def enqueuer() -> AsyncIterator[Callable[[str, int], Awaitable[None]]]:
    client = await connect(_jobs.redis_url())
    queue = Queue(client, QUEUE)

    async def enqueue(task: str, n: int) -> None:
        for start in range(0, n, ENQUEUE_BATCH):
            await queue.enqueue_many([Job(task) for _ in range(min(ENQUEUE_BATCH, n - start))])

    try:
        yield enqueue
    finally:
        await client.aclose()
