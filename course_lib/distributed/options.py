"""How to enqueue a job, apart from what the task is called with: ``EnqueueOptions``.

    later = EnqueueOptions(delay_s=60, max_attempts=5, job_id="report-7")
    await queue.enqueue_with(later, "report", 7, delay_s=1)  # delay_s=1 goes to the task

Why an object of its own, passed positionally, and not keywords of ``enqueue``:
every keyword ``enqueue`` claimed would be one a task could no longer take. The
others pay that price in different coin. RQ's ``enqueue(f, *args, job_timeout=...,
job_id=...)`` reserves its option names (``enqueue_call(f, args=, kwargs=)`` to get
round it); SAQ's ``enqueue`` reserves the Job's fields (``timeout``, ``retries``,
``scheduled``, ``key``); arq's ``enqueue_job(f, *args, _job_id=, _defer_by=, ...)``
reserves the names with a leading underscore; Celery's ``apply_async(args, kwargs,
countdown=, eta=)`` collides with nothing, at the price of a list and a dict instead of
a call. Here ``enqueue(task, *args, **kwargs)`` stays a call (only ``job_id`` is
taken, as it always was), and ``enqueue_with(options, task, *args, **kwargs)``
takes the options first, positional-only: nothing a task is called with can land
in them. One ``EnqueueOptions`` can be made once and reused (it is immutable).
``enqueue_many`` takes them the same way, beside each job's arguments:
``(task, args, kwargs, options)`` (or ``(task, args, options)``), or ``options=`` for all.

A delayed job (``delay_s`` or ``at``) waits in the queue's delayed set, the sorted
set retries wait in, with the status ``scheduled``; the workers' mover puts it in the
stream when it is due (within a worker's ``maintenance_s``, 1 s by default), and from
there it is an ordinary job. Times are epoch seconds or timezone-aware datetimes: a
naive datetime is refused (local time or UTC? each machine would guess its own).
"""

from __future__ import annotations

__all__ = ["EnqueueOptions", "JobSpec"]

import dataclasses
import datetime
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

from .job import _JOB_ID, InvalidJob, Job


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class EnqueueOptions:
    """How ``Queue.enqueue_with`` enqueues a job; every field optional, checked when made.

        EnqueueOptions(at=datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
        EnqueueOptions(delay_s=30, timeout_s=10)   # EnqueueOptions(delay_s=30, timeout_s=10)

    ``job_id``: the job's id (the same id twice is enqueued once; default a random one).
    ``delay_s`` or ``at`` (not both): run no sooner than that many seconds from the
    enqueue, or than that time (epoch seconds or an aware datetime; a time past runs
    now). ``max_attempts``, ``timeout_s``: as the task's, which they override.
    ``deadline``: a time (as ``at``) after which the job dies unrun, and no attempt
    runs past it.
    """

    job_id: str | None = None
    delay_s: float | None = None
    at: float | datetime.datetime | None = None
    max_attempts: int | None = None
    timeout_s: float | None = None
    deadline: float | datetime.datetime | None = None

    def __post_init__(self) -> None:
        if self.job_id is not None and not (isinstance(self.job_id, str)
                                            and _JOB_ID.fullmatch(self.job_id)):
            raise ValueError(f"job_id must be 1-200 printable ASCII characters without "
                             f"spaces, not {self.job_id!r}")
        if self.delay_s is not None and not (_number(self.delay_s) and 0 <= self.delay_s
                                             < math.inf):
            raise ValueError(f"delay_s must be a finite number of seconds >= 0, not "
                             f"{self.delay_s!r}")
        if self.delay_s is not None and self.at is not None:
            raise ValueError("give delay_s or at, not both")
        object.__setattr__(self, "at", _epoch(self.at, "at"))
        object.__setattr__(self, "deadline", _epoch(self.deadline, "deadline"))
        if self.max_attempts is not None and (type(self.max_attempts) is not int
                                              or self.max_attempts < 1):
            raise ValueError(f"max_attempts must be an integer >= 1, not {self.max_attempts!r}")
        if self.timeout_s is not None and not (_number(self.timeout_s)
                                               and 0 < self.timeout_s < math.inf):
            raise ValueError(f"timeout_s must be a finite number > 0, not {self.timeout_s!r}")

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}"
                          for f in dataclasses.fields(self) if getattr(self, f.name) is not None)
        return f"EnqueueOptions({shown})"

    def due_at(self, now_s: float | None = None) -> float | None:
        """When the job may run (epoch seconds), or None: at once."""
        if self.delay_s:
            return (time.time() if now_s is None else now_s) + self.delay_s
        return self.at  # type: ignore[return-value]  # an epoch float since __post_init__


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _epoch(value: object, name: str) -> float | None:
    """``value`` (None, epoch seconds or an aware datetime) as epoch seconds."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} {value!r} has no timezone: local time or UTC? Give an "
                             "aware datetime (tzinfo=datetime.UTC) or epoch seconds")
        return value.timestamp()
    if not (_number(value) and math.isfinite(value) and value >= 0):  # type: ignore[arg-type]
        raise TypeError(f"{name} must be epoch seconds (a finite number >= 0) or an aware "
                        f"datetime, not {value!r}")
    return float(value)  # type: ignore[arg-type]


# One item of ``Queue.enqueue_many``: a prepared Job, or a task's name, its arguments
# and, beside them (never among them), its options.
JobSpec: TypeAlias = (
    Job | tuple[str, Sequence[Any]] | tuple[str, Sequence[Any], Mapping[str, Any]]
    | tuple[str, Sequence[Any], EnqueueOptions]
    | tuple[str, Sequence[Any], Mapping[str, Any], EnqueueOptions | None])


def _unpacked(item: Any) -> tuple[str, Sequence[Any], Mapping[str, Any] | None,
                                  EnqueueOptions | None]:
    """A tuple item of ``enqueue_many`` as (task, args, kwargs, options); InvalidJob if none."""
    shape = "a Job or (task, args[, kwargs][, options])"
    if isinstance(item, (str, bytes)) or not 2 <= len(item) <= 4:
        raise InvalidJob(f"enqueue_many: {item!r} is not {shape}")
    task, args, *rest = item
    options = None
    if rest and (isinstance(rest[-1], EnqueueOptions) or (len(rest) == 2 and rest[-1] is None)):
        options = rest.pop()
    if len(rest) > 1 or (rest and isinstance(rest[0], EnqueueOptions)):
        raise InvalidJob(f"enqueue_many: {item!r} is not {shape}")
    return task, args, rest[0] if rest else None, options


def _checked_at(job: Job, at: float | None) -> float | None:
    """``at`` (epoch s), None when it is past; InvalidJob when it is at or after the deadline."""
    if at is not None and at <= time.time():
        return None
    if at is not None and job.deadline is not None and at >= job.deadline:
        raise InvalidJob(f"job {job.id!r} would wait until {at:.3f}, at or after its "
                         f"deadline {job.deadline:.3f}: it would die unrun")
    return at
