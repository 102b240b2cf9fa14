"""One queue over several streams: past what one stream, one slot, one shard can take.

    queue = PartitionedQueue(await connect(url), "jobs", 6)   # jobs.0 ... jobs.5
    handle = await queue.enqueue("resize", 42)                # on the partition of its id
    await handle.result(timeout_s=30)
    async with PartitionedWorkers(redis, registry, queue.names, concurrency=10):
        ...                                                   # one Worker per partition

A queue is one stream, and every key of a queue carries its name as the hash tag
(``cq:{jobs}:stream``, see ``keys``): on a Redis Cluster the whole queue lives in
one slot, on one master, whose single thread runs every XADD, XREADGROUP and
settle script of it. More workers do not help once that thread is busy. A
partitioned queue is N ordinary queues (``jobs.0``, ``jobs.1``...), each its own
stream, slot and hash tag; the Lua scripts still touch one queue's keys only, so
they stay legal on a cluster, and each partition is a complete queue (retries,
dead letters, results, cancel) that the unchanged ``Worker`` serves.

Where a job goes: the partition of its routing key, ``crc32(key) % N``; the key is
the job's id unless ``key=`` says otherwise. So ``handle(job_id)`` finds a job from
any process, an id enqueued twice lands on the same partition (and runs once), and
jobs of one key (a customer, an account) share one stream, in order. Round robin
would spread more evenly, but another process could not find a job by its id.

Where a partition lives: ``partition_names(base, N)`` picks names whose slots fall
in N equal bands of the 16,384 slots (``jobs.1`` may become ``jobs.1.4``: the
suffix is what moves it into its band). A cluster whose masters own equal
contiguous ranges, as ``redis-cli --cluster create`` makes it, then holds N/M
partitions per master for M masters (N a multiple of M); ``placement()`` shows it.

What is given up: no order across partitions; ``counts()`` sums N queues; a
worker per partition reads N streams (N blocking reads, N connections).
``requeue_dead`` and ``move_due`` are per partition (``queue.queues[i]``). A
``Queue`` made on a cluster client applies ``cluster_ready`` to itself, for its
pipelined scripts (``enqueue_many``, ``requeue_dead``).
"""

from __future__ import annotations

__all__ = ["PartitionedQueue", "PartitionedWorkers", "cluster_ready", "partition_names",
           "partitions_for"]

import asyncio
import weakref
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import redis.asyncio
import redis.asyncio.cluster
from redis.crc import key_slot

from .job import Job
from .keys import DEFAULT_QUEUE, QueueKeys, check_queue_name
from .queue import CancelOutcome, JobHandle, Queue, QueueCounts, QueueFull
from .registry import TaskRegistry
from .worker import Worker, WorkerStats

SLOTS = 16384  # Redis Cluster's hash slots
MAX_PARTITIONS = 1024


def partition_names(base: str = DEFAULT_QUEUE, count: int = 3) -> list[str]:
    """``count`` queue names for ``base``, the i-th hashing into the i-th of ``count`` slot bands.

        partition_names("jobs", 3)   # ['jobs.0', 'jobs.1.2', 'jobs.2'] (slots 0-5460, ...)

    The same on every machine (CRC16, as Redis hashes): clients and workers agree
    without asking Redis.
    """
    check_queue_name(base)
    if not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(f"count must be 1 to {MAX_PARTITIONS}, not {count!r}")
    names = []
    for index in range(count):
        low, high = SLOTS * index // count, SLOTS * (index + 1) // count
        suffix = 0
        while True:
            name = f"{base}.{index}" if suffix == 0 else f"{base}.{index}.{suffix}"
            if low <= key_slot(name.encode()) < high:
                break
            suffix += 1
        names.append(check_queue_name(name))
    return names


def partitions_for(names: Sequence[str], process: int, processes: int) -> list[str]:
    """The partitions worker process ``process`` (0-based) of ``processes`` serves.

        partitions_for(names, 0, 2)   # names[0::2]: fewer processes than partitions
        partitions_for(names, 4, 6)   # [names[4 % len(names)]]: more: several per stream

    Every partition gets a process, and no process idles; with more processes than
    partitions, some streams have two consumers (their consumer group shares them).
    """
    if not 0 <= process < processes:
        raise ValueError(f"process must be 0 to {processes - 1}, not {process!r}")
    if processes >= len(names):
        return [names[process % len(names)]]
    return list(names[process::processes])


