"""The job envelope (JSON, validated when read), its status, and the allow-list of tasks.

    job = Job("resize", [42], {"width": 640}, max_attempts=5)
    data = job.encode()            # compact UTF-8 JSON, at most MAX_JOB_BYTES
    Job.decode(data) == job        # True; garbage raises InvalidJob, and only that

JSON, never pickle: unpickling runs whatever code the bytes name, so whoever can
write to the stream could run code on every worker. A worker reads a job as data,
checks every field, and runs only a task registered in its ``TaskRegistry``.
"""

from __future__ import annotations

__all__ = [
    "MAX_JOB_BYTES",
    "InvalidJob",
    "Job",
    "JobCancelled",
    "JobFailed",
    "JobNotFound",
    "JobStatus",
    "to_json",
]

import dataclasses
import enum
import json
import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

# An envelope larger than this is refused on both sides: by enqueue() before it
# reaches Redis, and by the worker (dead-lettered) when someone XADDs one anyway.
# Big payloads belong in object storage; the job carries their address.
MAX_JOB_BYTES = 512 * 1024

_FIELDS = ("id", "task", "args", "kwargs", "attempt", "max_attempts", "enqueued_at",
           "timeout_s", "deadline")
_REQUIRED = frozenset(_FIELDS) - {"timeout_s", "deadline"}
_TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,199}")
# Printable ASCII without spaces: ids end up in key names, log lines and URLs.
_JOB_ID = re.compile(r"[!-~]{1,200}")


class InvalidJob(ValueError):
    """Bytes that are not a valid job, or a job that cannot be encoded; says which part.

        Job.decode(b'{"id": 3}')   # InvalidJob: invalid job: field 'id' must be ...
    """

    def __init__(self, problem: str) -> None:
        super().__init__(f"invalid job: {problem}")
        self.problem = problem


class JobStatus(enum.Enum):
    """Where a job is in its life; stored in its record, read by ``handle.status()``."""

    SCHEDULED = "scheduled"  # enqueued with a delay: waits in the delayed set until due
    QUEUED = "queued"  # in the stream, waiting for a worker
    RUNNING = "running"  # a worker runs an attempt
    RETRYING = "retrying"  # an attempt failed; the next one waits in the delayed set
    DONE = "done"  # returned; the result is kept for result_ttl_s
    FAILED = "failed"  # raised an error its task does not retry on (no dead letter)
    DEAD = "dead"  # given up on (attempts used up, timed out, unknown task...): dead-lettered
    CANCELLED = "cancelled"  # Queue.cancel(): before it started, or its task cancelled

    @property
    def final(self) -> bool:
        """True for done, failed, dead and cancelled: the record no longer changes."""
        return self in _FINAL


_FINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.DEAD, JobStatus.CANCELLED})


class JobFailed(Exception):
    """The job failed or died; carries the remote error's type and message.

        try:
            await handle.result()
        except JobFailed as exc:
            exc.error_type, exc.error_message   # ('ValueError', 'bad image')
    """

    def __init__(
        self,
        job_id: str,
        task: str,
        status: JobStatus,
        error_type: str,
        error_message: str,
        reason: str = "",
    ) -> None:
        text = f"job {job_id} ({task}) {status.value}"
        if reason:
            text += f": {reason}"
        if error_type:
            text += f"; last error {error_type}: {error_message}"
        super().__init__(text)
        self.job_id = job_id
        self.task = task
        self.status = status
        self.error_type = error_type
        self.error_message = error_message
        self.reason = reason


class JobCancelled(JobFailed):
    """The job was cancelled (``Queue.cancel``): ``result()`` raises this, a JobFailed.

        except JobCancelled as exc:
            exc.reason   # 'cancelled before it started', 'cancelled while running, ...'
    """


class JobNotFound(LookupError):
    """No record of this job id: never enqueued, or its result has expired."""


