"""The job queue on a Redis Cluster of three masters, and a queue partitioned over them.

One local cluster for the module (``redis_cluster``); each test starts from empty
masters. The Queue and Worker are the unchanged ones: every key of a queue carries
its name as hash tag, so its scripts touch one slot. What the cluster client changes
is checked here: results (the listener's pub/sub), retries, dead letters,
``enqueue_many`` (a cluster pipeline refuses scripts), and partitions that really
land on different masters.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest
import pytest_asyncio
import redis.asyncio
from _cli_support import APP, WorkerProcess
from _worker_support import FAST, eventually

from course_lib.distributed import (
    CancelOutcome,
    Job,
    JobCancelled,
    JobFailed,
    JobStatus,
    Queue,
    TaskRegistry,
    Worker,
)
from course_lib.distributed.cli import main
from course_lib.distributed.keys import QueueKeys
from course_lib.distributed.partitions import (
    PartitionedQueue,
    PartitionedWorkers,
    cluster_ready,
    partition_names,
    partitions_for,
)
from course_lib.redis import connect


@pytest_asyncio.fixture
async def cluster(redis_cluster):
    client = await connect(redis_cluster.url)
    try:
        await client.flushall()  # every master
        yield client
    finally:
        await client.aclose()


def _registry(gate: asyncio.Event | None = None) -> TaskRegistry:
    registry = TaskRegistry()
    calls: dict[str, int] = {}

    @registry.task
    async def add(a: int, b: int) -> int:
        if gate is not None:
            await gate.wait()
        return a + b

    @registry.task(max_attempts=3)
    async def flaky(job: str) -> str:  # fails twice, then succeeds
        calls[job] = calls.get(job, 0) + 1
        if calls[job] < 3:
            raise ConnectionError(f"attempt {calls[job]}")
        return f"ok after {calls[job]}"

    @registry.task(max_attempts=2)
    async def broken() -> None:
        raise ValueError("always")

    return registry


# --- one queue on a cluster ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_job_runs_on_a_cluster_and_its_result_wakes_the_waiter(cluster):
    gate = asyncio.Event()
    registry = _registry(gate)
    async with Queue(cluster, "jobs", registry=registry) as queue, \
            Worker(cluster, registry, queue="jobs", **FAST):
        handle = await queue.enqueue("add", 2, 3)
        waiting = asyncio.create_task(handle.result(timeout_s=30))
        # The waiter has read the record (running) and listens: the job ends after.
        await eventually(lambda: _is(handle, JobStatus.RUNNING))
        await eventually(lambda: _true(queue._results.waiting() == 1))
        gate.set()
        assert await waiting == 5


@pytest.mark.asyncio
async def test_retries_and_dead_letters_on_a_cluster(cluster):
    registry = _registry()
    async with Queue(cluster, "jobs", registry=registry) as queue, \
            Worker(cluster, registry, queue="jobs", **FAST):
        flaky = await queue.enqueue("flaky", "x")
        broken = await queue.enqueue("broken")
        assert await flaky.result(timeout_s=30) == "ok after 3"
        with pytest.raises(JobFailed) as info:
            await broken.result(timeout_s=30)
        assert info.value.status is JobStatus.DEAD
        letters = await queue.dead_letters()
        assert [Job.decode(letter.job).id for letter in letters] == [broken.id]
        counts = await queue.counts()
        assert (counts.stream, counts.pending, counts.delayed, counts.dead) == (0, 0, 0, 1)
        # requeue_dead pipelines a script, which a cluster pipeline refuses; a Queue made
        # on a cluster client has made it legal by itself (cluster_ready).
        report = await queue.requeue_dead()
        assert report.ok and list(report.requeued.values()) == [broken.id]
        with pytest.raises(JobFailed):  # it runs again, and dies again
            await broken.result(timeout_s=30)
        assert [Job.decode(letter.job).id for letter in await queue.dead_letters()] == [broken.id]


@pytest.mark.asyncio
async def test_enqueue_many_on_a_cluster_one_pipeline_and_ids_claimed_once(cluster):
    registry = _registry()
    queue = Queue(cluster, "jobs", registry=registry)  # no cluster_ready(): done by itself
    assert cluster_ready(queue) is queue
    handles = await queue.enqueue_many([Job("add", [i, i], id=f"j{i}") for i in range(50)])
    again = await queue.enqueue_many([Job("add", [0, 0], id="j0"), ("add", [1, 1])])
    assert all(h.enqueued for h in handles)
    assert [h.enqueued for h in again] == [False, True]
    assert (await queue.counts()).stream == 51
    await cluster.script_flush()  # every master forgets the script: NOSCRIPT, loaded again
    more = await queue.enqueue_many([("add", [2, 2])])
    assert more[0].enqueued
    async with Worker(cluster, registry, queue=queue.name, **FAST):
        assert [await h.result(timeout_s=30) for h in handles] == [2 * i for i in range(50)]
    await queue.aclose()


# --- partitions -------------------------------------------------------------------------


def test_partition_names_fall_in_equal_slot_bands_and_are_stable():
    from redis.crc import key_slot

    names = partition_names("jobs", 6)
    assert names == partition_names("jobs", 6)
    bands = [key_slot(n.encode()) * 6 // 16384 for n in names]
    assert bands == list(range(6))


def test_every_partition_gets_a_process_and_no_process_idles():
    names = partition_names("jobs", 3)
    for processes in (1, 2, 3, 4, 6):
        served = [partitions_for(names, p, processes) for p in range(processes)]
        assert all(served)
        assert {n for s in served for n in s} == set(names)


@pytest.mark.asyncio
async def test_a_partitioned_queue_lands_on_every_master(cluster, redis_cluster):
    registry = _registry()
    queue = PartitionedQueue(cluster, "jobs", 3, registry=registry)
    placement = queue.placement()
    assert len(set(placement.values())) == 3  # one partition per master
    handles = await queue.enqueue_many([("add", [i, 1]) for i in range(300)])
    # Asked of each master directly, not through the cluster client.
    per_node = {}
    for url, port in zip(redis_cluster.node_urls, redis_cluster.ports, strict=True):
        node = redis.asyncio.Redis.from_url(url)
        try:
            per_node[port] = sum([await node.xlen(QueueKeys(name).stream)
                                  for name, at in placement.items() if at.endswith(f":{port}")])
        finally:
            await node.aclose()
    assert sum(per_node.values()) == 300
    assert all(count > 50 for count in per_node.values()), per_node  # crc32 of uuids: ~100 each
    async with PartitionedWorkers(cluster, registry, queue.names, name="w", **FAST) as workers:
        assert [await h.result(timeout_s=30) for h in handles] == [i + 1 for i in range(300)]
        stats = await workers.stats()
    assert stats.processed == 300
    total = await queue.counts()
    assert (total.stream, total.pending, total.lag) == (0, 0, 0)
    await queue.aclose()


@pytest.mark.asyncio
async def test_a_job_is_found_by_id_from_another_client_and_a_key_keeps_jobs_together(cluster):
    registry = _registry()
    queue = PartitionedQueue(cluster, "jobs", 3, registry=registry)
    first = await queue.enqueue("add", 1, 2, job_id="add-1")
    assert first.enqueued
    again = await queue.enqueue("add", 1, 2, job_id="add-1")
    assert again.enqueued is False  # same id, same partition: claimed once
    keyed = [await queue.enqueue("add", i, 0, key="customer-7") for i in range(10)]
    assert len({h.queue.name for h in keyed}) == 1
    other = PartitionedQueue(cluster, "jobs", 3, registry=registry)
    assert await other.handle("add-1").status() is JobStatus.QUEUED
    assert await other.handle(keyed[0].id, key="customer-7").status() is JobStatus.QUEUED
    doomed = await queue.enqueue("add", 0, 0, job_id="doomed")
    assert await other.cancel("doomed") is CancelOutcome.CANCELLED  # the CANCEL script
    with pytest.raises(JobCancelled):
        await doomed.result(timeout_s=30)
    # Two processes, each serving its share of the partitions.
    shares = [partitions_for(queue.names, p, 2) for p in range(2)]
    async with PartitionedWorkers(cluster, registry, shares[0], **FAST), \
            PartitionedWorkers(cluster, registry, shares[1], **FAST):
        assert await other.handle("add-1").result(timeout_s=30) == 3
        assert [await h.result(timeout_s=30) for h in keyed] == list(range(10))
    await queue.aclose()
    await other.aclose()


async def _is(handle, status) -> bool:
    return await handle.status() is status


async def _true(value: bool) -> bool:
    return value


# --- the same on one server (fakeredis and real): no cluster needed ---------------------------


@pytest.mark.asyncio
async def test_a_partitioned_queue_works_on_one_server_too(redis):
    registry = _registry()
    queue = PartitionedQueue(redis, "jobs", 3, registry=registry)
    assert cluster_ready(queue.queues[0]) is queue.queues[0]  # nothing to change here
    assert set(queue.placement().values()) == {"one server"}
    handles = await queue.enqueue_many([("add", [i, 0]) for i in range(30)])
    assert (await queue.counts()).stream == 30
    by_partition = await queue.counts_by_partition()
    assert sorted(by_partition) == sorted(queue.names)
    assert sum(c.stream for c in by_partition.values()) == 30
    async with PartitionedWorkers(redis, registry, queue.names, **FAST):
        assert [await h.result(timeout_s=30) for h in handles] == list(range(30))
    await queue.aclose()


def test_bad_partitions_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        PartitionedQueue(None, "jobs", ["a", "a"])
    with pytest.raises(ValueError, match="not usable"):
        PartitionedQueue(None, "jobs", ["a{b}"])
    with pytest.raises(ValueError, match="count must be"):
        partition_names("jobs", 0)
    with pytest.raises(ValueError, match="process must be"):
        partitions_for(["a"], 1, 1)


# --- the command line on a cluster --------------------------------------------------------


def test_the_command_line_runs_a_worker_and_its_commands_on_a_cluster(redis_cluster, capsys,
                                                                       monkeypatch):
    """``--redis-url redis+cluster://...``: a worker process runs jobs, ``enqueue --wait``
    gets their results and failures, ``stats``, ``dead list`` and ``dead requeue`` read and
    write the queue's keys on their master, and SIGTERM stops the worker gracefully."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    base = ["--redis-url", redis_cluster.url, "--queue", "cli-cluster"]

    def cli(*argv: str) -> tuple[int, str, str]:
        code = main([*base, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    with WorkerProcess(redis_cluster.url, "cli-cluster", "--name", "c1") as worker:
        worker.wait_for("worker c1 ready")
        assert cli("enqueue", "add", "2", "3", "--job-id", "sum", "--wait", "20")[:2] == (
            0, "sum\n5\n")
        code, _, err = cli("enqueue", "boom", "oh no", "--app", APP, "--job-id", "b",
                           "--wait", "20")
        assert code == 1 and "job b (boom) dead" in err
        code, out, _ = cli("stats")
        assert code == 0 and re.search(r"^dead\s+1$", out, re.M), out
        code, out, _ = cli("dead", "list")
        assert code == 0 and "oh no" in out
        assert cli("dead", "requeue", "--all", "--app", APP)[0] == 0
        until = time.monotonic() + 20  # run again (a fresh attempt; it dies again)
        while sum("→ boom(id=b)" in line for line in worker.lines) < 2:
            assert time.monotonic() < until, "\n".join(worker.lines)
            time.sleep(0.05)
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.exit_code() == 0
    assert worker.wait_for("worker c1 stopped") > worker.wait_for("stop requested (SIGTERM)")
    assert not any("Traceback" in line for line in worker.lines)
