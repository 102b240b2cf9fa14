"""Running delivered entries and settling them: the per-job half of the Worker.

    class Worker(_Running): ...      # worker.py: reading, slots, lifecycle

A delivery goes: decode the entry (``Job.decode``; bad input is dead-lettered at
once), mark the job running (``scripts.START``, one call for all the jobs of a
read), run its task under its timeout while the worker's heartbeat keeps the entry
ours, then settle it: ``scripts.SETTLE`` acks the entry and writes the result, the
retry, the dead letter or the hand-back in one atomic step. Deliveries that end in
the same turn of the event loop are settled by one call, each one still gated by
its own XACK. See the docstring of ``worker`` for why each step is safe.

The log lines go to the logger ``course_lib.distributed.worker``, as the rest of
the worker's: one logger to follow a worker by, whichever module writes.
"""

from __future__ import annotations

__all__: list[str] = []  # internal: Worker is the public face

import asyncio
import dataclasses
import json
import logging
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

import redis.exceptions

from ..lifecycle import BackgroundTasks
from ..timeouts import backoff_s
from .job import MAX_JOB_BYTES, InvalidJob, Job, JobStatus, Task, TaskRegistry, to_json
from .keys import QueueKeys
from .queue import _name, _out_of_memory, _surrogate, _text
from .scripts import Script

logger = logging.getLogger("course_lib.distributed.worker")

# What "Redis went away" looks like from redis-py: refused, reset, timed out.
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_MAX_ERROR_CHARS = 2000
_MAX_TRACEBACK_CHARS = 8000
_MAX_ENTRY_FIELDS = 64  # other fields of an entry copied one by one (see _entry_fields)


@dataclasses.dataclass(slots=True, eq=False)
class _Delivery:
    """One entry this worker holds in its PEL, and how far it got."""

    entry_id: str
    fields: dict[Any, Any]
    raw: Any = None  # the entry's ``job`` field, as read
    job: Job | None = None
    task: Task | None = None
    problem: str | None = None  # why it is dead-lettered unrun
    error: Exception | None = None  # the InvalidJob behind ``problem``, if any
    ended: str | None = None  # the job's final status, when it had ended already
    started: float | None = None  # loop time the attempt began
    settling: bool = False  # a settle has begun: a cancel must not hand it back
    lost: bool = False  # a heartbeat found it reclaimed by another worker
    cancel: bool = False  # a heartbeat found a cancel asked for (Queue.cancel)
    runner: asyncio.Task[None] | None = None  # the task that runs it


# A settle waiting to be sent: its 2 keys, its arguments, and its delivery.
_Settle = tuple[list[Any], list[Any], _Delivery]


