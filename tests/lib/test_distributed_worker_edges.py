"""course_lib.distributed.worker at its edges: what a review found, kept fixed.

- a task that raises CancelledError with no one cancelling it is a failure (retried,
  then dead), not a stop: handing it back would run it for ever at the same attempt;
- an entry with thousands of fields is dead-lettered whole (its fields packed into
  one), not left failing to settle;
- a settle that fails half-way leaves the entry pending (the ack comes last);
- a hand-back re-adds the entry with all its fields.

Every test takes the ``redis`` fixture (fakeredis, then a real server).
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from _worker_support import LOG, eventually, fast_worker

from course_lib.distributed import Job, JobStatus, Queue, TaskRegistry


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.asyncio
async def test_a_task_raising_cancelled_error_by_itself_is_retried_then_dead(redis):
    registry = TaskRegistry()
    runs = []

    @registry.task(max_attempts=3)
    async def flaky() -> None:
        runs.append(1)
        future = asyncio.get_running_loop().create_future()
        future.cancel()  # someone else's future, cancelled under us
        await future  # CancelledError, though no one cancelled this task

    queue = Queue(redis, registry=registry)
    handle = await queue.enqueue("flaky")
    async with fast_worker(redis, registry) as worker:
        await eventually(lambda: redis.xlen(queue.keys.dead), timeout_s=10)
        stats = await worker.stats()
    assert len(runs) == 3, f"ran {len(runs)} times, expected its 3 attempts"
    assert await handle.status() is JobStatus.DEAD
    assert (stats.handed_back, stats.retried, stats.dead) == (0, 2, 1)
    record = await handle.info()
    assert record["error_type"] == "RuntimeError"
    assert "raised CancelledError without being cancelled" in record["error"]


@pytest.mark.asyncio
async def test_an_entry_with_thousands_of_fields_is_dead_lettered_whole(redis):
    queue = Queue(redis)
    await redis.xgroup_create(queue.keys.stream, queue.keys.group, id="0", mkstream=True)
    fields = {f"f{i}": f"v{i}" for i in range(5000)}
    fields["raw"] = b"\xff\x00"  # bytes that are not UTF-8 survive too
    await redis.xadd(queue.keys.stream, fields)
    async with fast_worker(redis, TaskRegistry()):
        await eventually(lambda: redis.xlen(queue.keys.dead))
    assert await redis.xlen(queue.keys.stream) == 0
    assert (await queue.counts()).pending == 0
    [letter] = await queue.dead_letters()
    assert "no 'job' field" in letter.reason
    packed = json.loads(letter.extra["_fields_json"])
    assert len(packed) == 5001 and packed["f4999"] == "v4999"
    assert packed["raw"].encode("latin-1") == b"\xff\x00"


@pytest.mark.asyncio
async def test_field_names_that_are_not_utf8_are_dead_lettered_and_requeued_as_they_were(
        redis):
    registry = TaskRegistry()

    @registry.task(max_attempts=1)
    async def fragile() -> str:
        raise ValueError("not yet")

    queue = Queue(redis, registry=registry)
    await redis.xgroup_create(queue.keys.stream, queue.keys.group, id="0", mkstream=True)
    await redis.xadd(queue.keys.stream, {b"\xff\xfe": b"v1", "plain": "v2"})  # no job
    await redis.xadd(queue.keys.stream, {"job": Job("fragile", id="fr", max_attempts=1).encode(),
                                         b"\xc3(": b"v3"})
    many = {f"f{i}": "v" for i in range(100)} | {b"\xff": b"\x00"}  # packed into one field
    await redis.xadd(queue.keys.stream, many)
    async with fast_worker(redis, registry):
        await eventually(lambda: _count_is(redis.xlen(queue.keys.dead), 3))
    letters = await queue.dead_letters()
    [dead_job] = [letter for letter in letters if letter.job is not None]
    [packed] = [letter for letter in letters if "_fields_json" in letter.extra]
    [no_job] = [letter for letter in letters if letter not in (dead_job, packed)]
    assert no_job.extra == {b"\xff\xfe": b"v1", "plain": b"v2"}
    assert dead_job.extra == {b"\xc3(": b"v3"}
    assert "b'\\xff\\xfe'" in repr(no_job)  # escaped where printed
    assert no_job.extra_text() == {"\\xff\\xfe": "v1", "plain": "v2"}
    names = json.loads(packed.extra["_fields_json"])
    assert {name.encode("utf-8", "surrogateescape") for name in names} == {
        name if isinstance(name, bytes) else name.encode() for name in many}
    # Requeued, the job goes back with the field it had, under the name it had.
    report = await queue.requeue_dead([dead_job.entry_id])
    assert report.ok, report
    [(_, fields)] = await redis.xrange(queue.keys.stream)
    assert fields[b"\xc3("] == b"v3"


async def _count_is(count, n: int) -> bool:
    return await count == n


@pytest.mark.asyncio
async def test_a_settle_that_fails_half_way_leaves_the_entry_pending(redis, caplog):
    caplog.set_level(logging.ERROR, logger=LOG)
    registry = TaskRegistry()

    @registry.task
    async def work(x: int) -> int:
        return x

    queue = Queue(redis, registry=registry)
    handle = await queue.enqueue("work", 1)
    await redis.set(queue.keys.done(handle.id), "not a list")  # LPUSH fails: WRONGTYPE
    async with fast_worker(redis, registry):
        await eventually(lambda: _said(caplog, "settle failed"))
    pending = await redis.xpending_range(queue.keys.stream, queue.keys.group, "-", "+", 10)
    assert len(pending) == 1, "the entry was acked without its outcome"
    assert await redis.xlen(queue.keys.stream) == 1


async def _said(caplog, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_a_hand_back_keeps_the_entrys_other_fields(redis):
    registry = TaskRegistry()
    started = asyncio.Event()

    @registry.task
    async def stuck() -> None:
        started.set()
        await asyncio.Event().wait()

    queue = Queue(redis, registry=registry)
    handle = await queue.enqueue("stuck")
    [(entry_id, fields)] = await redis.xrange(queue.keys.stream)
    await redis.xdel(queue.keys.stream, entry_id)
    await redis.xadd(queue.keys.stream, {**fields, "trace": "abc-123"})
    worker = fast_worker(redis, registry)
    await worker.start()
    try:
        async with asyncio.timeout(5):
            await started.wait()
    finally:
        await worker.stop(grace_s=0)
    [(_, back)] = await redis.xrange(queue.keys.stream)
    assert {_text(k): _text(v) for k, v in back.items()}["trace"] == "abc-123"
    assert await handle.status() is JobStatus.QUEUED
