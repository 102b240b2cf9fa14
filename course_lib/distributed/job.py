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
    "Task",
    "TaskRegistry",
    "to_json",
]

import dataclasses
import enum
import inspect
import json
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
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


@dataclasses.dataclass(frozen=True, slots=True)
class Task:
    """A registered task: the coroutine function and how the worker treats it."""

    name: str
    fn: Callable[..., Awaitable[Any]]
    max_attempts: int = 3
    timeout_s: float | None = None
    retry_on: tuple[type[Exception], ...] = (Exception,)

    def retries(self, exc: BaseException) -> bool:
        """True when a failure with ``exc`` deserves another attempt."""
        return isinstance(exc, self.retry_on)


class TaskRegistry:
    """The allow-list of tasks a worker may run, by name.

        registry = TaskRegistry()

        @registry.task(max_attempts=5, timeout_s=30, retry_on=(ConnectionError,))
        async def resize(image_id: int, width: int = 640) -> str: ...

        registry["resize"].fn    # the function; a job naming anything else is dead-lettered
    """

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self.periodic: list[Any] = []  # Periodic schedules (``every``), for the schedulers

    def __repr__(self) -> str:
        return f"<TaskRegistry {sorted(self._tasks)}>"

    def task(
        self,
        fn: Callable[..., Awaitable[Any]] | None = None,
        *,
        name: str | None = None,
        max_attempts: int = 3,
        timeout_s: float | None = None,
        retry_on: tuple[type[Exception], ...] | type[Exception] = (Exception,),
    ) -> Any:
        """Register an ``async def`` (as ``@registry.task`` or ``@registry.task(...)``)."""

        def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            self.add(fn, name=name, max_attempts=max_attempts, timeout_s=timeout_s,
                     retry_on=retry_on)
            return fn

        return register if fn is None else register(fn)

    def add(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        name: str | None = None,
        max_attempts: int = 3,
        timeout_s: float | None = None,
        retry_on: tuple[type[Exception], ...] | type[Exception] = (Exception,),
    ) -> Task:
        """Register ``fn`` under ``name`` (default: its ``__name__``); return the Task."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"task {fn!r} must be an async def function: the worker awaits it")
        name = fn.__name__ if name is None else name
        if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
            raise ValueError(f"task name {name!r} is not usable: a letter or '_', then "
                             "letters, digits, '_.:-' (at most 200)")
        if name in self._tasks:
            raise ValueError(f"task {name!r} is already registered ({self._tasks[name].fn!r})")
        if type(max_attempts) is not int or max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, not {max_attempts!r}")
        if timeout_s is not None and not (_is_number(timeout_s) and 0 < timeout_s < math.inf):
            raise ValueError(f"timeout_s must be a number > 0 or None, not {timeout_s!r}")
        classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        for cls in classes:
            # CancelledError and KeyboardInterrupt are BaseException: never retried.
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                raise TypeError(f"retry_on must hold Exception subclasses, not {cls!r}")
        task = Task(name, fn, max_attempts, timeout_s, classes)
        self._tasks[name] = task
        return task

    def every(self, every_s: Any, task: str, args: Sequence[Any] = (),
              kwargs: Mapping[str, Any] | None = None, *, offset_s: Any = 0.0,
              name: str | None = None, deadline_s: Any = None) -> Any:
        """Run the registered ``task`` every ``every_s`` (seconds or a timedelta); its Periodic.

            registry.every(3600, "cleanup")                               # on every hour
            registry.every(86400, "report", ["daily"], offset_s=3 * 3600)   # 03:00 UTC daily

        Ticks are aligned to the Unix epoch (UTC) plus ``offset_s``; the workers running
        this registry enqueue each tick's job once between them (see ``periodic``). A
        tick's job that has not started ``deadline_s`` after its tick (default: at the
        next tick; ``math.inf``: never) dies unrun instead of running late.
        """
        from .periodic import Periodic  # here: periodic imports this module

        if task not in self._tasks:
            raise ValueError(f"no task {task!r} in {self!r}: register it first")
        schedule = Periodic(task, every_s, offset_s, args, kwargs or {}, name or task,
                            deadline_s)
        if any(p.name == schedule.name for p in self.periodic):
            raise ValueError(f"a periodic schedule named {schedule.name!r} is already in "
                             f"{self!r}: give this one another name=")
        self.periodic.append(schedule)
        return schedule

    def get(self, name: str) -> Task | None:
        return self._tasks.get(name)

    def __getitem__(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise KeyError(f"no task {name!r} in {self!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)


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
