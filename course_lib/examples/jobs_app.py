"""The demo tasks that chapter 4's worker processes run: a TaskRegistry, nothing else.

    python -m course_lib.distributed --redis-url redis://127.0.0.1:6379/0 --queue demo \\
        worker --app course_lib.examples.jobs_app:registry --name w1

A worker runs only what its registry lists: a job naming anything else is
dead-lettered, never looked up by name in some module. The tasks:

- ``resize(image_id, seconds=0.05)``: pretend to make a thumbnail (it sleeps);
  returns the thumbnail's name.
- ``report(log_key, seconds=1.0)``: a long job that notes its start and its end
  in the Redis list ``log_key``, as ``"<worker> started"`` / ``"<worker> finished"``.
  A run cut short (its worker killed) leaves a start with no finish: the failure lab
  reads that list to count runs.

``<worker>`` is the environment variable ``COURSE_WORKER`` (the notebook's
``queue_lab.Fleet`` sets it to the worker's name), else ``pid <n>``. The tasks reach
Redis through ``connect()``, which reads ``REDIS_URL``.
"""

from __future__ import annotations

__all__ = ["registry", "report", "resize"]

import asyncio
import os

import redis.asyncio

from course_lib.distributed import TaskRegistry
from course_lib.redis import connect

registry = TaskRegistry()
_client: redis.asyncio.Redis | None = None


def worker_name() -> str:
    """Who runs this task: ``COURSE_WORKER``, else the process id."""
    return os.environ.get("COURSE_WORKER") or f"pid {os.getpid()}"


async def _redis() -> redis.asyncio.Redis:
    # One client per process, made on first use, inside the worker's loop. Safe
    # here because a worker process runs ONE event loop for its whole life; under
    # "asyncio.run() per job" (the Celery pattern of chapter 4) this client would
    # outlive its loop, and the next job would fail with "Event loop is closed".
    global _client
    if _client is None:
        _client = await connect()
    return _client


@registry.task(max_attempts=3, timeout_s=30)
async def resize(image_id: int, seconds: float = 0.05) -> str:
    """Pretend to resize image ``image_id`` (I/O-bound: it sleeps ``seconds``)."""
    await asyncio.sleep(seconds)
    return f"thumb-{image_id}.png"


@registry.task(max_attempts=3, timeout_s=60)
async def report(log_key: str, seconds: float = 1.0) -> str:
    """A long job that logs its start and end to the list ``log_key``; returns who ran it."""
    client, me = await _redis(), worker_name()
    await client.rpush(log_key, f"{me} started")
    await asyncio.sleep(seconds)
    await client.rpush(log_key, f"{me} finished")
    return me
