"""Cancelling a job: ``await queue.cancel(job_id)``, ``handle.cancel()``, ``cancel JOB_ID``.

- Not started (queued, scheduled, retrying): the record turns ``cancelled`` at once,
  its entry leaves the stream (or the delayed set), and a worker that has read it
  already acks it unrun (START finds it cancelled, atomically).
- Running: a cancel flag in its record; the worker's heartbeat (one call for all its
  entries) reads the flags, so within one ``heartbeat_s`` the worker cancels the
  task and records it ``cancelled``. A worker that died or handed the job back: the
  next START finds the flag, and the job ends cancelled, unrun.
- Ended: nothing changes. Waiters of ``result()`` wake with ``JobCancelled``.

Library tests run on fakeredis and a real server (``redis``); the heartbeat bound in
virtual time (looptime) on the in-process fakeredis.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis as redis_sync
from _worker_support import eventually, fast_worker

from course_lib.distributed import (
    CancelOutcome,
    EnqueueOptions,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobStatus,
    Queue,
    QueueKeys,
    TaskRegistry,
)
from course_lib.distributed.cli import main
from course_lib.redis import serve_fake_tcp


def _registry() -> tuple[TaskRegistry, list[str], list[str]]:
    """``hang`` waits for ever (noting a cancel), ``quick`` returns; and who ran."""
    registry = TaskRegistry()
    ran: list[str] = []
    cancelled: list[str] = []

    @registry.task(max_attempts=1)
    async def hang(tag: str = "") -> None:
        ran.append(tag)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(tag)
            raise

    @registry.task
    async def quick(tag: str = "") -> str:
        ran.append(tag)
        return tag

    return registry, ran, cancelled


async def _is(handle, status: JobStatus) -> bool:
    return await handle.status() is status


async def _ran(ran: list[str]) -> bool:
    return bool(ran)


# --- before it starts ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_cancelled_queued_job_never_runs_and_its_waiters_wake(redis):
    registry, ran, _ = _registry()
    queue = Queue(redis)
    doomed = await queue.enqueue("quick", "doomed")
    kept = await queue.enqueue("quick", "kept")
    waiter = asyncio.create_task(doomed.result(timeout_s=10))
    await asyncio.sleep(0.05)  # the waiter is waiting
    assert await queue.cancel(doomed.id) is CancelOutcome.CANCELLED
    with pytest.raises(JobCancelled) as info:
        await waiter
    assert isinstance(info.value, JobFailed) and info.value.status is JobStatus.CANCELLED
    assert "cancelled" in str(info.value) and info.value.reason == "cancelled before it started"
    assert await doomed.status() is JobStatus.CANCELLED
    assert await redis.xlen(queue.keys.stream) == 1  # its entry left with it: never read
    async with fast_worker(redis, registry):
        assert await kept.result(timeout_s=10) == "kept"
    assert ran == ["kept"]
    # Cancelling again, or a job that ended: nothing changes.
    assert await doomed.cancel() is CancelOutcome.ENDED
    assert await kept.cancel() is CancelOutcome.ENDED
    assert await kept.status() is JobStatus.DONE
    with pytest.raises(JobNotFound):
        await queue.cancel("no-such-job")


@pytest.mark.asyncio
async def test_a_queued_job_a_worker_read_before_the_cancel_is_acked_unrun(redis):
    registry, ran, _ = _registry()
    queue = Queue(redis)
    await redis.xgroup_create(queue.keys.stream, queue.keys.group, id="0", mkstream=True)
    handle = await queue.enqueue("quick", "doomed")
    # A consumer has read it (it sits in its PEL, not started) and dies.
    await redis.xreadgroup(queue.keys.group, "crashed", {queue.keys.stream: ">"})
    assert await handle.cancel() is CancelOutcome.CANCELLED
    assert await redis.xlen(queue.keys.stream) == 1  # delivered: left for a worker to ack
    async with fast_worker(redis, registry, visibility_timeout_s=0.2) as worker:
        await eventually(lambda: _stream_empty(redis, queue))
        stats = await worker.stats()
    assert ran == [] and stats.reclaimed == 1 and stats.dead == 0
    assert await handle.status() is JobStatus.CANCELLED
    assert await redis.xlen(queue.keys.dead) == 0


async def _stream_empty(redis, queue: Queue) -> bool:
    return await redis.xlen(queue.keys.stream) == 0


@pytest.mark.asyncio
async def test_a_cancelled_scheduled_job_leaves_the_delayed_set(redis):
    queue = Queue(redis)
    later = await queue.enqueue_with(EnqueueOptions(delay_s=60), "quick", "later")
    other = await queue.enqueue_with(EnqueueOptions(delay_s=60), "quick", "other")
    assert await later.cancel() is CancelOutcome.CANCELLED
    [member] = await redis.zrange(queue.keys.delayed, 0, -1)
    assert other.id.encode() in member
    assert await later.status() is JobStatus.CANCELLED
    assert "next_at" not in await later.info()


@pytest.mark.asyncio
async def test_a_job_waiting_for_its_retry_is_cancelled_between_attempts(redis):
    registry = TaskRegistry()
    calls: list[int] = []

    @registry.task(max_attempts=5)
    async def flaky() -> None:
        calls.append(1)
        raise ConnectionError("down")

    queue = Queue(redis)
    handle = await queue.enqueue("flaky")
    async with fast_worker(redis, registry, retry_base_s=60, retry_max_s=60):
        await eventually(lambda: _is(handle, JobStatus.RETRYING))
        assert await handle.cancel() is CancelOutcome.CANCELLED
        assert await redis.zcard(queue.keys.delayed) == 0
        with pytest.raises(JobCancelled):
            await handle.result(timeout_s=5)
    assert calls == [1]


# --- while it runs ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_running_job_is_cancelled_by_its_worker_and_recorded_cancelled(redis):
    registry, ran, cancelled = _registry()
    queue = Queue(redis)
    handle = await queue.enqueue("hang", "long")
    after = await queue.enqueue("quick", "after")
    async with fast_worker(redis, registry, concurrency=1, heartbeat_s=0.05) as worker:
        await eventually(lambda: _is(handle, JobStatus.RUNNING))
        assert await queue.cancel(handle.id) is CancelOutcome.REQUESTED
        assert await handle.cancel() is CancelOutcome.REQUESTED  # asked twice: the same
        with pytest.raises(JobCancelled) as info:
            await handle.result(timeout_s=10)
        assert await after.result(timeout_s=10) == "after"  # its slot is free again
        stats = await worker.stats()
    assert cancelled == ["long"] and ran == ["long", "after"]
    assert info.value.reason == "cancelled while running, on request"
    record = await handle.info()
    assert record["status"] == "cancelled" and "finished_at" in record
    assert (stats.dead, stats.failed, stats.retried, stats.handed_back) == (0, 0, 0, 0)
    assert await redis.xlen(queue.keys.stream) == 0 and await redis.xlen(queue.keys.dead) == 0



@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_running_jobs_cancel_lands_within_one_heartbeat(fake):
    registry, _, cancelled = _registry()
    queue = Queue(fake)
    handle = await queue.enqueue("hang", "long")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(600):
        async with fast_worker(fake, registry, visibility_timeout_s=30, heartbeat_s=10):
            await eventually(lambda: _is(handle, JobStatus.RUNNING), timeout_s=60)
            await asyncio.sleep(3)  # mid-way between two beats
            asked = loop.time()
            assert await handle.cancel() is CancelOutcome.REQUESTED
            with pytest.raises(JobCancelled):
                await handle.result()
            took = loop.time() - asked
    assert cancelled == ["long"] and 0 < took <= 10  # virtual seconds: the bound is a beat


@pytest.mark.asyncio
async def test_a_cancel_requested_for_a_dead_workers_job_lands_when_it_is_reclaimed(redis):
    registry, ran, _ = _registry()
    queue = Queue(redis)
    handle = await queue.enqueue("hang", "long")
    crashing = fast_worker(redis, registry, visibility_timeout_s=0.3, name="crashing")
    await crashing.start()
    await eventually(lambda: _is(handle, JobStatus.RUNNING))
    await eventually(lambda: _ran(ran))  # marked running just before its first step
    await crashing.abort()  # the job stays "running", in the dead worker's PEL
    assert await handle.cancel() is CancelOutcome.REQUESTED
    async with fast_worker(redis, registry, visibility_timeout_s=0.3, name="survivor") as w:
        with pytest.raises(JobCancelled) as info:
            await handle.result(timeout_s=10)
        assert (await w.stats()).reclaimed == 1
    assert ran == ["long"]  # once, by the worker that died: never again
    assert info.value.reason == "cancelled on request before this attempt started"
    assert await redis.xlen(queue.keys.stream) == 0


# --- the CLI ------------------------------------------------------------------------------


@pytest.fixture(params=[pytest.param("real", marks=pytest.mark.real_redis), "fake_tcp"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "real":
        return request.getfixturevalue("redis_server").url
    server = serve_fake_tcp()
    request.addfinalizer(server.stop)
    return server.url


def test_cli_cancel_says_what_happened_with_its_exit_code(capsys, monkeypatch, url):
    monkeypatch.delenv("REDIS_URL", raising=False)
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    base = ["--redis-url", url, "--queue", queue]
    assert main([*base, "enqueue", "add", "1", "--job-id", "c-1"]) == 0
    capsys.readouterr()
    assert main([*base, "cancel", "c-1"]) == 0
    out, err = capsys.readouterr()
    assert out == "c-1 cancelled\n" and "not started" in err
    client = redis_sync.Redis.from_url(url)
    try:
        assert client.hget(QueueKeys(queue).job("c-1"), "status") == b"cancelled"
        client.hset(QueueKeys(queue).job("r-1"), mapping={"status": "running", "task": "add"})
        assert main([*base, "cancel", "r-1"]) == 0
        out, err = capsys.readouterr()
        assert out == "r-1 requested\n" and "heartbeat" in err
        assert client.hexists(QueueKeys(queue).job("r-1"), "cancel")
    finally:
        client.close()
    assert main([*base, "cancel", "c-1"]) == 1  # ended already: nothing to cancel
    out, err = capsys.readouterr()
    assert out == "c-1 ended\n" and "already ended (cancelled)" in err
    assert main([*base, "cancel", "nope"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "nope" in err and "Traceback" not in err


def test_cancelled_is_a_final_status():
    assert JobStatus.CANCELLED.final and JobStatus("cancelled") is JobStatus.CANCELLED