def to_json(value: Any, what: str = "value") -> bytes:
    """``value`` as compact UTF-8 JSON, or InvalidJob naming the first part that is not JSON.

        to_json({"a": [1, object()]}, "args")   # InvalidJob: args[0]['a'][1] is object ...
    """
    _check_json(value, what)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class Job:
    """One job: which task, with what arguments, which attempt. Immutable; JSON on the wire.

        Job("resize", [42], {"width": 640})
        # Job('resize', id='5f0c...', attempt=1/3, args=1, kwargs=['width'])

    ``deadline`` is absolute (epoch seconds): a job picked up later dies unrun, and
    no attempt runs past it. ``timeout_s`` bounds each attempt (None: the task's own).
    """

    task: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex, kw_only=True)
    attempt: int = dataclasses.field(default=1, kw_only=True)
    max_attempts: int = dataclasses.field(default=3, kw_only=True)
    enqueued_at: float = dataclasses.field(default_factory=time.time, kw_only=True)
    timeout_s: float | None = dataclasses.field(default=None, kw_only=True)
    deadline: float | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _JOB_ID.fullmatch(self.id):
            raise InvalidJob(f"field 'id' must be 1-200 printable ASCII characters "
                             f"without spaces, got {_show(self.id)}")
        if not isinstance(self.task, str) or not _TASK_NAME.fullmatch(self.task):
            raise InvalidJob(f"field 'task' must be a task name (a letter or '_', then "
                             f"letters, digits, '_.:-'), got {_show(self.task)}")
        if not isinstance(self.args, (list, tuple)):
            raise InvalidJob(f"field 'args' must be a list, got {_show(self.args)}")
        if not isinstance(self.kwargs, Mapping):
            raise InvalidJob(f"field 'kwargs' must be an object, got {_show(self.kwargs)}")
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        _check_json(list(self.args), f"{self.task} args")
        _check_json(self.kwargs, f"{self.task} kwargs")
        for name in ("attempt", "max_attempts"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:  # bool is an int: refused too
                raise InvalidJob(f"field {name!r} must be an integer >= 1, got {_show(value)}")
        if self.attempt > self.max_attempts:
            raise InvalidJob(f"attempt {self.attempt} is past max_attempts {self.max_attempts}")
        _check_number(self, "enqueued_at", allow_none=False, positive=False)
        _check_number(self, "timeout_s", allow_none=True, positive=True)
        _check_number(self, "deadline", allow_none=True, positive=False)

    def __repr__(self) -> str:
        # Argument *values* stay out: a repr ends up in logs, and arguments can
        # hold tokens, addresses, personal data. Their count and names suffice.
        extra = ""
        if self.timeout_s is not None:
            extra += f", timeout_s={self.timeout_s:g}"
        if self.deadline is not None:
            extra += f", deadline={self.deadline:.3f}"
        return (f"Job({self.task!r}, id={self.id!r}, attempt={self.attempt}/{self.max_attempts}"
                f", args={len(self.args)}, kwargs={sorted(self.kwargs)}{extra})")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS} | {"args": list(self.args)}

    def encode(self) -> bytes:
        """Compact UTF-8 JSON; InvalidJob when it would exceed ``MAX_JOB_BYTES``."""
        data = json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode()
        if len(data) > MAX_JOB_BYTES:
            raise InvalidJob(f"{self.task} job is {len(data)} bytes encoded, over the "
                             f"{MAX_JOB_BYTES} byte limit (pass a reference to big data)")
        return data

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview | str) -> Job:
        """The job in ``data``; InvalidJob (and nothing else) when it is not a valid one.

        Unknown fields are refused, not ignored: they come from a newer client or a
        forged entry, and a worker that guesses may run a job other than the one
        meant. The entry goes to the dead-letter stream, replayable once upgraded.
        """
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if not isinstance(data, (bytes, str)):
            raise InvalidJob(f"expected bytes or str, got {type(data).__name__}")
        size = len(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
        if size > MAX_JOB_BYTES:
            raise InvalidJob(f"{size} bytes, over the {MAX_JOB_BYTES} byte limit")
        if isinstance(data, bytes):
            # Decoded here, strictly: json.loads(bytes) would guess UTF-16 or UTF-32
            # from the first bytes, and read garbage as a job.
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidJob(f"not UTF-8 ({exc.reason} at byte {exc.start})") from None
        try:
            obj = _DECODER.decode(data)
        except RecursionError:
            raise InvalidJob("not JSON: nested too deeply") from None
        except ValueError as exc:  # JSONDecodeError, NaN/Infinity, huge int literals
            raise InvalidJob(f"not JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise InvalidJob(f"expected a JSON object, got {_json_type(obj)}")
        if _REQUIRED <= obj.keys() <= _FIELD_SET:  # the common case, checked cheaply
            return cls(**obj)
        missing = sorted(_REQUIRED - obj.keys())
        if missing:
            raise InvalidJob(f"missing field(s) {', '.join(map(repr, missing))}")
        unknown = sorted(obj.keys() - _FIELD_SET)
        if unknown:
            shown = ", ".join(repr(k[:40]) for k in unknown[:5])
            raise InvalidJob(f"unknown field(s) {shown}")
        return cls(**obj)

    def next_attempt(self) -> Job:
        """The same job, one attempt further (what a retry enqueues)."""
        return dataclasses.replace(self, attempt=self.attempt + 1)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every decode(): json.loads with an argument builds a new one each call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_FIELD_SET = frozenset(_FIELDS)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(job: Job, name: str, *, allow_none: bool, positive: bool) -> None:
    value = getattr(job, name)
    if value is None and allow_none:
        return
    if not _is_number(value) or not math.isfinite(value) or value < 0 or (positive and not value):
        need = "> 0" if positive else ">= 0"
        also = " or null" if allow_none else ""
        raise InvalidJob(f"field {name!r} must be a finite number {need}{also}, got {_show(value)}")


def _check_json(value: Any, path: str, depth: int = 0) -> None:
    """Raise InvalidJob unless ``value`` is plain JSON (tuples pass, as lists)."""
    if depth > 100:
        raise InvalidJob(f"{path} is nested more than 100 levels deep")
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, str):
        _check_text(value, path)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidJob(f"{path} is {value!r}, which JSON cannot hold")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json(item, f"{path}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidJob(f"{path} has key {key!r} ({type(key).__name__}): "
                                 "JSON object keys are strings")
            _check_text(key, f"{path} key")
            _check_json(item, f"{path}[{key!r}]", depth + 1)
        return
    raise InvalidJob(f"{path} is {type(value).__qualname__}, not JSON-serialisable "
                     "(pass str, int, float, bool, None, list or dict)")


def _check_text(text: str, path: str) -> None:
    # JSON's "\ud800" escape decodes to a lone surrogate, which no UTF-8 encoder
    # accepts: refused here, or the retry's encode() would fail far from the cause.
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise InvalidJob(f"{path} holds a lone surrogate, not valid Unicode") from None


def _json_type(value: object) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), "?")


def _show(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def __getattr__(name: str) -> Any:
    # Task and TaskRegistry live in ``registry`` now; ``from .job import TaskRegistry``
    # (and course_lib.distributed.job.TaskRegistry) still works.
    if name in ("Task", "TaskRegistry"):
        from . import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
