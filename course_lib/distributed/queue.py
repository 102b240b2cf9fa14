"""The client side of the job queue: enqueue jobs, follow them, await their results.

    queue = Queue(await connect(), "images")
    handle = await queue.enqueue("resize", 42, width=640, job_id="resize-42")
    await handle.status()            # JobStatus.QUEUED
    await handle.result(timeout_s=30)  # the task's return value, or JobFailed

Enqueueing is one Lua script per job: it claims the job's id (its record must not
exist yet) and adds the entry to the stream, atomically, so the same ``job_id``
sent twice (a client retrying after a timeout) runs once. ``result()`` waits on
the Queue's one result listener (``results``): the worker publishes on the job's
done key in the same atomic step that writes the final status, so there is no
sleep-polling, and 5,000 waiters share two connections.
"""

from __future__ import annotations

__all__ = [
    "CancelOutcome", "DeadLetter", "JobHandle", "Queue", "QueueClosed", "QueueCounts", "QueueFull",
    "RequeueReport",
]

import dataclasses
import enum
import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio

from . import scripts
from .job import InvalidJob, Job, JobCancelled, JobFailed, JobNotFound, JobStatus, TaskRegistry
from .keys import DEFAULT_QUEUE, QueueKeys
from .options import EnqueueOptions
from .results import QueueClosed, ResultListener

# A full stream entry id. A bare "1712345678901" would be read by XRANGE as a range
# (every entry of that millisecond) but by XDEL as "1712345678901-0".
_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")


class QueueFull(redis.exceptions.OutOfMemoryError):
    """Redis refused the job: it is out of memory (``maxmemory`` reached, nothing evicted).

        try:
            await queue.enqueue("resize", 42)
        except QueueFull as exc:
            ...  # nothing was written: back off, and retry or give up

    Nothing of a refused job is in Redis (the script's first write is the one
    refused). ``handles``: the jobs of an ``enqueue_many`` that did get in before
    the refusal (none for ``enqueue``). ``__cause__``: Redis's own error. A RedisError
    still, so code that handles those (the CLI) handles it too.
    """

    def __init__(self, message: str, handles: list[JobHandle] | None = None) -> None:
        super().__init__(message)
        self.handles = handles or []


