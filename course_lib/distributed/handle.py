"""A job enqueued on a queue, seen from the client: ``JobHandle`` and ``CancelOutcome``.

    handle = await queue.enqueue("resize", 42)
    await handle.status()              # JobStatus.QUEUED
    await handle.result(timeout_s=30)  # the task's return value, or JobFailed
    await handle.cancel()              # CancelOutcome.CANCELLED, REQUESTED or ENDED

A handle is only an id and its queue: anything may make one (``queue.handle(id)``,
another process included); everything it says is read from Redis when asked.
"""

from __future__ import annotations

__all__ = ["CancelOutcome", "JobHandle"]

import enum
import json
from typing import TYPE_CHECKING, Any

from .job import JobCancelled, JobFailed, JobStatus
from .replies import _text

if TYPE_CHECKING:
    from .queue import Queue


class CancelOutcome(enum.Enum):
    """What ``Queue.cancel`` did.

        await handle.cancel()   # <CancelOutcome.CANCELLED: 'cancelled'>
    """

    CANCELLED = "cancelled"  # it had not started: it never will (status cancelled now)
    REQUESTED = "requested"  # it runs: its worker cancels it within one heartbeat_s
    ENDED = "ended"  # it had ended (done, failed, dead, cancelled): nothing changed


class JobHandle:
    """A job enqueued on a queue: ask its status, await its result.

        handle = await queue.enqueue("resize", 42)
        handle.enqueued        # False when a job with this id already existed
        await handle.result()  # its value; JobFailed if it failed or died
    """

    def __init__(self, queue: Queue, job_id: str, *, task: str | None = None,
                 enqueued: bool | None = None) -> None:
        self.queue = queue
        self.id = job_id
        self.task = task
        self.enqueued = enqueued

    def __repr__(self) -> str:
        task = f" {self.task}" if self.task else ""
        return f"<JobHandle{task} id={self.id!r} queue={self.queue.name!r}>"

    async def info(self) -> dict[str, str]:
        """The job's record (see ``keys.JOB_FIELDS``); empty when there is none."""
        record = await self.queue.redis.hgetall(self.queue.keys.job(self.id))
        return {_text(k): _text(v) for k, v in record.items()}

    async def status(self) -> JobStatus | None:
        """The job's status; None when there is no record (unknown id, or expired)."""
        status = await self.queue.redis.hget(self.queue.keys.job(self.id), "status")
        return None if status is None else JobStatus(_text(status))

    async def cancel(self) -> CancelOutcome:
        """Cancel the job (see ``Queue.cancel``): cancelled, requested, or ended already."""
        return await self.queue.cancel(self.id)

    async def result(self, timeout_s: float | None = None) -> Any:
        """Wait until the job ends; its return value, or JobFailed when it failed or died.

        JobCancelled (a JobFailed) when it was cancelled.

        Raises TimeoutError after ``timeout_s`` (the job goes on), JobNotFound when
        there is no record, QueueClosed when the Queue is closed meanwhile, and
        redis's ConnectionError when Redis is lost (after the client's own retries):
        call it again. Waiting costs no polling and no connection of its own: the
        Queue's one listener (``results``) wakes every waiter when the worker
        publishes that the job ended, any number of waiters on any number of jobs.
        """
        record = await self.queue._results.wait(self.id, timeout_s)
        return _outcome(self.id, JobStatus(record["status"]), record)


def _outcome(job_id: str, status: JobStatus, record: dict[str, str]) -> Any:
    if status is JobStatus.DONE:
        return json.loads(record.get("result", "null"))
    error = JobCancelled if status is JobStatus.CANCELLED else JobFailed
    raise error(job_id, record.get("task", "?"), status, record.get("error_type", ""),
                    record.get("error", ""), record.get("reason", ""))
