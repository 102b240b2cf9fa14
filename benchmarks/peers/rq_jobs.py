"""RQ's side: ``rq worker peers`` (its default Worker forks a work horse per job).

RQ's defaults stay: pickled jobs, results kept 500 s, a fork per job. The jobs
are sync functions: the 10 ms I/O is ``time.sleep``. They count with the job's
own connection, so the forked horse opens no connection of its own for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import _jobs

QUEUE = "peers"
ENQUEUE_BATCH = 100  # jobs per Queue.enqueue_many pipeline


def _connection() -> object:
    from rq import get_current_job

    job = get_current_job()
    return job.connection if job is not None else _jobs.sync_client()


def noop() -> None:
    _jobs.noop_sync(_connection())


def io() -> None:
    _jobs.io_sync(_connection())


def warm() -> None:
    _jobs.warm_sync(_connection())


@contextlib.asynccontextmanager
async def enqueuer() -> AsyncIterator[Callable[[str, int], Awaitable[None]]]:
    from redis import Redis
    from rq import Queue

    client = Redis.from_url(_jobs.redis_url())
    queue = Queue(QUEUE, connection=client)
    functions = {"noop": noop, "io": io, "warm": warm}

    async def enqueue(task: str, n: int) -> None:
        fn = functions[task]
        for start in range(0, n, ENQUEUE_BATCH):
            with client.pipeline() as pipe:
                queue.enqueue_many([Queue.prepare_data(fn)
                                    for _ in range(min(ENQUEUE_BATCH, n - start))],
                                   pipeline=pipe)
                pipe.execute()

    try:
        yield enqueue
    finally:
        client.close()
