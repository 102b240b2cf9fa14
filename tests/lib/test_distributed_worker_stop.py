"""course_lib.distributed.worker: a stop that its caller gives up on, a read that never returns.

- ``stop()`` runs in a task of its own: a caller cancelled mid-way (a timeout around
  the shutdown, a second Ctrl-C) leaves it going, heartbeat included; the running
  job is settled once, never taken over by another worker, and a second ``stop()``
  returns the real report.
- A read in flight that never returns (a connection gone silent, no socket timeout)
  is cancelled ``block_s + cancel_timeout_s`` after the stop request: the stop goes
  on and settles the running jobs.

The tests on both backends use small real times and assert outcomes only; the time
bound is checked in virtual time (looptime), on fakeredis.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest
import pytest_asyncio
from _worker_support import LOG, eventually, fast_worker

from course_lib.distributed import JobStatus, Queue, TaskRegistry
from course_lib.redis import connect


@pytest_asyncio.fixture
async def other(redis_url):
    client = await connect(redis_url)
    yield client
    await client.aclose()


async def _is(handle, status: JobStatus) -> bool:
    return await handle.status() is status


def _lines(caplog, mark: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG and mark in r.getMessage()]


# --- a stop() its caller gives up on ----------------------------------------------------------


@pytest.mark.asyncio
async def test_a_cancelled_stop_goes_on_and_the_job_is_not_taken_over(redis, other):
    registry = TaskRegistry()
    runs: Counter[str] = Counter()

    @registry.task
    async def slow() -> str:
        runs["slow"] += 1
        await asyncio.sleep(1.0)  # longer than the visibility timeout: heartbeats matter
        return "ok"

    handle = await Queue(redis).enqueue("slow", job_id="slow")
    first = fast_worker(redis, registry, name="first", visibility_timeout_s=0.5)
    second = fast_worker(other, registry, name="second", visibility_timeout_s=0.5)
    async with asyncio.timeout(30):
        await first.start()
        await eventually(lambda: _is(handle, JobStatus.RUNNING))
        await second.start()  # reclaims whatever is idle past 0.5 s
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(first.stop(grace_s=5), 0.01)  # gives up mid-way
        assert "stopping" in repr(first)
        report = await first.stop()  # the first stop's report, once it is over
        assert await first.stop() is report
        await second.stop()
    assert (len(report.finished), report.cancelled, report.clean) == (1, (), True)
    assert runs == {"slow": 1}  # run once: the heartbeat went on during the stop
    assert await handle.result(timeout_s=1) == "ok"
    assert (await second.stats()).reclaimed == 0
    assert (await Queue(redis).counts()).pending == 0


@pytest.mark.asyncio
async def test_a_stop_whose_task_is_cancelled_still_hands_the_job_back(redis, other):
    registry = TaskRegistry()
    release = asyncio.Event()
    runs: Counter[str] = Counter()

    @registry.task
    async def stuck() -> str:
        runs["stuck"] += 1
        await release.wait()
        return "finished elsewhere"

    queue = Queue(redis)
    handle = await queue.enqueue("stuck", job_id="s")
    worker = fast_worker(redis, registry, name="first")
    async with asyncio.timeout(30):
        await worker.start()
        await eventually(lambda: _is(handle, JobStatus.RUNNING))
        stopping = asyncio.create_task(worker.stop(grace_s=0.3))
        await asyncio.sleep(0.01)  # it waits for the read in flight (block_s)
        stopping.cancel()  # as a second Ctrl-C cancels the main task
        with pytest.raises(asyncio.CancelledError):
            await stopping
        await worker.abort()  # waits for the stop under way: nothing turns into a crash
        report = await worker.stop()
        assert worker.report is report
        assert (report.finished, len(report.cancelled), report.clean) == ((), 1, True)
        # Handed back after the grace period, once: re-added to the stream and acked.
        assert await handle.status() is JobStatus.QUEUED
        assert (await queue.counts()).pending == 0 and await redis.xlen(queue.keys.stream) == 1
        assert (await worker.stats()).handed_back == 1
        release.set()
        async with fast_worker(other, registry, name="second"):
            assert await handle.result(timeout_s=5) == "finished elsewhere"
    assert runs == {"stuck": 2}  # one attempt cut short, one run to its end, never both


@pytest.mark.asyncio
async def test_stop_refuses_a_negative_grace_and_stays_running(redis):
    worker = fast_worker(redis, TaskRegistry())
    async with asyncio.timeout(30):
        await worker.start()
        with pytest.raises(ValueError, match="grace_s"):
            await worker.stop(grace_s=-1)
        assert "running" in repr(worker)
        assert (await worker.stop()).clean


# --- a read that never returns ----------------------------------------------------------------


def _silence_reads_after_the_first(client, monkeypatch) -> list[int]:
    """Make the client's XREADGROUP hang forever after its first call (a black hole)."""
    real = client.xreadgroup
    calls: list[int] = []

    async def xreadgroup(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            await asyncio.get_running_loop().create_future()  # no answer, ever
        return await real(*args, **kwargs)

    monkeypatch.setattr(client, "xreadgroup", xreadgroup)
    return calls


@pytest.mark.asyncio
@pytest.mark.parametrize("job_ends", [True, False], ids=["finishes", "handed-back"])
async def test_a_read_that_never_returns_is_cancelled_and_the_job_settled(
        redis, redis_url, monkeypatch, caplog, job_ends):
    caplog.set_level(logging.WARNING, logger=LOG)
    registry = TaskRegistry()
    runs: Counter[str] = Counter()
    release = asyncio.Event()

    @registry.task
    async def work() -> str:
        runs["work"] += 1
        await release.wait()
        return "done"

    queue = Queue(redis)
    handle = await queue.enqueue("work", job_id="w")  # there before the first read
    client = await connect(redis_url)
    try:
        calls = _silence_reads_after_the_first(client, monkeypatch)
        worker = fast_worker(client, registry, cancel_timeout_s=0.3,
                             grace_s=10 if job_ends else 0.5)
        async with asyncio.timeout(30):
            await worker.start()
            await eventually(lambda: _is(handle, JobStatus.RUNNING))
            await eventually(lambda: _true(len(calls) > 1))  # the read in flight hangs
            stopping = asyncio.create_task(worker.stop())
            # The read is cancelled, the stop goes on: the job ends in its grace period.
            await eventually(lambda: _true(bool(_lines(caplog, "read'] still running"))))
            if job_ends:
                release.set()
            report = await stopping
    finally:
        await client.aclose()
    assert runs == {"work": 1}
    assert (await queue.counts()).pending == 0
    if job_ends:
        assert (report.cancelled, report.clean) == ((), True)  # finished, maybe before close
        assert await handle.result(timeout_s=1) == "done"
    else:
        assert (report.finished, len(report.cancelled)) == ((), 1)
        assert await handle.status() is JobStatus.QUEUED
        assert await redis.xlen(queue.keys.stream) == 1


async def _true(value: bool) -> bool:
    return value


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_stop_with_a_silent_read_ends_within_block_cancel_timeout_and_grace(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    registry = TaskRegistry()

    @registry.task
    async def forever() -> None:
        await asyncio.sleep(3600)

    client = await connect(None)  # the shared in-process fakeredis
    try:
        await client.flushall()
        handle = await Queue(client).enqueue("forever", job_id="f")
        calls = _silence_reads_after_the_first(client, monkeypatch)
        worker = fast_worker(client, registry, block_s=0.5, cancel_timeout_s=2, grace_s=3)
        async with asyncio.timeout(60):
            await worker.start()
            await eventually(lambda: _is(handle, JobStatus.RUNNING))
            await eventually(lambda: _true(len(calls) > 1))
            loop = asyncio.get_running_loop()
            began = loop.time()
            report = await worker.stop()
            took = loop.time() - began
        assert len(report.cancelled) == 1
        assert await handle.status() is JobStatus.QUEUED  # handed back
        # The read is cancelled at block_s + cancel_timeout_s, then the grace period.
        assert 0.5 + 2 + 3 <= took <= 0.5 + 2 + 3 + 0.5
    finally:
        await client.aclose()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_stop_on_a_server_gone_silent_is_bounded_and_says_what_waited(monkeypatch,
                                                                              caplog):
    """Every command unanswered from some point (a frozen server, no socket timeout): the
    stop ends within its bounds, and the steps that reached theirs say so (the heartbeat
    in flight, leaving the group), not only the read and the settles."""
    caplog.set_level(logging.WARNING, logger=LOG)
    monkeypatch.delenv("REDIS_URL", raising=False)
    registry = TaskRegistry()

    @registry.task
    async def forever() -> None:
        await asyncio.sleep(3600)

    client = await connect(None)  # the shared in-process fakeredis
    try:
        await client.flushall()
        handle = await Queue(client).enqueue("forever", job_id="f")
        worker = fast_worker(client, registry, block_s=0.5, cancel_timeout_s=2, grace_s=1,
                             heartbeat_s=1, visibility_timeout_s=5)
        async with asyncio.timeout(120):
            await worker.start()
            await eventually(lambda: _is(handle, JobStatus.RUNNING))

            async def silent(*args, **kwargs):
                await asyncio.get_running_loop().create_future()  # no answer, ever

            monkeypatch.setattr(client, "execute_command", silent)
            await asyncio.sleep(1.5)  # a heartbeat went out meanwhile, unanswered
            loop = asyncio.get_running_loop()
            began = loop.time()
            await worker.stop()
            took = loop.time() - began
            monkeypatch.undo()
    finally:
        await client.aclose()
    said = [r.getMessage() for r in caplog.records if r.name == LOG]
    assert any("a heartbeat still waits on Redis 1 s after the stop" in m for m in said), said
    assert any("Redis did not answer within 2 s; this consumer stays in the group" in m
               for m in said), said
    # Each step within its bound: the read (block_s + cancel_timeout_s, then a cancel),
    # the grace, the settles, the heartbeat, leaving the group.
    assert took <= (0.5 + 2 + 2) + (1 + 2) + (2 + 2) + (1 + 2) + 2, took
