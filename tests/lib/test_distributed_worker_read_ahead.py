"""Read-ahead: up to ``read_ahead`` entries read and marked running before a slot frees,
so that no batch waits on a round trip between two others (how many, at the jobs' pace:
test_distributed_worker_pace.py).

What it changes, and what it keeps:

- the worker holds up to ``concurrency + read_ahead`` entries, at most ``concurrency``
  of them running (test_distributed_worker.py checks the bound, with and without);
- a record says "running" before its job starts (one batch of these gated jobs);
- entries read ahead are beaten as running ones (never reclaimed from a live worker),
  handed back at stop (another worker starts them at once), cancelled on request
  without running, and left pending by a crash (reclaimed), as running ones are.

On fakeredis and a real server (``redis``).
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from _worker_support import eventually, fast_worker

from course_lib.distributed import CancelOutcome, JobCancelled, JobStatus, Queue, TaskRegistry
from course_lib.redis import connect


@pytest_asyncio.fixture
async def other(redis_url):
    """A second client on the same server: another worker process, as far as Redis sees."""
    client = await connect(redis_url)
    yield client
    await client.aclose()


def _gated() -> tuple[TaskRegistry, list[int], asyncio.Event]:
    registry = TaskRegistry()
    ran: list[int] = []
    gate = asyncio.Event()

    @registry.task
    async def work(n: int) -> int:
        ran.append(n)
        await gate.wait()
        return n

    return registry, ran, gate


async def _statuses(handles) -> list[JobStatus]:
    return [await h.status() for h in handles]


async def _pending(redis, queue: Queue, n: int) -> bool:
    return (await queue.counts()).pending == n


@pytest.mark.asyncio
async def test_entries_read_ahead_are_marked_running_and_handed_back_at_stop(redis, other):
    registry, ran, gate = _gated()
    queue = Queue(redis)
    handles = await queue.enqueue_many([("work", [n]) for n in range(6)])
    worker = fast_worker(redis, registry, concurrency=2, read_ahead=2, grace_s=0.1)
    async with worker:
        await eventually(lambda: _pending(redis, queue, 4))  # 2 running, 2 read ahead
        await eventually(lambda: _count(ran, 2))
        statuses = await _statuses(handles)
        assert statuses.count(JobStatus.RUNNING) == 4  # "running" a batch before it runs
        assert statuses.count(JobStatus.QUEUED) == 2
        await asyncio.sleep(0.1)  # no more is read meanwhile, nor started
        assert (await queue.counts()).pending == 4 and sorted(ran) == [0, 1]
    stats = await worker.stats()
    assert stats.handed_back == 4  # the two cut short, and the two that never started
    assert stats.pending == 0 and stats.lag == 6
    assert await _statuses(handles) == [JobStatus.QUEUED] * 6
    gate.set()
    async with fast_worker(other, registry, name="second", concurrency=2, read_ahead=2):
        assert [await h.result(timeout_s=10) for h in handles] == list(range(6))
    assert sorted(ran) == [0, 0, 1, 1, 2, 3, 4, 5]  # read ahead: ran once, by the second


@pytest.mark.asyncio
async def test_entries_read_ahead_are_beaten_and_not_reclaimed_by_another_worker(redis, other):
    """Held past the visibility timeout while slots are busy: the heartbeat keeps them."""
    registry = TaskRegistry()
    ran: list[int] = []

    @registry.task
    async def work(n: int) -> int:
        ran.append(n)
        await asyncio.sleep(0.8)
        return n

    queue = Queue(redis)
    handles = await queue.enqueue_many([("work", [n]) for n in range(2)])
    opts = dict(visibility_timeout_s=0.3, heartbeat_s=0.1, concurrency=1, read_ahead=1)
    async with fast_worker(redis, registry, name="a", **opts) as a:
        await eventually(lambda: _pending(redis, queue, 2))  # one runs, one read ahead
        async with fast_worker(other, registry, name="b", **opts) as b:
            assert [await h.result(timeout_s=10) for h in handles] == [0, 1]
            assert (await b.stats()).reclaimed == 0
        assert (await a.stats()).processed == 2
    assert ran == [0, 1]


@pytest.mark.asyncio
async def test_a_job_cancelled_while_read_ahead_ends_cancelled_without_running(redis):
    registry, ran, gate = _gated()
    queue = Queue(redis)
    first, waiting = await queue.enqueue_many([("work", [0]), ("work", [1])])
    async with fast_worker(redis, registry, concurrency=1, read_ahead=1,
                           heartbeat_s=0.05) as worker:
        await eventually(lambda: _pending(redis, queue, 2))
        assert await waiting.status() is JobStatus.RUNNING  # marked, not started
        assert await waiting.cancel() is CancelOutcome.REQUESTED
        await asyncio.sleep(0.2)  # a few beats: the flag is read while it waits
        gate.set()
        assert await first.result(timeout_s=10) == 0
        with pytest.raises(JobCancelled) as info:
            await waiting.result(timeout_s=10)
        stats = await worker.stats()
    assert ran == [0]
    assert info.value.reason == "cancelled on request before this attempt started"
    assert (stats.processed, stats.cancelled) == (1, 1)


@pytest.mark.asyncio
async def test_a_crash_leaves_entries_read_ahead_pending_for_reclaim(redis, other):
    registry, ran, gate = _gated()
    queue = Queue(redis)
    handles = await queue.enqueue_many([("work", [n]) for n in range(2)])
    crashing = fast_worker(redis, registry, name="crashing", concurrency=1, read_ahead=1,
                           visibility_timeout_s=0.3)
    await crashing.start()
    await eventually(lambda: _pending(redis, queue, 2))
    await eventually(lambda: _count(ran, 1))
    await crashing.abort()
    assert (await queue.counts()).pending == 2  # nothing handed back, nothing acked
    gate.set()
    async with fast_worker(other, registry, name="survivor", visibility_timeout_s=0.3) as s:
        assert [await h.result(timeout_s=10) for h in handles] == [0, 1]
        assert (await s.stats()).reclaimed == 2
    assert sorted(ran) == [0, 0, 1]


def test_read_ahead_must_be_a_count():
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="read_ahead"):
            fast_worker(None, TaskRegistry(), read_ahead=bad)


async def _count(items: list, n: int) -> bool:
    return len(items) == n