class CancelOutcome(enum.Enum):
    """What ``Queue.cancel`` did.

        await handle.cancel()   # <CancelOutcome.CANCELLED: 'cancelled'>
    """

    CANCELLED = "cancelled"  # it had not started: it never will (status cancelled now)
    REQUESTED = "requested"  # it runs: its worker cancels it within one heartbeat_s
    ENDED = "ended"  # it had ended (done, failed, dead, cancelled): nothing changed


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the dead-letter stream: why it died, and the original entry."""

    entry_id: str  # in the dead-letter stream
    reason: str
    error_type: str
    error: str
    origin_id: str  # the entry's id in the main stream
    worker: str
    dead_at: float
    job: bytes | None  # the original ``job`` field, as it was (None: it had none)
    # The original entry's other fields, if any. A name that is not UTF-8 stays
    # bytes: the entry as it was (a replacement character would lose which bytes).
    extra: dict[str | bytes, bytes]

    def extra_text(self) -> dict[str, str]:
        """``extra`` fit to print: bytes that are not UTF-8 escaped (``\\xff``), in names too."""
        return {_escaped(name): _escaped(value) for name, value in self.extra.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class QueueCounts:
    """What Redis holds for a queue right now.

    ``pending``: delivered to a worker and not yet settled. ``lag``: in the stream,
    not yet delivered. ``delayed``: retries waiting. ``dead``: dead letters.
    """

    stream: int
    pending: int
    lag: int
    delayed: int
    dead: int
    consumers: int


@dataclasses.dataclass(frozen=True, slots=True)
class RequeueReport:
    """What ``Queue.requeue_dead`` did, by dead-letter entry id.

        report = await queue.requeue_dead()
        report.requeued   # {'1712345678901-0': 'resize-42'}: entry id -> job id
        report.refused    # {'1712345678902-0': "invalid job: not JSON (...)"}: still dead
    """

    requeued: dict[str, str]
    refused: dict[str, str]  # entry id -> why; these stay in the dead-letter stream

    @property
    def ok(self) -> bool:
        """True when nothing was refused."""
        return not self.refused


class Queue:
    """A job queue on a Redis Stream: enqueue, follow and await jobs.

        queue = Queue(redis, "default", registry=registry)
        handle = await queue.enqueue("resize", 42, job_id="resize-42")
        print(await handle.result(timeout_s=10))

    With a ``registry``, unknown task names are refused at once and each task's
    ``max_attempts`` and ``timeout_s`` go into its jobs; without one (a client that
    does not import the tasks), jobs carry ``max_attempts=3`` and no timeout, and the
    worker dead-letters names it does not know. ``aclose()`` (or ``async with``) stops
    its result listener; the client is not closed here. A delay, a time, attempts, a
    timeout, a deadline: ``enqueue_with(EnqueueOptions(...), task, *args, **kwargs)``;
    cancelling: ``cancel(job_id)``.
    """

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        name: str = DEFAULT_QUEUE,
        *,
        registry: TaskRegistry | None = None,
    ) -> None:
        self.redis = redis
        self.keys = QueueKeys(name)
        self.name = name
        self.registry = registry
        self._enqueue = redis.register_script(scripts.ENQUEUE)
        self._move_due = redis.register_script(scripts.MOVE_DUE)
        self._requeue = redis.register_script(scripts.REQUEUE_DEAD)
        self._cancel = redis.register_script(scripts.CANCEL)
        self._results = ResultListener(redis, self.keys, repr(self))

    def __repr__(self) -> str:
        return f"<Queue {self.name!r}>"

    async def __aenter__(self) -> Queue:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop waiting for results: ``result()`` calls, waiting or later, raise QueueClosed.

        The jobs go on; enqueueing still works, and the client stays open.
        """
        await self._results.aclose()

    def job(
        self,
        task: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        job_id: str | None = None,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        deadline: float | None = None,
    ) -> Job:
        """A new Job for this queue, with the registered task's defaults; InvalidJob if bad."""
        options: dict[str, Any] = {"timeout_s": timeout_s, "deadline": deadline}
        if self.registry is not None:
            registered = self.registry.get(task)
            if registered is None:
                raise InvalidJob(f"no task {task!r} in {self.registry!r}: a worker would "
                                 "dead-letter it")
            if max_attempts is None:
                max_attempts = registered.max_attempts
            if timeout_s is None:
                options["timeout_s"] = registered.timeout_s
        if max_attempts is not None:
            options["max_attempts"] = max_attempts
        if job_id is not None:
            options["id"] = job_id
        return Job(task, args, kwargs or {}, **options)

    async def enqueue(self, task: str, /, *args: Any, job_id: str | None = None,
                      **kwargs: Any) -> JobHandle:
        """Add one job; the same ``job_id`` twice adds it once (``handle.enqueued`` says).

        The arguments must be JSON: anything else raises InvalidJob naming the
        offending argument, before anything reaches Redis. A task that needs an
        argument called ``job_id`` takes it through ``enqueue_job(queue.job(...))``.
        Redis out of memory refuses the job: QueueFull, and nothing is written.
        """
        return await self.enqueue_job(self.job(task, args, kwargs, job_id=job_id))

    async def enqueue_with(self, options: EnqueueOptions, task: str, /, *args: Any,
                           **kwargs: Any) -> JobHandle:
        """Add one job with ``options`` (a delay, attempts, a timeout, a deadline, an id).

            await queue.enqueue_with(EnqueueOptions(delay_s=60), "resize", 42, width=640)

        Every keyword after ``task`` goes to the task, ``job_id`` included: the options
        are a positional object, so no task argument can collide with one (see
        ``options`` for why, and what arq, RQ, SAQ and Celery do). Otherwise as
        ``enqueue``; a delayed job's status is ``scheduled`` until it is due.
        """
        job = self.job(task, args, kwargs, job_id=options.job_id,
                       max_attempts=options.max_attempts, timeout_s=options.timeout_s,
                       deadline=options.deadline)  # type: ignore[arg-type]  # epoch s by now
        return await self.enqueue_job(job, at=options.due_at())

    async def enqueue_job(self, job: Job, *, at: float | None = None) -> JobHandle:
        """Add a prepared Job (``queue.job(...)``): same semantics as ``enqueue``.

        ``at`` (epoch seconds): the job waits in the delayed set until then, status
        ``scheduled`` (a time past: at once). InvalidJob when it falls at or after the
        job's deadline: it would die unrun.
        """
        data = job.encode()
        if at is not None and at <= time.time():
            at = None
        if at is not None and job.deadline is not None and at >= job.deadline:
            raise InvalidJob(f"job {job.id!r} would wait until {at:.3f}, at or after its "
                             f"deadline {job.deadline:.3f}: it would die unrun")
        try:
            entry = await self._enqueue(keys=self._enqueue_keys(job),
                                        args=_enqueue_args(job, data, at))
        except redis.exceptions.ResponseError as exc:
            if not _out_of_memory(exc):
                raise
            raise self._full(f"job {job.id!r} not enqueued") from exc
        return JobHandle(self, job.id, task=job.task, enqueued=entry is not None)

    async def enqueue_many(
        self, jobs: Iterable[Job | tuple[str, Sequence[Any]] | tuple[str, Sequence[Any],
                                                                      Mapping[str, Any]]]
    ) -> list[JobHandle]:
        """Add many jobs in one round trip; handles in the same order.

            await queue.enqueue_many([("resize", [1]), ("resize", [2], {"width": 64})])

        Every job is checked first: one bad job raises InvalidJob and none is added.
        Each job is added atomically with its id check, not the batch as a whole: when
        Redis runs out of memory half-way, QueueFull's ``handles`` are those added.
        """
        prepared = [job if isinstance(job, Job) else self.job(*job) for job in jobs]
        payloads = [job.encode() for job in prepared]
        if not prepared:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job, data in zip(prepared, payloads, strict=True):
                await self._enqueue(keys=self._enqueue_keys(job), args=_enqueue_args(job, data),
                                    client=pipe)
            entries = await pipe.execute(raise_on_error=False)
        handles = [JobHandle(self, job.id, task=job.task, enqueued=entry is not None)
                   for job, entry in zip(prepared, entries, strict=True)]
        refused = [(handle, entry) for handle, entry in zip(handles, entries, strict=True)
                   if isinstance(entry, Exception)]
        if refused:
            first = refused[0][1]
            if not all(_out_of_memory(exc) for _, exc in refused):
                raise next(exc for _, exc in refused if not _out_of_memory(exc))
            added = [h for h, entry in zip(handles, entries, strict=True)
                     if not isinstance(entry, Exception)]
            raise self._full(f"{len(refused)} of {len(handles)} jobs not enqueued (the first: "
                             f"{refused[0][0].id!r})", added) from first
        return handles

    def _full(self, what: str, added: list[JobHandle] | None = None) -> QueueFull:
        from .worker import _describe  # here: worker imports this module

        return QueueFull(f"{self!r} on {_describe(self.redis)}: Redis is out of memory "
                         f"(maxmemory reached, nothing evicted): {what}, nothing written. "
                         "Let workers drain the queue, or free memory", added)

    async def cancel(self, job_id: str, *, result_ttl_s: float = 24 * 3600.0) -> CancelOutcome:
        """Cancel a job: one that has not started never will; a running one is cancelled.

            await queue.cancel("resize-42")   # CancelOutcome.CANCELLED, REQUESTED or ENDED

        Queued, scheduled or waiting for a retry: its record turns ``cancelled`` at once
        (its waiters wake with ``JobCancelled``), its entry leaves the stream or the
        delayed set, and a worker that has read it already acks it unrun. Running: a
        flag in its record, read by its worker's next heartbeat (every ``heartbeat_s``,
        a third of the visibility timeout by default: 10 s), which cancels the task and
        records it ``cancelled``; if that worker dies first, the worker that reclaims the
        job ends it cancelled, unrun. A task that ends before (or swallows the cancel)
        keeps its outcome. JobNotFound: no record (never enqueued, or expired). The
        record of a job cancelled before it started expires after ``result_ttl_s``.
        """
        reply = _text(await self._cancel(
            keys=[self.keys.job(job_id), self.keys.done(job_id), self.keys.stream,
                  self.keys.delayed],
            args=[self.keys.group, repr(time.time()), max(1, round(result_ttl_s * 1000)),
                  job_id]))
        if reply == "unknown":
            raise JobNotFound(f"no job {job_id!r} in {self!r} (never enqueued, or expired)")
        return CancelOutcome(reply)

    def handle(self, job_id: str) -> JobHandle:
        """A handle on a job enqueued earlier (by id), e.g. from another process."""
        return JobHandle(self, job_id)

    async def move_due(self, *, now_s: float | None = None, limit: int = 100) -> int:
        """Move up to ``limit`` retries due by ``now_s`` (epoch s) back to the stream; how many.

        Workers call this; any number may run it at once: it reads the due ones, then
        one script moves each that is still there (and names its new entry in the
        job's record), so each retry is moved once.
        """
        now_s = time.time() if now_s is None else now_s
        due = await self.redis.zrangebyscore(self.keys.delayed, "-inf", repr(now_s), start=0,
                                             num=limit)
        if not due:
            return 0
        records = [self._record_of(member) for member in due]
        return int(await self._move_due(keys=[self.keys.delayed, self.keys.stream, *records],
                                        args=due))

    def _record_of(self, member: Any) -> str:
        """The record key of a delayed retry; the stream's for a member that is no job."""
        try:
            return self.keys.job(Job.decode(member).id)
        except InvalidJob:
            return self.keys.stream

    async def counts(self) -> QueueCounts:
        """Stream length, pending, lag, delayed retries and dead letters, from Redis."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.keys.stream)
            pipe.zcard(self.keys.delayed)
            pipe.xlen(self.keys.dead)
            stream_len, delayed, dead = await pipe.execute()
        pending = consumers = 0
        lag: int | None = None
        if stream_len or await self.redis.exists(self.keys.stream):
            try:
                groups = await self.redis.xinfo_groups(self.keys.stream)
            except redis.exceptions.ResponseError:  # no such stream yet
                groups = []
            for group in groups:
                if _text(group["name"]) == self.keys.group:
                    pending, consumers = int(group["pending"]), int(group["consumers"])
                    lag = group.get("lag")
        if lag is None:
            # Redis 7 reports no lag when an entry at or after the group's last
            # delivered one was deleted, and Redis 6.2 none at all. Workers delete
            # every entry they settle, so what is left and not pending is the lag.
            lag = max(0, stream_len - pending)
        return QueueCounts(stream_len, pending, int(lag), delayed, dead, consumers)

    async def dead_letters(self, count: int = 100) -> list[DeadLetter]:
        """The oldest ``count`` entries of the dead-letter stream."""
        entries = await self.redis.xrange(self.keys.dead, count=count)
        letters = []
        for entry_id, fields in entries:
            named = {_name(k): v for k, v in fields.items()}
            meta = {k: _text(named.pop(k, b"")) for k in
                    ("reason", "error_type", "error", "origin_id", "worker", "dead_at")}
            job = named.pop("job", None)
            extra = {_unprefixed(k): v for k, v in named.items()}
            letters.append(DeadLetter(
                entry_id=_text(entry_id), reason=meta["reason"], error_type=meta["error_type"],
                error=meta["error"], origin_id=meta["origin_id"], worker=meta["worker"],
                dead_at=float(meta["dead_at"] or 0), job=_bytes(job), extra=extra,
            ))  # fmt: skip
        return letters

    async def requeue_dead(self, entry_ids: Iterable[str] | None = None, *,
                           count: int = 100) -> RequeueReport:
        """Put dead jobs back in the stream with a fresh set of attempts; say which.

            report = await queue.requeue_dead()                    # the oldest 100
            report = await queue.requeue_dead(["1712345678901-0"])
            report.requeued, report.refused

        Each job goes back as it was (same id, task, arguments, max_attempts), at
        attempt 1, enqueued now; its record is queued again (error and result
        cleared), and ``handle.result()`` waits for the new run. One Lua script per
        entry adds the job and deletes the dead letter together: a crash never loses
        it or puts it back twice, and a second requeue of the same entry is refused.
        Refused, and left in the dead-letter stream: entries that are not valid jobs,
        jobs past their deadline, unknown tasks (with a ``registry``), ids not in it.
        """
        if isinstance(entry_ids, str):
            entry_ids = [entry_ids]
        if entry_ids is None:
            found = await self.redis.xrange(self.keys.dead, count=count)
            letters = [(_text(entry_id), fields) for entry_id, fields in found]
        else:
            letters = await self._dead_entries(list(dict.fromkeys(entry_ids)))
        outcome: dict[str, tuple[str | None, str]] = {}  # entry id -> (job id, why refused)
        sent: list[tuple[str, str]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, fields in letters:
                try:
                    if fields is None:
                        raise _Refused(_missing_reason(entry_id))
                    job, extra = self._requeueable(fields)
                except (InvalidJob, _Refused) as exc:
                    outcome[entry_id] = (None, str(exc))
                    continue
                outcome[entry_id] = (job.id, "")
                sent.append((entry_id, job.id))
                # One script per entry, pipelined: each is atomic, the batch need not be.
                await self._requeue(
                    keys=[self.keys.dead, self.keys.stream, self.keys.job(job.id),
                          self.keys.done(job.id)],
                    args=[entry_id, job.encode(), job.task, job.max_attempts,
                          repr(job.enqueued_at), *extra],
                    client=pipe,
                )  # fmt: skip
            replies = await pipe.execute() if sent else []
        for (entry_id, job_id), (ok, detail) in zip(sent, replies, strict=True):
            outcome[entry_id] = (job_id, "") if int(ok) else (None, _text(detail))
        return RequeueReport(
            requeued={e: job_id for e, (job_id, _) in outcome.items() if job_id is not None},
            refused={e: why for e, (job_id, why) in outcome.items() if job_id is None},
        )

    async def _dead_entries(self, entry_ids: list[str]) -> list[tuple[str, Any]]:
        """(id, fields) for each id; fields None when it is no entry of the dead stream."""
        wanted = [entry_id for entry_id in entry_ids if _ENTRY_ID.fullmatch(entry_id)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in wanted:
                pipe.xrange(self.keys.dead, entry_id, entry_id, count=1)
            replies = dict(zip(wanted, await pipe.execute(), strict=True)) if wanted else {}
        return [(entry_id, replies[entry_id][0][1] if replies.get(entry_id) else None)
                for entry_id in entry_ids]

    def _requeueable(self, fields: dict[Any, Any]) -> tuple[Job, list[Any]]:
        """The letter's job at attempt 1, and the entry's other fields.

        InvalidJob when it holds no valid job, _Refused when the job cannot run again.
        """
        named = {_name(k): v for k, v in fields.items()}
        raw = named.get("job")
        if raw is None:
            raise _Refused("the dead letter holds no 'job' field: the entry was never a job")
        job = Job.decode(raw)
        if job.deadline is not None and job.deadline <= time.time():
            raise _Refused(f"its deadline has passed ({job.deadline:.3f}): it would die unrun")
        if self.registry is not None and job.task not in self.registry:
            raise _Refused(f"unknown task {job.task!r}: not in {self.registry!r}")
        extra = [item for name, value in named.items()
                 if name.startswith(b"extra:" if isinstance(name, bytes) else "extra:")
                 for item in (_unprefixed(name), value)]
        return dataclasses.replace(job, attempt=1, enqueued_at=time.time()), extra

    def _enqueue_keys(self, job: Job) -> list[str]:
        return [self.keys.job(job.id), self.keys.stream, self.keys.done(job.id),
                self.keys.delayed]


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


class _Refused(Exception):
    """A dead letter that ``requeue_dead`` leaves where it is; the message says why."""


def _missing_reason(entry_id: str) -> str:
    if not _ENTRY_ID.fullmatch(entry_id):
        return f"{entry_id[:60]!r} is not a stream entry id (like 1712345678901-0)"
    return "not in the dead-letter stream (requeued already?)"


def _out_of_memory(exc: BaseException) -> bool:
    """Redis refused a write for lack of memory (``maxmemory`` reached, nothing evicted)?

    Redis 7 replies ``-OOM``, also from a script; 6.2 wraps it in the script's ``ERR``.
    """
    return (isinstance(exc, redis.exceptions.OutOfMemoryError)
            or "OOM command not allowed" in str(exc))


def _enqueue_args(job: Job, data: bytes, at: float | None = None) -> list[Any]:
    args = [data, job.task, job.attempt, job.max_attempts, repr(job.enqueued_at)]
    return args if at is None else [*args, repr(at)]


def _text(value: Any) -> str:
    """A reply as str, whether the client decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _name(value: Any) -> str | bytes:
    """A field name as str, or as its bytes when they are not UTF-8 (kept as they were)."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return str(value)


def _unprefixed(name: str | bytes) -> str | bytes:
    return name.removeprefix(b"extra:") if isinstance(name, bytes) else name.removeprefix("extra:")


def _surrogate(name: str | bytes) -> str:
    """A name as str without loss: bytes that are not UTF-8 become lone surrogates."""
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name


def _escaped(value: str | bytes) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return str(value).encode()
