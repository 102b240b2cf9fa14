"""course_lib.distributed under memory pressure and with its scripts flushed.

- Redis out of memory (``maxmemory`` reached, ``noeviction``): enqueue is refused
  with ``QueueFull`` and nothing written; a worker still starts when its group
  exists, settles the jobs it runs, and holds (and beats) a read it cannot mark
  running, retrying with backoff, so nothing is read past its slots nor
  dead-lettered as poison for deliveries that never ran.
- The script cache emptied under a running worker (SCRIPT FLUSH, a restart): the
  worker never holds more entries than its concurrency.

The memory tests need a real redis-server: fakeredis has no ``maxmemory``. Each
starts its own (``redis_server_factory``), so the shared server keeps its memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest
import redis.exceptions
from _worker_support import LOG, eventually, fast_worker

from course_lib.distributed import JobStatus, Queue, QueueFull, TaskRegistry
from course_lib.redis import connect

PASSWORD = "s3cret-pw"
NOEVICTION = ["--maxmemory-policy", "noeviction"]


async def _run_out_of_memory(client) -> None:
    """Every command that may grow memory is refused from now on (as when full)."""
    await client.config_set("maxmemory", 1)


async def _memory_back(client) -> None:
    await client.config_set("maxmemory", 0)


async def _held(client, queue: Queue, consumer: str) -> int:
    """How many entries ``consumer`` holds in its pending list."""
    summary = await client.xpending(queue.keys.stream, queue.keys.group)
    for entry in summary.get("consumers") or []:
        if _text(entry["name"]) == consumer:
            return int(entry["pending"])
    return 0


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.asyncio
async def test_enqueue_past_maxmemory_is_refused_and_writes_nothing(redis_server_factory):
    """The issue's case: 20 MB and noeviction, enqueue used to go on to 1.4 GB."""
    server = redis_server_factory(password=PASSWORD,
                                  extra_args=[*NOEVICTION, "--maxmemory", "20mb"])
    client = await connect(server.url)
    try:
        queue = Queue(client, "big")
        enqueued = 0
        with pytest.raises(QueueFull) as refused:
            for n in range(2000):  # 100 MB of jobs, five times the limit
                await queue.enqueue("store", "x" * 50_000, job_id=f"j{n}")
                enqueued += 1
        memory = await client.info("memory")
        assert memory["used_memory"] < 2 * memory["maxmemory"]
        message = str(refused.value)
        assert "'big'" in message and "out of memory" in message
        assert f"127.0.0.1:{server.port}" in message and PASSWORD not in message
        assert isinstance(refused.value.__cause__, redis.exceptions.OutOfMemoryError)
        assert isinstance(refused.value, redis.exceptions.RedisError)  # as before, for callers
        # Nothing of the refused job: no entry, no record, no token.
        assert await client.xlen(queue.keys.stream) == enqueued
        assert not await client.exists(queue.keys.job(f"j{enqueued}"),
                                       queue.keys.done(f"j{enqueued}"))
        with pytest.raises(QueueFull) as refused_many:
            await queue.enqueue_many([("store", ["x"]), ("store", ["y"])])
        assert refused_many.value.handles == []  # none got in
        assert await client.xlen(queue.keys.stream) == enqueued
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_a_worker_starts_under_oom_when_its_group_exists(redis_server_factory):
    """XGROUP CREATE is refused for lack of memory before it finds the group exists."""
    server = redis_server_factory(extra_args=NOEVICTION)
    client = await connect(server.url)
    try:
        queue = Queue(client)
        await client.xgroup_create(queue.keys.stream, queue.keys.group, id="0", mkstream=True)
        await _run_out_of_memory(client)
        worker = fast_worker(client, TaskRegistry())
        await worker.start()
        await worker.stop()
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_a_job_running_when_memory_runs_out_is_settled(redis_server_factory):
    """Settling writes the result but frees the entry: it runs with ``allow-oom``."""
    server = redis_server_factory(extra_args=NOEVICTION)
    client = await connect(server.url)
    try:
        registry = TaskRegistry()
        gate = asyncio.Event()

        @registry.task
        async def work(n: int) -> int:
            await gate.wait()
            return n * 2

        queue = Queue(client, registry=registry)
        handle = await queue.enqueue("work", 21)
        async with fast_worker(client, registry, visibility_timeout_s=30):
            await eventually(lambda: _status_is(handle, JobStatus.RUNNING))
            await _run_out_of_memory(client)
            gate.set()
            await eventually(lambda: _status_is(handle, JobStatus.DONE))
            assert (await handle.info())["result"] == "42"
            assert await client.xlen(queue.keys.stream) == 0
            assert (await queue.counts()).pending == 0
            await _memory_back(client)
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_a_settle_refused_for_memory_is_retried_until_memory_is_back(
        redis_server_factory):
    """Where SETTLE cannot run with ``allow-oom`` (Redis 6.2: forced here on 7), the
    refusal is retried like an outage, not given up at once (the entry left pending,
    reclaimed and the job run again)."""
    server = redis_server_factory(extra_args=NOEVICTION)
    client = await connect(server.url)
    try:
        registry = TaskRegistry()
        gate = asyncio.Event()
        runs: list[int] = []

        @registry.task
        async def work(n: int) -> int:
            runs.append(n)
            await gate.wait()
            return n

        queue = Queue(client, registry=registry)
        handle = await queue.enqueue("work", 7)
        worker = fast_worker(client, registry, visibility_timeout_s=30)
        settle = worker._settle_script
        settle._script = settle._plain  # as on a server that reads no flags line
        async with worker:
            await eventually(lambda: _status_is(handle, JobStatus.RUNNING))
            await _run_out_of_memory(client)
            gate.set()
            await asyncio.sleep(0.5)  # a few refused settles
            assert await handle.status() is JobStatus.RUNNING
            await _memory_back(client)
            await eventually(lambda: _status_is(handle, JobStatus.DONE))
        assert runs == [7]
        assert (await queue.counts()).pending == 0
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_a_read_that_cannot_start_for_lack_of_memory_is_held_and_retried(
        redis_server_factory, caplog):
    """START refused: the read is held (and beaten) while the worker backs off.

    It used to free the slots at once and read again, thousands of times a second,
    each read moving more entries into its pending list unrun; reclaimed later, their
    delivery count grew until they were dead-lettered as poison though none had run.
    """
    caplog.set_level(logging.INFO, logger=LOG)
    server = redis_server_factory(extra_args=NOEVICTION)
    client = await connect(server.url)
    try:
        registry = TaskRegistry()
        runs: Counter[int] = Counter()

        @registry.task
        async def work(n: int) -> int:
            runs[n] += 1
            return n

        queue = Queue(client, registry=registry)
        jobs = [queue.job("work", [n]) for n in range(12)]
        handles = [queue.handle(job.id) for job in jobs]
        worker = fast_worker(client, registry, concurrency=3, max_deliveries=2,
                             visibility_timeout_s=0.5, heartbeat_s=0.1)
        async with worker:
            # The jobs arrive as memory runs out: one transaction, the limit set last.
            async with client.pipeline(transaction=True) as pipe:
                for job in jobs:
                    pipe.xadd(queue.keys.stream, {"job": job.encode()})
                pipe.config_set("maxmemory", 1)
                await pipe.execute()
            held = []
            for _ in range(150):  # 3 s at least: six visibility timeouts
                held.append(await _held(client, queue, worker.name))
                await asyncio.sleep(0.02)
            assert not runs
            # One read, a batch (3) and one batch read ahead (3), and never a second.
            assert max(held) <= 6, f"held {max(held)} entries: more than one read of 3 + 3"
            refusals = [r for r in caplog.records if "could not be marked" in r.getMessage()
                        or "refused to mark" in r.getMessage()]
            assert 1 <= len(refusals) < 50, f"{len(refusals)} refusals logged in 3 s"
            await _memory_back(client)
            await eventually(lambda: _all_done(handles), timeout_s=10)
        assert runs == Counter(range(12))  # each once
        assert await client.xlen(queue.keys.dead) == 0
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_script_flush_never_lets_a_worker_hold_more_than_its_concurrency(redis):
    """A settle that finds its script gone used to have read more entries already."""
    registry = TaskRegistry()
    runs: Counter[int] = Counter()

    @registry.task
    async def work(n: int) -> int:
        runs[n] += 1
        await asyncio.sleep(0.002)
        return n

    queue = Queue(redis, registry=registry)
    handles = await queue.enqueue_many([("work", [n]) for n in range(300)])
    worker = fast_worker(redis, registry, concurrency=3, read_ahead=3, maintenance_s=30)
    held: list[int] = []
    async with worker:
        while not await _stream_empty(redis, queue):
            if len(held) % 5 == 0:
                await redis.script_flush()
            held.append(await _held(redis, queue, worker.name))
            await asyncio.sleep(0.001)  # fakeredis answers without letting the worker run
        await eventually(lambda: _all_done(handles), timeout_s=30)
    bound = 3 + worker.read_ahead  # its slots: 3 to run, 3 read ahead
    assert max(held) <= bound, f"held {max(held)} entries with {bound} slots"
    assert runs == Counter(range(300))  # each once: none lost, none run twice


async def _status_is(handle, status: JobStatus) -> bool:
    return await handle.status() is status


async def _all_done(handles) -> bool:
    return all([await h.status() is JobStatus.DONE for h in handles])


async def _stream_empty(client, queue: Queue) -> bool:
    return await client.xlen(queue.keys.stream) == 0
