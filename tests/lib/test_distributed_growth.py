"""course_lib.distributed: what must not grow for ever, and what the stream is for.

- a job record's ``entry`` names its live stream entry, after a retry and a hand-back;
- the dead-letter stream keeps about ``max_dead_letters`` letters, the newest;
- consumers of crashed workers leave the group once idle and holding nothing;
- the work stream is a buffer: a second consumer group on it sees only what is not
  settled yet (settled entries are deleted), by design.

Every test takes the ``redis`` fixture (fakeredis, then a real server).
"""

from __future__ import annotations

import asyncio

import pytest
from _worker_support import eventually, fast_worker

from course_lib.distributed import JobStatus, Queue, TaskRegistry, Worker


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _stream_ids(redis, queue: Queue) -> list[str]:
    return [_text(entry_id) for entry_id, _ in await redis.xrange(queue.keys.stream)]


async def _consumers(redis, queue: Queue) -> dict[str, int]:
    """Consumer name -> its pending count, in the queue's group."""
    rows = await redis.xinfo_consumers(queue.keys.stream, queue.keys.group)
    return {_text(row["name"]): int(row["pending"]) for row in rows}


# --- the record's entry ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_retried_job_s_record_names_the_entry_it_runs_from(redis):
    registry = TaskRegistry()
    seen: list[tuple[str, list[str]]] = []  # (record's entry, the stream's ids), per attempt

    @registry.task(max_attempts=2)
    async def flaky() -> str:
        seen.append((_text(await redis.hget(queue.keys.job("flaky-1"), "entry")),
                     await _stream_ids(redis, queue)))
        if len(seen) == 1:
            raise ValueError("first attempt fails")
        return "ok"

    queue = Queue(redis, registry=registry)
    handle = await queue.enqueue("flaky", job_id="flaky-1")
    async with fast_worker(redis, registry):
        assert await handle.result(timeout_s=5) == "ok"
    # While it runs, the entry it runs from is in the stream (settled ones are deleted):
    # the only one, and the record names it, on the retry too (MOVE_DUE added it).
    [(first, [first_live]), (second, [second_live])] = seen
    assert (first, second) == (first_live, second_live)
    assert second != first


@pytest.mark.asyncio
async def test_a_handed_back_job_s_record_names_its_new_entry(redis):
    registry = TaskRegistry()
    started = asyncio.Event()

    @registry.task
    async def stuck() -> None:
        started.set()
        await asyncio.Event().wait()

    queue = Queue(redis, registry=registry)
    handle = await queue.enqueue("stuck")
    [old] = await _stream_ids(redis, queue)
    worker = fast_worker(redis, registry)
    await worker.start()
    try:
        async with asyncio.timeout(5):
            await started.wait()
    finally:
        await worker.stop(grace_s=0)
    [new] = await _stream_ids(redis, queue)  # re-added by the hand-back, the old one gone
    assert new != old
    assert await handle.status() is JobStatus.QUEUED
    assert (await handle.info())["entry"] == new


# --- dead-letter retention ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_dead_letter_stream_keeps_about_max_dead_letters_the_newest(redis):
    """Approximate trimming (``MAXLEN ~``): Redis drops whole nodes of the stream's radix
    tree (100 entries each by default), fakeredis trims exactly; both keep the newest."""
    registry = TaskRegistry()
    queue = Queue(redis)
    for n in range(300):  # unknown tasks: each one is dead-lettered at once
        await queue.enqueue("nobody-runs-this", n, job_id=f"lost-{n}")
    async with fast_worker(redis, registry, max_dead_letters=10, concurrency=50):
        await eventually(lambda: _settled(redis, queue), timeout_s=20)
    kept = await redis.xlen(queue.keys.dead)
    assert 10 <= kept <= 10 + 100
    letters = await queue.dead_letters(count=1000)
    assert letters[-1].job is not None and b'"lost-299"' in letters[-1].job  # the newest


