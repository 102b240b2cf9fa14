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

The rest lives next door, and is importable from here as before: ``handle``
(``JobHandle``, ``CancelOutcome``), ``dead_letters`` (``DeadLetter``, ``RequeueReport``,
reading and requeueing letters), ``replies`` (decoding what Redis sends back).
"""

from __future__ import annotations

__all__ = [
    "CancelOutcome", "DeadLetter", "JobHandle", "Queue", "QueueClosed", "QueueCounts", "QueueFull",
    "RequeueReport",
]

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis.asyncio
from redis.asyncio import RedisCluster

from . import scripts
from .dead_letters import DeadLetter, DeadLetters, RequeueReport
from .handle import CancelOutcome, JobHandle
from .job import InvalidJob, Job, JobNotFound
from .keys import DEFAULT_QUEUE, QueueKeys
from .options import EnqueueOptions, JobSpec, _checked_at, _unpacked
from .registry import TaskRegistry
from .replies import _name as _name  # worker and running import these from here
from .replies import _out_of_memory, _text
from .replies import _surrogate as _surrogate
from .results import QueueClosed, ResultListener


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
    timeout, a deadline: ``enqueue_with(EnqueueOptions(...), task, *args, **kwargs)``, or
    per job in ``enqueue_many``; cancelling: ``cancel(job_id)``.
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
        self._cancel = redis.register_script(scripts.CANCEL)
        self._results = ResultListener(redis, self.keys, repr(self))
        self._dead = DeadLetters(redis, self.keys, redis.register_script(scripts.REQUEUE_DEAD))
        if isinstance(redis, RedisCluster):  # its pipelines refuse scripts: see partitions
            from .partitions import cluster_ready

            cluster_ready(self)

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
        return await self.enqueue_job(self._job_with(options, task, args, kwargs),
                                      at=options.due_at())

    def _job_with(self, options: EnqueueOptions, task: str, args: Sequence[Any],
                  kwargs: Mapping[str, Any] | None) -> Job:
        return self.job(task, args, kwargs, job_id=options.job_id,
                        max_attempts=options.max_attempts, timeout_s=options.timeout_s,
                        deadline=options.deadline)  # type: ignore[arg-type]  # epoch s by now

    async def enqueue_job(self, job: Job, *, at: float | None = None) -> JobHandle:
        """Add a prepared Job (``queue.job(...)``): same semantics as ``enqueue``.

        ``at`` (epoch seconds): the job waits in the delayed set until then, status
        ``scheduled`` (a time past: at once). InvalidJob when it falls at or after the
        job's deadline: it would die unrun.
        """
        data = job.encode()
        at = _checked_at(job, at)
        try:
            entry = await self._enqueue(keys=self._enqueue_keys(job),
                                        args=_enqueue_args(job, data, at))
        except redis.exceptions.ResponseError as exc:
            if not _out_of_memory(exc):
                raise
            raise self._full(f"job {job.id!r} not enqueued") from exc
        return JobHandle(self, job.id, task=job.task, enqueued=entry is not None)

    async def enqueue_many(self, jobs: Iterable[JobSpec], *,
                           options: EnqueueOptions | None = None) -> list[JobHandle]:
        """Add many jobs in one round trip; handles in the same order.

            await queue.enqueue_many([("resize", [1]), ("resize", [2], {"width": 64})])
            await queue.enqueue_many([("resize", [3], {}, EnqueueOptions(delay_s=60)),
                                      ("resize", [4], EnqueueOptions(max_attempts=1))])
            await queue.enqueue_many(specs, options=EnqueueOptions(deadline=end_of_day))

        Each item is a prepared ``Job``, or ``(task, args)``, ``(task, args, kwargs)``,
        ``(task, args, options)`` or ``(task, args, kwargs, options)``: the options sit
        beside the arguments, never among them, as in ``enqueue_with``. ``options=``
        applies to every item that brings none of its own (an item's own replace it
        whole); to a prepared Job only its time applies (``delay_s``, ``at``). A
        ``job_id`` in ``options=`` is refused: every job would get that one id.

        Every job is checked first: one bad job raises InvalidJob and none is added.
        Each job is added atomically with its id check, not the batch as a whole: when
        Redis runs out of memory half-way, QueueFull's ``handles`` are those added.
        """
        if options is not None and options.job_id is not None:
            raise ValueError(f"enqueue_many(options={options!r}): a job_id shared by every "
                             "job would enqueue the first only; give each item its own")
        prepared, times = [], []
        for item in jobs:
            job, at = self._spec(item, options)
            prepared.append(job)
            times.append(_checked_at(job, at))
        payloads = [job.encode() for job in prepared]
        if not prepared:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job, data, at in zip(prepared, payloads, times, strict=True):
                await self._enqueue(keys=self._enqueue_keys(job),
                                    args=_enqueue_args(job, data, at), client=pipe)
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

    def _spec(self, item: JobSpec, shared: EnqueueOptions | None) -> tuple[Job, float | None]:
        """One item of ``enqueue_many`` as a Job, and when it may run (None: at once)."""
        if isinstance(item, Job):
            return item, None if shared is None else shared.due_at()
        task, args, kwargs, own = _unpacked(item)
        options = own if own is not None else shared
        if options is None:
            return self.job(task, args, kwargs), None
        return self._job_with(options, task, args, kwargs), options.due_at()

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
        return await self._dead.letters(count)

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
        return await self._dead.requeue(entry_ids, count=count, registry=self.registry)

    def _enqueue_keys(self, job: Job) -> list[str]:
        return [self.keys.job(job.id), self.keys.stream, self.keys.done(job.id),
                self.keys.delayed]


def _enqueue_args(job: Job, data: bytes, at: float | None = None) -> list[Any]:
    args = [data, job.task, job.attempt, job.max_attempts, repr(job.enqueued_at)]
    return args if at is None else [*args, repr(at)]