class _Running:
    """Run delivered entries to their settlement; mixed into ``Worker``, which sets these."""

    name: str
    redis: Any  # redis.asyncio.Redis
    registry: TaskRegistry
    keys: QueueKeys
    visibility_timeout_s: float
    heartbeat_s: float
    default_timeout_s: float | None
    retry_base_s: float
    retry_max_s: float
    retry_jitter: str
    result_ttl_s: float
    max_dead_letters: int | None
    cancel_timeout_s: float
    reconnect_base_s: float
    reconnect_max_s: float
    _settle_script: Script
    _start_script: Script
    _heartbeat_script: Script
    _aborting: bool
    _stop_requested: asyncio.Event
    _stopping: asyncio.Task[Any] | None  # the stop or abort, once begun
    _nudge: asyncio.Event
    _jobs: BackgroundTasks
    _bookkeeping: set[asyncio.Task[Any]]
    _holding: dict[str, _Delivery]
    # keys.job("") and keys.done(""), UTF-8: + a job id, the keys of its record and
    # token. Arguments go to redis-py as bytes in the per-job paths: it packs those
    # about twice as fast as str.
    _job_key: bytes
    _done_key: bytes
    _settles: list[_Settle]
    _counts: dict[str, int]
    _release: Callable[[int], None]
    _prefetch_count: Callable[[int], int]
    _settle_and_read: Callable[[list[Any], list[Any], int], Coroutine[Any, Any, Any]]
    _sleep: Callable[[float], Coroutine[Any, Any, None]]

    # --- starting a batch -------------------------------------------------------------

    async def _start(self, batch: list[tuple[str, dict[Any, Any], str | None]]) -> int:
        """Decode entries just read, mark their jobs running in one call, run each.

        ``batch``: (entry id, fields, why it is poison or None). Returns how many run
        (each in a task that owns one slot, already taken); the others stay pending.
        """
        deliveries = []
        for entry_id, fields, poison in batch:
            try:
                deliveries.append(self._prepare(entry_id, fields, poison))
            except Exception:  # a bug of ours: the entry stays pending, reclaimed later
                logger.exception("worker %s: entry %s could not be handled", self.name,
                                 entry_id)
        runnable = [d for d in deliveries if d.problem is None]
        if runnable:
            unmarked = await self._mark_running(runnable)
            if unmarked:
                deliveries = [d for d in deliveries if d not in unmarked]
        if self._aborting:
            return 0  # a "crash": they stay in our PEL, unrun
        for d in deliveries:
            self._holding[d.entry_id] = d
            d.runner = self._jobs.spawn(self._run_entry(d), name=f"{self.name} {d.entry_id}")
        return len(deliveries)

    def _prepare(self, entry_id: str, fields: dict[Any, Any], poison: str | None) -> _Delivery:
        """The delivery, decoded; ``problem`` set when it is to be dead-lettered unrun."""
        d = _Delivery(entry_id, fields)
        d.raw = _field(fields, "job")
        try:
            if d.raw is None:
                raise InvalidJob(f"the entry has no 'job' field (fields: "
                                 f"{sorted(_text(k) for k in fields)[:10]})")
            job = d.job = Job.decode(d.raw)
        except InvalidJob as exc:
            d.problem, d.error = str(exc), exc
            return d
        d.task = self.registry.get(job.task)
        if d.task is None:
            d.problem = f"unknown task {job.task!r}: not registered on this worker"
        elif poison is not None:
            d.problem = poison
        elif job.deadline is not None and time.time() >= job.deadline:
            d.problem = "its deadline passed before it could start"
        return d

    async def _mark_running(self, deliveries: list[_Delivery]) -> list[_Delivery]:
        """Record each attempt as running, in one call; those that could not be (not run).

        A job whose record is final ended already (another entry with its id ran):
        its ``ended`` is set, and it is acked as a duplicate, not run. With Redis
        away only the records suffer: the jobs run, and are settled later. Refused for
        now (Redis out of memory, or its scripts flushed again and again), the read is
        held and the call retried with backoff (see ``_hold``); at a stop meanwhile,
        none is marked (they stay pending, reclaimed later).
        """
        keys: list[str] = []
        args: list[Any] = [self.name, repr(time.time())]
        for d in deliveries:
            job = d.job
            assert job is not None
            keys.append(self._job_key + job.id.encode())
            args.append(f"{job.attempt} {job.max_attempts} {job.task} {job.enqueued_at!r}"
                        .encode())
        try:
            replies = await self._start_script(keys=keys, args=args)
        except _REDIS_DOWN as exc:
            logger.warning("worker %s: could not record %d job(s) running (%s)", self.name,
                           len(deliveries), exc)
            return []
        except Exception as exc:
            if _refused_for_now(exc):
                replies = await self._hold(deliveries, keys, args, exc)
                if replies is None:
                    return deliveries
            elif len(deliveries) == 1:  # a bug, or a key of the wrong type: left pending
                logger.exception("worker %s: entry %s could not be marked running", self.name,
                                 deliveries[0].entry_id)
                return deliveries
            else:
                return [d for one in deliveries for d in await self._mark_running([one])]
        for d, ended in zip(deliveries, replies, strict=True):
            d.ended = _text(ended) or None
        return []

    async def _hold(self, deliveries: list[_Delivery], keys: list[Any], args: list[Any],
                    refusal: Exception) -> list[Any] | None:
        """Retry START for a read it refused, with backoff; its reply, or None at a stop.

        The read keeps its slots meanwhile, and its entries are beaten with the running
        ones: a read that cannot start must not make room for the next (each would pull
        more entries into this worker's pending list, unrun), and an entry held here is
        not delivered again, so its delivery count, which ``max_deliveries`` bounds,
        counts workers lost, not refusals.
        """
        logger.warning("worker %s: Redis refused to mark %d job(s) running (%s); holding "
                       "them, retrying with backoff", self.name, len(deliveries), refusal)
        for d in deliveries:
            self._holding[d.entry_id] = d
        failures = 1
        try:
            while True:
                await self._sleep(backoff_s(failures, base_s=self.reconnect_base_s,
                                            max_s=self.reconnect_max_s))
                if self._stop_requested.is_set():
                    return None
                try:
                    replies = await self._start_script(keys=keys, args=args)
                except Exception as exc:
                    if not (_refused_for_now(exc) or isinstance(exc, _REDIS_DOWN)):
                        raise
                    failures += 1
                    logger.debug("worker %s: still refused: %r", self.name, exc)
                    continue
                logger.warning("worker %s: %d held job(s) marked running after %d refusals",
                               self.name, len(deliveries), failures)
                return replies
        finally:
            for d in deliveries:  # _start holds those that run
                self._holding.pop(d.entry_id, None)

    # --- running one entry ------------------------------------------------------------

    async def _run_entry(self, d: _Delivery) -> None:
        """Run one delivery to its settle; the settle, sent later, frees its slot."""
        try:
            if d.problem is not None:
                self._bury(d, d.problem, error=d.error)
            elif d.ended == "cancel" and d.job is not None:  # asked while a worker lost it ran
                self._cancelled(d, d.job, 0.0, "cancelled on request before this attempt "
                                               "started")
            elif d.ended == "cancelled":
                logger.info("entry %s: job %s was cancelled before it started; acked unrun",
                            d.entry_id, d.job.id if d.job else "?")
                self._settle(d, None, "ack")
            elif d.ended is not None:
                logger.info("entry %s: job %s ended already; acked as a duplicate",
                            d.entry_id, d.job.id if d.job else "?")
                self._settle(d, None, "ack")
            else:
                assert d.job is not None and d.task is not None
                await self._run_one(d, d.job, d.task)
        except asyncio.CancelledError:
            # Not a lost one (a heartbeat found another worker running it): acking
            # that entry would settle the other worker's delivery and run it again.
            if d.job is not None and not d.settling and not self._aborting and not d.lost:
                self._hand_back(d)  # hand it back, then go on cancelling
            raise
        except Exception:
            # A bug of ours, not the job's: log it, keep the worker going. The entry
            # stays pending and is reclaimed after visibility_timeout_s.
            logger.exception("worker %s: entry %s could not be handled", self.name, d.entry_id)
        finally:
            if not d.settling:  # else its settle frees the slot, once sent
                self._holding.pop(d.entry_id, None)
                self._release(1)

    async def _run_one(self, d: _Delivery, job: Job, task: Task) -> None:
        timeout_s = job.timeout_s if job.timeout_s is not None else task.timeout_s
        if timeout_s is None:
            timeout_s = self.default_timeout_s
        if job.deadline is not None:
            left_s = job.deadline - time.time()
            timeout_s = left_s if timeout_s is None else min(timeout_s, left_s)
        if logger.isEnabledFor(logging.INFO):
            logger.info("%6.2fs → %s(id=%s) %d/%d", max(0.0, time.time() - job.enqueued_at),
                        job.task, job.id, job.attempt, job.max_attempts)
        if d.cancel:  # a heartbeat read the flag while START was held (_hold)
            self._cancelled(d, job, 0.0, "cancelled on request before this attempt started")
            return
        loop = asyncio.get_running_loop()
        started = d.started = loop.time()
        scope = None
        try:
            if timeout_s is None:
                result = await task.fn(*job.args, **job.kwargs)
            else:
                async with (scope := asyncio.timeout(timeout_s)):
                    result = await task.fn(*job.args, **job.kwargs)
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            why = None
            if current is None:
                raise
            if current.cancelling():
                if self._stopping is not None or d.lost:
                    raise  # our stop (or abort): _run_entry hands it back, or leaves it
                if d.cancel:  # ours, asked for by Queue.cancel (see _beat)
                    while current.uncancel():
                        pass
                    self._cancelled(d, job, loop.time() - started,
                                    "cancelled while running, on request")
                    return
                # Cancelled from outside the worker (aiomonitor's cancel, a stray
                # task.cancel()): handed back as at a stop, it would be read again at
                # the same attempt and, if it hangs, cancelled again, for ever. It is
                # the job's failed attempt. Every request is withdrawn (there is no
                # await from here to the end of the task: a stop cannot slip in).
                while current.uncancel():
                    pass
                why = "cancelled from outside the worker"
                error = RuntimeError(f"{job.task} was {why}")
            else:
                # The task raised CancelledError with no one cancelling it (it awaited
                # a future someone else cancelled): as above, the job's failure.
                error = RuntimeError(f"{job.task} raised CancelledError without being "
                                     "cancelled")
            error.__cause__ = exc
            self._retry_or_bury(d, job, task, error, loop.time() - started, why)
            return
        except Exception as exc:
            # Ours only when our scope expired: the task may raise TimeoutError itself.
            why = None
            if isinstance(exc, TimeoutError) and scope is not None and scope.expired():
                why = f"timed out after {timeout_s:.3g} s"
            self._retry_or_bury(d, job, task, exc, loop.time() - started, why)
            return
        ran_s = loop.time() - started
        try:
            payload = b"null" if result is None else to_json(result, f"the result of {job.task}")
            if len(payload) > MAX_JOB_BYTES:
                raise InvalidJob(f"the result of {job.task} is {len(payload)} bytes, over "
                                 f"the {MAX_JOB_BYTES} byte limit")
        except InvalidJob as exc:  # retrying would return the same thing
            self._fail(d, job, exc, ran_s, f"its result cannot be stored: {exc.problem}",
                       final=JobStatus.FAILED)
            return
        self._counts["processed"] += 1
        logger.info("%6.2fs ← %s(id=%s) ok", ran_s, job.task, job.id)
        self._settle(d, job.id, b"done", payload)

    def _retry_or_bury(self, d: _Delivery, job: Job, task: Task, exc: Exception,
                             ran_s: float, why: str | None = None) -> None:
        if not task.retries(exc):
            reason = why or f"{type(exc).__name__} is not retried"
            self._fail(d, job, exc, ran_s, reason, final=JobStatus.FAILED)
            return
        if job.attempt >= job.max_attempts:
            reason = f"gave up after {job.attempt} attempt(s)" + (f", {why}" if why else "")
            self._fail(d, job, exc, ran_s, reason, final=JobStatus.DEAD)
            return
        delay_s = backoff_s(job.attempt, base_s=self.retry_base_s, max_s=self.retry_max_s,
                            jitter=self.retry_jitter)
        due = time.time() + delay_s
        if job.deadline is not None and due >= job.deadline:
            reason = "its deadline passes before the next attempt" + (f"; {why}" if why else "")
            self._fail(d, job, exc, ran_s, reason, final=JobStatus.DEAD)
            return
        following = job.next_attempt()
        self._counts["retried"] += 1
        logger.info("%6.2fs ↻ %s(id=%s) retry %d/%d in %.2fs: %s", ran_s, job.task, job.id,
                    following.attempt, job.max_attempts, delay_s, why or type(exc).__name__)
        record = {"status": JobStatus.RETRYING.value, "next_at": repr(due),
                  **_error_fields(exc, why or "")}
        self._settle(d, job.id, "retry", *_counted(record),
                     *_counted([repr(due), following.encode()]))
        self._nudge.set()  # the maintenance loop now sleeps until this retry is due

    def _fail(self, d: _Delivery, job: Job, exc: Exception, ran_s: float, reason: str,
                    *, final: JobStatus) -> None:
        """End the job failed (no dead letter) or dead (dead-lettered)."""
        if final is JobStatus.DEAD:
            self._bury(d, reason, error=exc, ran_s=ran_s)
            return
        self._counts["failed"] += 1
        logger.info("%6.2fs ✗ %s(id=%s) failed: %s: %s", ran_s, job.task, job.id,
                    type(exc).__name__, reason)
        record = {"status": JobStatus.FAILED.value, "finished_at": repr(time.time()),
                  **_error_fields(exc, reason)}
        self._settle(d, job.id, "end", *_counted(record), 0)

    def _bury(self, d: _Delivery, reason: str, *, error: Exception | None = None,
                    ran_s: float = 0.0) -> None:
        """Ack the entry and add it to the dead-letter stream, with the reason, at once."""
        self._counts["dead"] += 1
        job = d.job
        error_type = type(error).__name__ if error is not None else ""
        message = str(error)[:_MAX_ERROR_CHARS] if error is not None else ""
        letter: list[Any] = [
            "reason", reason, "error_type", error_type, "error", message,
            "origin_id", d.entry_id, "worker", self.name, "dead_at", repr(time.time()),
        ]  # fmt: skip
        letter += _entry_fields(d.fields, prefix="extra:")  # the entry as it was: never lost
        if job is None:
            logger.warning("%6.2fs ✗ entry %s dead: %s", ran_s, d.entry_id, reason)
            self._settle(d, None, "bury", 0, *_counted(letter))
            return
        logger.info("%6.2fs ✗ %s(id=%s) dead: %s", ran_s, job.task, job.id, reason)
        record = {"status": JobStatus.DEAD.value, "finished_at": repr(time.time()),
                  "reason": reason}
        if error is not None:
            record |= _error_fields(error, reason)
        self._settle(d, job.id, "end", *_counted(record), *_counted(letter))

    def _cancelled(self, d: _Delivery, job: Job, ran_s: float, reason: str) -> None:
        """End the job cancelled, as asked (``Queue.cancel``): no retry, no dead letter."""
        logger.info("%6.2fs ⊘ %s(id=%s) %s", ran_s, job.task, job.id, reason)
        record = {"status": JobStatus.CANCELLED.value, "finished_at": repr(time.time()),
                  "reason": reason}
        self._settle(d, job.id, "end", *_counted(record), 0)

    def _hand_back(self, d: _Delivery) -> None:
        assert d.job is not None
        self._counts["handed_back"] += 1
        ran_s = 0.0 if d.started is None else asyncio.get_running_loop().time() - d.started
        logger.info("%6.2fs ⇠ %s(id=%s) handed back: worker stopping", ran_s, d.job.task,
                    d.job.id)
        self._settle(d, d.job.id, "back", *_counted({"status": "queued"}),
                     *_counted(_entry_fields(d.fields)))  # the entry as it was

    # --- heartbeat --------------------------------------------------------------------

    async def _beat(self) -> None:
        """Reset the idle time of every entry running here, in one call; report reclaims.

        The worker's heartbeat loop calls this every ``heartbeat_s``, so no other
        worker takes a long job over. An entry found reclaimed by another worker
        (this one looked dead: a long pause, a partition) is logged once: the job may
        then run twice, and whichever settle comes second writes nothing. The same call
        reads the cancel flags ``Queue.cancel`` sets: a job flagged has its task
        cancelled, so a cancel lands within one ``heartbeat_s`` (and a round trip).
        """
        held = [d for d in self._holding.values() if not d.settling and not d.lost]
        if not held:
            return
        try:
            lost, cancel = await self._heartbeat_script(
                keys=[self.keys.stream, *(self.keys.stream if d.job is None else
                                          self._job_key + d.job.id.encode() for d in held)],
                args=[self.keys.group, self.name, *(d.entry_id for d in held)])
        except Exception as exc:  # Redis away: the next beat may do
            logger.debug("worker %s: heartbeat of %d entries failed: %r", self.name, len(held),
                         exc)
            return
        for entry_id in lost:
            d = self._holding.get(_text(entry_id))
            if d is not None and not d.settling and not d.lost:  # not settled meanwhile
                d.lost = True
                logger.warning("entry %s was reclaimed by another worker while running here: "
                               "the job may run twice", d.entry_id)
        for entry_id in cancel:
            d = self._holding.get(_text(entry_id))
            if d is None or d.settling or d.lost or d.cancel:
                continue
            d.cancel = True
            if d.started is not None and d.runner is not None:  # else _run_one sees the flag
                logger.info("entry %s: cancel asked for job %s; cancelling its task",
                            d.entry_id, d.job.id if d.job else "?")
                d.runner.cancel()

    # --- settling ---------------------------------------------------------------------

    def _settle(self, d: _Delivery, job_id: str | None, kind: str | bytes, *args: Any) -> None:
        """Settle a delivery: sent with the others of this turn, in one call; never raises.

        ``kind`` and ``args`` as the SETTLE script reads them: ``"done", result``;
        ``"ack"``; ``"end"``, ``"retry"``, ``"back"`` or ``"bury"`` with the record's
        and the letter's arguments, each list preceded by its length. The delivery
        keeps its slot until the settle is done (or given up: then the entry stays
        pending, and is reclaimed). Nothing cancels it, once queued.
        """
        d.settling = True
        if job_id is None:
            keys: list[Any] = [self.keys.stream, self.keys.stream]
        else:
            key = job_id.encode()
            keys = [self._job_key + key, self._done_key + key]
        self._settles.append((keys, [d.entry_id.encode(), kind, *args], d))
        if len(self._settles) == 1:
            self._send_settles()

    def _send_settles(self) -> None:
        """Send the settles gathered by the time its task starts, in one call."""
        # The task's first step runs after the callbacks already scheduled: the other
        # jobs that end in this turn of the event loop add theirs first.
        task = asyncio.create_task(self._settle_batch(), name=f"{self.name} settle")
        self._bookkeeping.add(task)  # held until it ends: stop() waits for it
        task.add_done_callback(self._bookkeeping.discard)

    async def _settle_batch(self) -> None:
        batch, self._settles = self._settles, []
        if not batch:
            return
        try:
            await self._settle_many(batch)
        finally:  # done, given up or cancelled: the slots are free again
            for _, _, d in batch:
                self._holding.pop(d.entry_id, None)
            self._release(len(batch))

    async def _settle_many(self, batch: list[_Settle]) -> list[int | None]:
        """One run of the settle script for ``batch``, retried while Redis is away or
        refuses it for now (out of memory without ``allow-oom``, scripts flushed).

        Sent again after an error, a batch settles nothing twice: each delivery is
        gated by its XACK. An error that is not an outage (a key of the wrong type)
        is retried one delivery at a time, so that one does not hold back the rest.
        """
        keys = [self.keys.stream, self.keys.delayed, self.keys.dead]
        args = [self.keys.group, max(1, round(self.result_ttl_s * 1000)), repr(time.time()),
                self.max_dead_letters or 0]
        for k, a, _ in batch:
            keys += k
            args += a
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.visibility_timeout_s
        failures = 0
        read = self._prefetch_count(len(batch))  # the first try may read new entries too
        while True:
            try:
                if read:
                    codes = await self._settle_and_read(keys, args, read)
                else:
                    codes = await self._settle_script(keys=keys, args=args)
                return [int(code) for code in codes]
            except Exception as exc:
                # Refused for now: out of memory on a server that cannot run SETTLE
                # with allow-oom (before Redis 7), or scripts flushed again and again.
                if not (isinstance(exc, _REDIS_DOWN) or _refused_for_now(exc)):
                    if len(batch) > 1:
                        logger.error("worker %s: settling %d entries failed (%r); settling "
                                     "them one at a time", self.name, len(batch), exc)
                        return [code for one in batch for code in await self._settle_many([one])]
                    if await self._lost_with_stream(batch[0], exc):
                        return [None]
                    logger.exception("entry %s: settle failed; it stays pending",
                                     _text(batch[0][1][0]))
                    return [None]
                read = 0
                failures += 1
                if loop.time() >= give_up_at:
                    for _, a, _ in batch:
                        logger.error("entry %s: could not settle it for %s s (%r); it stays "
                                     "pending and will be reclaimed", _text(a[0]),
                                     self.visibility_timeout_s, exc)
                    return [None] * len(batch)
                await asyncio.sleep(backoff_s(failures, base_s=self.reconnect_base_s,
                                              max_s=self.reconnect_max_s))

    async def _lost_with_stream(self, settle: _Settle, exc: Exception) -> bool:
        """Record the job dead when its settle failed because the stream key was replaced.

        Its entry went with the old stream: nothing is left to ack, reclaim, retry
        into or hand back to, and without this the record would say "running" for
        ever. Recorded dead (its waiters woken), with the reason, in one line of log;
        a requeue runs it again. False when the stream is a stream (another failure).
        """
        if "WRONGTYPE" not in str(exc):
            return False
        try:
            if _text(await self.redis.type(self.keys.stream)) == "stream":
                return False  # another key of the settle was the wrong type
            keys, _, d = settle
            reason = (f"its stream key {self.keys.stream!r} was replaced by another type "
                      "while it ran: the entry went with it")
            logger.warning("entry %s: %s; job %s recorded dead", d.entry_id, reason,
                           d.job.id if d.job else "(none)")
            if d.job is None:
                return True
            ttl_ms = max(1, round(self.result_ttl_s * 1000))
            async with self.redis.pipeline(transaction=True) as pipe:  # as SETTLE's notify()
                pipe.hset(keys[0], mapping={"status": JobStatus.DEAD.value, "reason": reason,
                                            "finished_at": repr(time.time())})
                pipe.pexpire(keys[0], ttl_ms)
                pipe.lpush(keys[1], "done")
                pipe.pexpire(keys[1], ttl_ms)
                pipe.publish(keys[1], "done")
                await pipe.execute()
        except Exception as again:
            logger.warning("entry %s: its stream key was replaced; recording its job dead "
                           "failed too (%r)", _text(settle[1][0]), again)
        return True

    async def _end_bookkeeping(self) -> None:
        """Wait ``cancel_timeout_s`` for settles still running, then cancel them.

        A settle cut short leaves its entry pending: reclaimed later, nothing lost.
        """
        if self._bookkeeping:
            await asyncio.wait(set(self._bookkeeping), timeout=self.cancel_timeout_s)
        if self._bookkeeping:
            logger.error("worker %s: %d settles still retrying at stop; their entries stay "
                         "pending for reclaim", self.name, len(self._bookkeeping))
            left = await _cancel_until_done(set(self._bookkeeping), self.cancel_timeout_s)
            if left:
                logger.error("worker %s: %d tasks ignore cancellation: %s", self.name,
                             len(left), sorted(t.get_name() for t in left))