async def _settled(redis, queue: Queue) -> bool:
    return await redis.xlen(queue.keys.stream) == 0


def test_max_dead_letters_must_be_positive_or_none(redis):
    with pytest.raises(ValueError, match="max_dead_letters"):
        Worker(redis, TaskRegistry(), max_dead_letters=0)


# --- consumers of crashed workers -----------------------------------------------------------


@pytest.mark.asyncio
async def test_idle_consumers_holding_nothing_leave_the_group_those_holding_entries_stay(redis):
    registry = TaskRegistry()

    @registry.task
    async def noop() -> None:
        return None

    queue = Queue(redis, registry=registry)
    await redis.xgroup_create(queue.keys.stream, queue.keys.group, id="0", mkstream=True)
    # Two workers that crashed long ago: one had settled everything, one held an entry.
    await queue.enqueue("noop", job_id="held")
    await redis.xreadgroup(queue.keys.group, "crashed-holding", {queue.keys.stream: ">"})
    await redis.xgroup_createconsumer(queue.keys.stream, queue.keys.group, "crashed-idle")
    await asyncio.sleep(0.3)  # idle times follow the wall clock, on fakeredis too
    worker = fast_worker(redis, registry, idle_consumer_s=0.2, visibility_timeout_s=60.0)
    async with worker:
        await eventually(lambda: _gone(redis, queue, "crashed-idle"))
        # A consumer once it has read an entry (Redis 7.0 lists no consumer that only
        # ever blocked); then idle, holding nothing, for a few more maintenance ticks.
        await (await queue.enqueue("noop")).result(timeout_s=5)
        await asyncio.sleep(0.3)
        consumers = await _consumers(redis, queue)
    # Never one that holds entries (its jobs would be lost), never the worker itself.
    assert consumers["crashed-holding"] == 1
    assert worker.name in consumers


async def _gone(redis, queue: Queue, name: str) -> bool:
    return name not in await _consumers(redis, queue)


def test_idle_consumer_s_defaults_to_ten_visibility_timeouts_at_least_an_hour(redis):
    assert Worker(redis, TaskRegistry()).idle_consumer_s == 3600.0
    assert Worker(redis, TaskRegistry(), visibility_timeout_s=600).idle_consumer_s == 6000.0
    with pytest.raises(ValueError, match="idle_consumer_s"):
        Worker(redis, TaskRegistry(), idle_consumer_s=0)


# --- one group: the work stream is a buffer ------------------------------------------------


@pytest.mark.asyncio
async def test_a_second_group_on_the_work_stream_sees_only_unsettled_entries(redis):
    """The trade-off of deleting settled entries (XACK + XDEL in one script): the stream
    holds only what is queued or running, whatever ran before, and a second consumer
    group (an audit) gets only that. Fan-out belongs on a stream of its own."""
    registry = TaskRegistry()

    @registry.task
    async def noop(n: int) -> int:
        return n

    queue = Queue(redis, registry=registry)
    await redis.xgroup_create(queue.keys.stream, queue.keys.group, id="0", mkstream=True)
    await redis.xgroup_create(queue.keys.stream, "audit", id="0")
    handles = await queue.enqueue_many([("noop", [n]) for n in range(100)])
    async with fast_worker(redis, registry):
        for handle in handles:
            await handle.result(timeout_s=10)
    assert await redis.xlen(queue.keys.stream) == 0  # bounded by the backlog, not the history
    audit = await redis.xreadgroup("audit", "auditor", {queue.keys.stream: ">"}, count=1000)
    assert sum(len(entries) for _, entries in audit or []) == 0
    # Enqueued and not yet run: the audit group does see those.
    await queue.enqueue("noop", 100)
    audit = await redis.xreadgroup("audit", "auditor", {queue.keys.stream: ">"}, count=1000)
    assert sum(len(entries) for _, entries in audit) == 1
