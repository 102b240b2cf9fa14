"""The two jobs every peer runs, and the one counter that says a job is done.

    noop_sync(client); io_sync(client)              # Celery, RQ: INCR peers:done
    await noop_async(client); await io_async(client)  # the course worker, arq, SAQ
    warm_sync(client); await warm_async(client)      # + SADD peers:warm $PEERS_WORKER_SLOT

Each library's job module (arq_jobs.py, saq_jobs.py, ...) wraps these in its own
signature. A run ends when ``peers:done`` reaches the number of jobs enqueued, so
"done" means the same thing for all: the job's body ran (what each library then
records about it, a result, an ack, a status, is part of its cost, up to that INCR
of the next job). Only redis-py is needed here, which every peer venv has.

The 10 ms "I/O" is ``asyncio.sleep`` in an async worker: ``time.sleep`` there
would block the loop and run the jobs one at a time. Celery and RQ run sync
functions, one per process (or thread) at a time, so there it is ``time.sleep``,
which is how a blocking client call looks from such a worker.

The ``warm`` job is not timed: before a run with several worker processes, the
driver sends warm jobs one at a time until every process has done one (each
process is started with its own ``PEERS_WORKER_SLOT``, which forked children
inherit), so that no process is still starting when the clock starts.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

__all__ = ["COUNTER", "IO_S", "SLOT_ENV", "WARM", "async_client", "io_async", "io_sync",
           "noop_async", "noop_sync", "redis_url", "sync_client", "warm_async", "warm_sync"]

COUNTER = "peers:done"  # INCR once per job; the driver waits for it to reach N
IO_S = 0.01  # the "10 ms I/O" job
URL_ENV = "PEERS_REDIS_URL"
WARM = "peers:warm"  # a set: the slot of every worker process that has done a warm job
SLOT_ENV = "PEERS_WORKER_SLOT"  # 0, 1, ...: which of the worker processes this is

_sync: Any = None
_async: Any = None
_async_loop: Any = None


def redis_url() -> str:
    try:
        return os.environ[URL_ENV]
    except KeyError:
        raise RuntimeError(f"{URL_ENV} is not set: queue_peers.py sets it") from None


def sync_client() -> Any:
    """One client per process (redis-py's pool reconnects by itself after a fork)."""
    global _sync
    if _sync is None:
        import redis

        _sync = redis.Redis.from_url(redis_url())
    return _sync


def async_client() -> Any:
    """One client per event loop: a worker runs one loop for its whole life."""
    global _async, _async_loop
    loop = asyncio.get_running_loop()
    if _async is None or _async_loop is not loop:
        import redis.asyncio

        _async, _async_loop = redis.asyncio.Redis.from_url(redis_url()), loop
    return _async


def noop_sync(client: Any) -> None:
    client.incr(COUNTER)


def io_sync(client: Any) -> None:
    time.sleep(IO_S)
    client.incr(COUNTER)


async def noop_async(client: Any) -> None:
    await client.incr(COUNTER)


async def io_async(client: Any) -> None:
    await asyncio.sleep(IO_S)
    await client.incr(COUNTER)


def _slot() -> str:
    return os.environ.get(SLOT_ENV, "0")


def warm_sync(client: Any) -> None:
    client.sadd(WARM, _slot())
    client.incr(COUNTER)


async def warm_async(client: Any) -> None:
    await client.sadd(WARM, _slot())
    await client.incr(COUNTER)