async def _cancel_until_done(tasks: set[asyncio.Task[Any]], give_up_s: float
                             ) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` until they end, again every 0.1 s; those still running at the end.

    Again, because Python 3.11 can lose a cancel inside a redis-py command (see
    ``results._raise_if_cancel_lost``).
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + give_up_s
    while tasks and loop.time() < give_up_at:
        for task in tasks:
            task.cancel()
        _, tasks = await asyncio.wait(tasks, timeout=min(0.1, give_up_s))
    return tasks


def _refused_for_now(exc: BaseException) -> bool:
    """Refused by a server that will take it later: out of memory, or scripts flushed."""
    return _out_of_memory(exc) or isinstance(exc, redis.exceptions.NoScriptError)


def _counted(items: dict[str, Any] | list[Any]) -> list[Any]:
    """``items`` (a dict: as field/value pairs) preceded by their count, for SETTLE."""
    flat = [x for pair in items.items() for x in pair] if isinstance(items, dict) else items
    return [len(flat), *flat]


def _field(fields: dict[Any, Any], name: str) -> Any:
    value = fields.get(name.encode())
    return fields.get(name) if value is None else value


def _entry_fields(fields: dict[Any, Any], *, prefix: str = "") -> list[Any]:
    """An entry's fields as field/value pairs, ``job`` as it is, the others ``prefix``-ed.

    Beyond ``_MAX_ENTRY_FIELDS`` the others go into ONE field, ``{prefix}_fields_json``
    (a JSON object; bytes as latin-1 text, so nothing is lost): a Lua script cannot
    ``unpack`` thousands of arguments, and a settle that fails is retried for ever.
    A name that is not UTF-8 is kept as its bytes (the entry as it was); in the JSON
    object it is decoded with ``surrogateescape``, so ``name.encode("utf-8",
    "surrogateescape")`` gives its bytes back.
    """
    pairs: list[Any] = []
    others: list[tuple[str | bytes, Any]] = []
    for key, value in fields.items():
        name = _name(key)
        if name == "job":
            pairs += ["job", value]
        else:
            others.append((name, value))
    if len(others) <= _MAX_ENTRY_FIELDS:
        for name, value in others:
            pairs += [prefix.encode() + name if isinstance(name, bytes) else prefix + name,
                      value]
        return pairs
    packed = {_surrogate(name): value.decode("latin-1") if isinstance(value, bytes)
              else str(value) for name, value in others}
    return [*pairs, f"{prefix}_fields_json", json.dumps(packed)]


def _error_fields(exc: BaseException, reason: str) -> dict[str, str]:
    tb = "".join(traceback.format_exception(exc))[-_MAX_TRACEBACK_CHARS:]
    return {"error_type": type(exc).__name__, "error": str(exc)[:_MAX_ERROR_CHARS],
            "traceback": tb, "reason": reason}