class _PipelinedScript:
    """A Queue's registered script, that also runs inside a cluster pipeline.

    redis-py's cluster pipeline refuses scripts (``evalsha`` on it raises
    RedisClusterException), so ``Queue.enqueue_many`` and ``requeue_dead`` would fail on
    a RedisCluster client. Here the call becomes a plain EVALSHA command in the
    pipeline: every key of one queue is in one slot, so the batch still goes to one
    node in one round trip. The script is loaded first, once per pipeline (on every
    master), as redis-py's own pipelines check it once per pipeline.
    """

    def __init__(self, script: Any) -> None:
        self._script = script
        self.sha = script.sha
        self._loaded_for: weakref.WeakSet[Any] = weakref.WeakSet()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (),
                       client: Any = None) -> Any:
        if not isinstance(client, redis.asyncio.cluster.ClusterPipeline):
            return await self._script(keys=keys, args=args, client=client)
        if client not in self._loaded_for:
            await self._script.registered_client.script_load(self._script.script)
            self._loaded_for.add(client)
        return client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


def cluster_ready(queue: Queue) -> Queue:
    """``queue``, with its pipelined scripts runnable on a RedisCluster client; returned.

        queue = cluster_ready(Queue(await connect("redis+cluster://..."), "jobs"))
        await queue.enqueue_many(jobs)        # else RedisClusterException on a cluster

    Everything else of a Queue (and a Worker) works on a cluster as it is. A no-op on
    a single server's client.
    """
    if isinstance(queue.redis, redis.asyncio.RedisCluster):
        # The scripts a Queue sends in pipelines: ENQUEUE, and its dead letters' REQUEUE_DEAD.
        for holder, name in ((queue, "_enqueue"), (queue._dead, "_requeue")):
            script = getattr(holder, name)
            if not isinstance(script, _PipelinedScript):
                setattr(holder, name, _PipelinedScript(script))
    return queue


class PartitionedQueue:
    """N queues used as one: enqueue spreads jobs by key, handles find them by id.

        queue = PartitionedQueue(redis, "jobs", 6, registry=registry)
        await queue.enqueue("resize", 42)                    # routed by its (new) id
        await queue.enqueue("bill", 7, key="customer-7")     # every job of customer 7: one stream
        queue.handle("resize-42")                            # the handle, from any process
        await queue.aclose()

    ``partitions``: a count (names from ``partition_names``) or the names themselves.
    Every client and worker of the queue must use the same names, in the same order.
    """

    def __init__(self, redis: Any, base: str = DEFAULT_QUEUE,
                 partitions: int | Sequence[str] = 3, *,
                 registry: TaskRegistry | None = None) -> None:
        self.redis = redis
        self.base = base
        self.names = (partition_names(base, partitions) if isinstance(partitions, int)
                      else [check_queue_name(n) for n in partitions])
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"partitions must be distinct names, at least one: {self.names!r}")
        self.queues = [cluster_ready(Queue(redis, name, registry=registry))
                       for name in self.names]

    def __repr__(self) -> str:
        return f"<PartitionedQueue {self.base!r} over {len(self.names)} partitions>"

    async def __aenter__(self) -> PartitionedQueue:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every partition's result listener (the client stays open)."""
        await asyncio.gather(*(queue.aclose() for queue in self.queues))

    def partition(self, key: str) -> Queue:
        """The partition (a Queue) that ``key`` routes to: ``crc32(key) % N``."""
        return self.queues[zlib.crc32(key.encode()) % len(self.queues)]

    async def enqueue(self, task: str, /, *args: Any, job_id: str | None = None,
                      key: str | None = None, **kwargs: Any) -> JobHandle:
        """As ``Queue.enqueue``, on the partition of ``key`` (default: the job's id)."""
        job = self.queues[0].job(task, args, kwargs, job_id=job_id)
        return await self.enqueue_job(job, key=key)

    async def enqueue_job(self, job: Job, *, key: str | None = None,
                          at: float | None = None) -> JobHandle:
        """As ``Queue.enqueue_job``, on the partition of ``key`` (default: the job's id)."""
        return await self.partition(job.id if key is None else key).enqueue_job(job, at=at)

    async def enqueue_many(self, jobs: Iterable[Job | tuple[Any, ...]]) -> list[JobHandle]:
        """As ``Queue.enqueue_many``: one pipeline per partition, all sent at once.

        Jobs are routed by id. QueueFull's ``handles``: those added, on every partition.
        """
        prepared = [job if isinstance(job, Job) else self.queues[0].job(*job) for job in jobs]
        groups: dict[int, list[int]] = {}
        for position, job in enumerate(prepared):
            groups.setdefault(self.queues.index(self.partition(job.id)), []).append(position)
        order = list(groups)
        replies = await asyncio.gather(
            *(self.queues[p].enqueue_many([prepared[i] for i in groups[p]]) for p in order),
            return_exceptions=True)
        handles: list[JobHandle | None] = [None] * len(prepared)
        errors: list[BaseException] = []
        for p, reply in zip(order, replies, strict=True):
            if isinstance(reply, BaseException):
                errors.append(reply)
                continue
            for position, handle in zip(groups[p], reply, strict=True):
                handles[position] = handle
        if errors:
            other = [e for e in errors if not isinstance(e, QueueFull)]
            if other:
                raise other[0]
            added = [h for h in handles if h is not None]
            added += [h for e in errors for h in e.handles]  # type: ignore[attr-defined]
            raise QueueFull(f"{self!r}: Redis is out of memory: {len(prepared) - len(added)} "
                            f"of {len(prepared)} jobs not enqueued, nothing of them written",
                            added) from errors[0]
        return handles  # type: ignore[return-value]

    def handle(self, job_id: str, *, key: str | None = None) -> JobHandle:
        """A handle on a job enqueued earlier, by id (and ``key``, if it was routed by one)."""
        return self.partition(job_id if key is None else key).handle(job_id)

    async def cancel(self, job_id: str, *, key: str | None = None) -> CancelOutcome:
        """``Queue.cancel`` on the job's partition."""
        return await self.partition(job_id if key is None else key).cancel(job_id)

    async def counts_by_partition(self) -> dict[str, QueueCounts]:
        """Each partition's counts, by name (one round of requests, sent together)."""
        counts = await asyncio.gather(*(queue.counts() for queue in self.queues))
        return dict(zip(self.names, counts, strict=True))

    async def counts(self) -> QueueCounts:
        """Every partition's counts, summed (consumers: the sum over streams)."""
        total = [0] * 6
        for counts in (await self.counts_by_partition()).values():
            total = [a + b for a, b in zip(total, (counts.stream, counts.pending, counts.lag,
                                                   counts.delayed, counts.dead,
                                                   counts.consumers), strict=True)]
        return QueueCounts(*total)

    def placement(self) -> dict[str, str]:
        """Which node holds each partition (``host:port``); on one server, all the same.

        On a cluster, from the client's slot map (loaded by its first command).
        """
        out = {}
        for name in self.names:
            stream = QueueKeys(name).stream
            if isinstance(self.redis, redis.asyncio.RedisCluster):
                out[name] = self.redis.get_node_from_key(stream).name
            else:
                out[name] = "one server"
        return out


