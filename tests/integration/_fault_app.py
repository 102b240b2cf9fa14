"""The tasks the fault tests run in worker processes.

    --app tests.integration._fault_app:registry

    work(key, n, sleep_ms)   # RPUSH key to faults:runs, sleep, return 2 * n
    double(n, sleep_ms)      # sleep, return 2 * n (touches nothing in Redis)
    echo(text)               # return text

``work`` records each execution, not each job: a job run twice leaves its key in
``faults:runs`` twice. It reaches Redis through a client of its own, to the
``REDIS_URL`` of the worker's environment (required: a missing one must not fall
back to an in-process fakeredis, where the records would vanish).
"""

from __future__ import annotations

import asyncio
import os

import redis.asyncio

from course_lib.distributed import TaskRegistry
from course_lib.redis import connect

__all__ = ["RUNS", "registry"]

RUNS = "faults:runs"  # one key per execution of `work`, in the order they began

registry = TaskRegistry()
_client: redis.asyncio.Redis | None = None


async def _redis() -> redis.asyncio.Redis:
    global _client
    if _client is None:
        client = await connect(os.environ["REDIS_URL"], ping=False)
        if _client is None:  # another task may have made one meanwhile
            _client = client
        else:
            await client.aclose()
    return _client


@registry.task
async def work(key: str, n: int, sleep_ms: int) -> int:
    # Recorded before the sleep: a worker killed during the sleep has run the job
    # (as far as anyone can tell), and a second run shows up as a duplicate.
    await (await _redis()).rpush(RUNS, key)
    await asyncio.sleep(sleep_ms / 1000)
    return 2 * n


@registry.task
async def double(n: int, sleep_ms: int) -> int:
    await asyncio.sleep(sleep_ms / 1000)
    return 2 * n


@registry.task
async def echo(text: str) -> str:
    return text
