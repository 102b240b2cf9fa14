"""A distributed job queue on Redis Streams: the sound version of the article's worker.

    from course_lib.distributed import Queue, TaskRegistry, Worker

    registry = TaskRegistry()

    @registry.task(max_attempts=3, timeout_s=10)
    async def resize(image_id: int) -> str: ...

    async with Worker(redis, registry):                  # in the worker process
        ...
    handle = await Queue(redis).enqueue("resize", 42)    # in the client
    print(await handle.result(timeout_s=30))

Modules: ``keys`` (every Redis key, in one place), ``job`` (the JSON envelope,
statuses), ``registry`` (the task registry: what a worker may run), ``scripts``
(every Lua script, and why each must be atomic), ``options`` (``EnqueueOptions``: a
delay or a time, attempts, timeout, deadline, id),
``queue`` (the client: enqueue, cancel, counts), ``handle`` (``JobHandle``: status,
result, cancel), ``dead_letters`` (reading dead letters, and their requeue), ``replies``
(decoding what Redis sends back), ``results`` (one listener per Queue that wakes every
``result()``), ``periodic`` (``registry.every(...)``: jobs per tick, enqueued once
across the workers, each with a deadline), ``worker`` (the consumer-group worker,
composed of its parts: ``reader``, ``running``, ``outcomes``, ``settling``,
``heartbeat``, ``maintenance``, sharing ``control``), ``partitions`` (one queue over
several streams, for a Redis Cluster), ``cli`` (the command line; its commands in
``cli_worker`` and ``cli_queue``, its parser in ``cli_parser``), ``naive`` (the
article's list worker, to show how it loses and duplicates jobs; never use it).

From a shell (``python -m course_lib.distributed --help``; exit codes in ``cli``):

    python -m course_lib.distributed --redis-url redis://127.0.0.1:6379/0 \\
        worker --app course_lib.examples.jobs_app:registry
    python -m course_lib.distributed enqueue resize 42 --wait 30
    python -m course_lib.distributed stats
    python -m course_lib.distributed dead list
    python -m course_lib.distributed dead requeue --all
"""

__all__ = [
    "DEFAULT_QUEUE",
    "MAX_JOB_BYTES",
    "PREFIX",
    "CancelOutcome",
    "DeadLetter",
    "EnqueueOptions",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobStatus",
    "NaiveListWorker",
    "Queue",
    "QueueClosed",
    "QueueCounts",
    "QueueFull",
    "QueueKeys",
    "RequeueReport",
    "Task",
    "TaskRegistry",
    "Worker",
    "WorkerStats",
]

from .job import (
    MAX_JOB_BYTES,
    InvalidJob,
    Job,
    JobCancelled,
    JobFailed,
    JobNotFound,
    JobStatus,
)
from .keys import DEFAULT_QUEUE, PREFIX, QueueKeys
from .naive import NaiveListWorker
from .options import EnqueueOptions
from .queue import (
    CancelOutcome,
    DeadLetter,
    JobHandle,
    Queue,
    QueueClosed,
    QueueCounts,
    QueueFull,
    RequeueReport,
)
from .registry import Task, TaskRegistry
from .worker import Worker, WorkerStats
