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
statuses, the task registry), ``queue`` (the client), ``worker`` (the consumer-group
worker), ``naive`` (the article's list worker, to show how it loses and duplicates
jobs; never use it).
"""

__all__ = [
    "DEFAULT_QUEUE",
    "MAX_JOB_BYTES",
    "PREFIX",
    "DeadLetter",
    "InvalidJob",
    "Job",
    "JobFailed",
    "JobHandle",
    "JobNotFound",
    "JobStatus",
    "NaiveListWorker",
    "Queue",
    "QueueCounts",
    "QueueKeys",
    "Task",
    "TaskRegistry",
    "Worker",
    "WorkerStats",
]

from .job import (
    MAX_JOB_BYTES,
    InvalidJob,
    Job,
    JobFailed,
    JobNotFound,
    JobStatus,
    Task,
    TaskRegistry,
)
from .keys import DEFAULT_QUEUE, PREFIX, QueueKeys
from .naive import NaiveListWorker
from .queue import DeadLetter, JobHandle, Queue, QueueCounts
from .worker import Worker, WorkerStats
