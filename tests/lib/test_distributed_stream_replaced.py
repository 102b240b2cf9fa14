"""A queue's stream key replaced under a running worker (DEL, then SET to a string).

Before: a traceback every few seconds for as long as it lasted, and the job that was
running stayed "running" for ever (its settle failed: no entry left to ack). Now: one
warning while it lasts, one when the key is a stream again, and the job recorded dead
with the reason (its waiters woken). A real server only: fakeredis 2.41 answers
XREADGROUP on a string key with an AttributeError of its own, not WRONGTYPE.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from _worker_support import LOG, eventually, fast_worker

from course_lib.distributed import JobFailed, JobStatus, Queue, TaskRegistry
from course_lib.redis import connect


@pytest.mark.asyncio
async def test_a_stream_key_replaced_under_a_worker_is_said_once_and_its_job_ends_dead(
        redis_server, caplog):
    caplog.set_level(logging.WARNING, logger=LOG)
    redis = await connect(redis_server.url)
    try:
        await _replace_under_a_worker(redis, f"replaced-{uuid.uuid4().hex[:8]}", caplog)
    finally:
        await redis.aclose()


async def _replace_under_a_worker(redis, name: str, caplog) -> None:
    registry = TaskRegistry()
    release = asyncio.Event()

    @registry.task
    async def held(x: int) -> int:
        await release.wait()
        return x

    queue = Queue(redis, name, registry=registry)
    handle = await queue.enqueue("held", 1)

    async def running() -> bool:
        return await handle.status() is JobStatus.RUNNING

    said = lambda text: [r for r in caplog.records if text in r.getMessage()]  # noqa: E731
    async with fast_worker(redis, registry, queue=name):
        await eventually(running)
        await redis.delete(queue.keys.stream)
        await redis.set(queue.keys.stream, "not a stream")
        await eventually(lambda: _true(said("is not a stream")))
        await asyncio.sleep(0.5)  # many more reads fail meanwhile (backoff <= 0.1 s)
        release.set()
        with pytest.raises(JobFailed, match="replaced"):
            await asyncio.wait_for(handle.result(), 10)
        await redis.delete(queue.keys.stream)  # the key freed: the worker makes its stream
        again = await queue.enqueue("held", 2)
        assert await asyncio.wait_for(again.result(), 10) == 2
        await queue.aclose()
    assert len(said("is not a stream")) == 1 and len(said("is a stream again")) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    record = await handle.info()
    assert record["status"] == "dead" and "was replaced by another type" in record["reason"]


async def _true(value: object) -> bool:
    return bool(value)