class PartitionedWorkers:
    """One ``Worker`` per partition, in this process, started and stopped together.

        async with PartitionedWorkers(redis, registry, partitions_for(names, i, n),
                                      concurrency=10) as workers:
            await stop_requested.wait()
        print(await workers.stats())

    ``**worker_kw`` goes to every Worker (``concurrency`` is per partition: the
    process runs up to ``concurrency * len(names)`` jobs at once). Names: ``name``
    + the partition (default: each Worker's own).
    """

    def __init__(self, redis: Any, registry: TaskRegistry, names: Sequence[str], *,
                 name: str | None = None, **worker_kw: Any) -> None:
        if not names:
            raise ValueError("no partition to serve")
        self.names = list(names)
        self.workers = [Worker(redis, registry, queue=partition,
                               name=None if name is None else f"{name}@{partition}",
                               **worker_kw) for partition in self.names]

    def __repr__(self) -> str:
        return f"<PartitionedWorkers {len(self.workers)} workers on {self.names}>"

    async def start(self) -> None:
        """Start every Worker at once; if one fails to start, stop those started and raise."""
        outcomes = await asyncio.gather(*(w.start() for w in self.workers),
                                        return_exceptions=True)
        errors = [e for e in outcomes if isinstance(e, BaseException)]
        if errors:
            started = [w for w, e in zip(self.workers, outcomes, strict=True) if e is None]
            await asyncio.gather(*(w.stop() for w in started), return_exceptions=True)
            raise errors[0]

    async def stop(self, grace_s: float | None = None) -> list[Any]:
        """Stop every Worker at once (each gets ``grace_s``); their shutdown reports."""
        return list(await asyncio.gather(*(w.stop(grace_s) for w in self.workers)))

    async def __aenter__(self) -> PartitionedWorkers:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def stats(self) -> WorkerStats:
        """The Workers' stats, summed (queue-wide figures: summed over partitions)."""
        every = await asyncio.gather(*(w.stats() for w in self.workers))
        fields = WorkerStats.__dataclass_fields__
        return WorkerStats(**{f: sum(getattr(s, f) for s in every) for f in fields})
