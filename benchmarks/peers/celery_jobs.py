"""Celery's side: ``celery -A celery_jobs worker --pool=solo`` (or prefork ``-c 2``).

Celery's defaults stay: JSON messages over kombu's Redis transport
(a list per queue, BRPOP), prefetch 4 per process, ack early, no result backend.
The jobs are sync functions: the 10 ms I/O is ``time.sleep`` (what a blocking
client call is to a prefork or solo worker).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import _jobs
from celery import Celery

app = Celery("celery_jobs", broker=os.environ.get(_jobs.URL_ENV, "redis://127.0.0.1"))
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)


@app.task(name="noop")
def noop() -> None:
    _jobs.noop_sync(_jobs.sync_client())


@app.task(name="io")
def io() -> None:
    _jobs.io_sync(_jobs.sync_client())


@app.task(name="warm")
def warm() -> None:
    _jobs.warm_sync(_jobs.sync_client())


@contextlib.asynccontextmanager
async def enqueuer() -> AsyncIterator[Callable[[str, int], Awaitable[None]]]:
    tasks = {"noop": noop, "io": io, "warm": warm}
    with app.producer_or_acquire() as producer:
        async def enqueue(task: str, n: int) -> None:
            send = tasks[task].apply_async
            for _ in range(n):
                send(producer=producer)

        yield enqueue
