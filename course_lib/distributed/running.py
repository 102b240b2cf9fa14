"""Running one delivered entry and settling it: the per-job half of the Worker.

    class Worker(_Running): ...      # worker.py: reading, slots, lifecycle

A delivery goes: decode the entry (``Job.decode``; bad input is dead-lettered at
once), mark the job running (``scripts.START``), run its task under a timeout while
a heartbeat keeps the entry ours, then settle it: ONE run of ``scripts.SETTLE``
acks the entry and writes the result, the retry, the dead letter or the hand-back.
See the docstring of ``worker`` for why each step is safe.

The log lines go to the logger ``course_lib.distributed.worker``, as the rest of
the worker's: one logger to follow a worker by, whichever module writes.
"""

from __future__ import annotations

__all__: list[str] = []  # internal: Worker is the public face

import asyncio
import dataclasses
import logging
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

import redis.exceptions
from redis.commands.core import AsyncScript

from ..timeouts import backoff_s
from .job import MAX_JOB_BYTES, InvalidJob, Job, JobStatus, Task, TaskRegistry, to_json
from .keys import QueueKeys
from .queue import _raise_if_cancel_lost, _text

logger = logging.getLogger("course_lib.distributed.worker")

# What "Redis went away" looks like from redis-py: refused, reset, timed out.
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_MAX_ERROR_CHARS = 2000
_MAX_TRACEBACK_CHARS = 8000


@dataclasses.dataclass(slots=True)
class _Delivery:
    """One entry this worker holds in its PEL, and how far it got."""

    entry_id: str
    fields: dict[Any, Any]
    raw: Any = None  # the entry's ``job`` field, as read
    job: Job | None = None
    started: float | None = None  # loop time the attempt began
    settling: bool = False  # a settle has begun: a cancel must not hand it back


class _Running:
    """Run one delivered entry to its settlement; mixed into ``Worker``, which sets these."""

    name: str
    registry: TaskRegistry
    keys: QueueKeys
    visibility_timeout_s: float
    heartbeat_s: float
    retry_base_s: float
    retry_max_s: float
    retry_jitter: str
    result_ttl_s: float
    cancel_timeout_s: float
    reconnect_base_s: float
    reconnect_max_s: float
    _settle_script: AsyncScript
    _start_script: AsyncScript
    _heartbeat_script: AsyncScript
    _aborting: bool
    _nudge: asyncio.Event
    _bookkeeping: set[asyncio.Task[Any]]
    _holding: set[str]
    _counts: dict[str, int]
    _release: Callable[[int], None]

    # --- running one entry ------------------------------------------------------------

    async def _run_entry(self, d: _Delivery, poison: str | None) -> None:
        try:
            d.raw = _field(d.fields, "job")
            try:
                if d.raw is None:
                    raise InvalidJob(f"the entry has no 'job' field (fields: "
                                     f"{sorted(_text(k) for k in d.fields)[:10]})")
                d.job = Job.decode(d.raw)
            except InvalidJob as exc:
                await self._bury(d, str(exc), error=exc)
                return
            job = d.job
            task = self.registry.get(job.task)
            if task is None:
                await self._bury(d, f"unknown task {job.task!r}: not registered on this worker")
                return
            if poison is not None:
                await self._bury(d, poison)
                return
            if job.deadline is not None and time.time() >= job.deadline:
                await self._bury(d, "its deadline passed before it could start")
                return
            final = await self._mark_running(job)
            _raise_if_cancel_lost()  # a stop's cancel, lost in the command: hand it back
            if final is not None:
                # Its record is final: another entry with this id ran already.
                d.settling = True
                await self._bookkeep(self._settle(d.entry_id))
                logger.info("entry %s: job %s ended already; acked as a duplicate",
                            d.entry_id, job.id)
                return
            await self._run_one(d, job, task)
        except asyncio.CancelledError:
            if d.job is not None and not d.settling and not self._aborting:
                await self._bookkeep(self._hand_back(d))  # hand it back, then go on cancelling
            raise
        except Exception:
            # A bug of ours, not the job's: log it, keep the worker going. The entry
            # stays pending and is reclaimed after visibility_timeout_s.
            logger.exception("worker %s: entry %s could not be handled", self.name, d.entry_id)
        finally:
            self._holding.discard(d.entry_id)
            self._release(1)

    async def _run_one(self, d: _Delivery, job: Job, task: Task) -> None:
        timeout_s = job.timeout_s if job.timeout_s is not None else task.timeout_s
        if job.deadline is not None:
            left_s = job.deadline - time.time()
            timeout_s = left_s if timeout_s is None else min(timeout_s, left_s)
        queued_s = max(0.0, time.time() - job.enqueued_at)
        logger.info("%6.2fs → %s(id=%s) %d/%d", queued_s, job.task, job.id, job.attempt,
                    job.max_attempts)
        loop = asyncio.get_running_loop()
        started = d.started = loop.time()
        over = asyncio.Event()
        heartbeat = asyncio.create_task(self._heartbeat(d, over),
                                        name=f"{self.name} hb {d.entry_id}")
        self._bookkeeping.add(heartbeat)  # held until it ends, even if we are cancelled
        heartbeat.add_done_callback(self._bookkeeping.discard)
        scope = asyncio.timeout(timeout_s)
        try:
            try:
                async with scope:
                    result = await task.fn(*job.args, **job.kwargs)
            finally:
                await self._end_heartbeat(heartbeat, over)
        except TimeoutError as exc:
            # Ours only when our scope expired: the task may raise TimeoutError itself.
            why = f"timed out after {timeout_s:.3g} s" if scope.expired() else None
            await self._retry_or_bury(d, job, task, exc, loop.time() - started, why)
        except asyncio.CancelledError:
            raise  # _run_entry hands it back
        except Exception as exc:
            await self._retry_or_bury(d, job, task, exc, loop.time() - started)
        else:
            ran_s = loop.time() - started
            try:
                payload = to_json(result, f"the result of {job.task}")
                if len(payload) > MAX_JOB_BYTES:
                    raise InvalidJob(f"the result of {job.task} is {len(payload)} bytes, over "
                                     f"the {MAX_JOB_BYTES} byte limit")
            except InvalidJob as exc:  # retrying would return the same thing
                await self._fail(d, job, exc, ran_s, f"its result cannot be stored: "
                                 f"{exc.problem}", final=JobStatus.FAILED)
                return
            d.settling = True
            self._counts["processed"] += 1
            logger.info("%6.2fs ← %s(id=%s) ok", ran_s, job.task, job.id)
            await self._bookkeep(self._settle(
                d.entry_id, job.id, notify=True,
                record={"status": JobStatus.DONE.value, "result": payload,
                        "finished_at": repr(time.time())},
            ))  # fmt: skip

    async def _retry_or_bury(self, d: _Delivery, job: Job, task: Task, exc: Exception,
                             ran_s: float, why: str | None = None) -> None:
        if not task.retries(exc):
            reason = why or f"{type(exc).__name__} is not retried"
            await self._fail(d, job, exc, ran_s, reason, final=JobStatus.FAILED)
            return
        if job.attempt >= job.max_attempts:
            reason = f"gave up after {job.attempt} attempt(s)" + (f", {why}" if why else "")
            await self._fail(d, job, exc, ran_s, reason, final=JobStatus.DEAD)
            return
        delay_s = backoff_s(job.attempt, base_s=self.retry_base_s, max_s=self.retry_max_s,
                            jitter=self.retry_jitter)
        due = time.time() + delay_s
        if job.deadline is not None and due >= job.deadline:
            reason = "its deadline passes before the next attempt" + (f"; {why}" if why else "")
            await self._fail(d, job, exc, ran_s, reason, final=JobStatus.DEAD)
            return
        following = job.next_attempt()
        d.settling = True
        self._counts["retried"] += 1
        logger.info("%6.2fs ↻ %s(id=%s) retry %d/%d in %.2fs: %s", ran_s, job.task, job.id,
                    following.attempt, job.max_attempts, delay_s, why or type(exc).__name__)
        await self._bookkeep(self._settle(
            d.entry_id, job.id, ttl=False, action="zadd", target=self.keys.delayed,
            score=due, payload=[following.encode()],
            record={"status": JobStatus.RETRYING.value, "next_at": repr(due),
                    **_error_fields(exc, why or "")},
        ))  # fmt: skip
        self._nudge.set()  # the maintenance loop now sleeps until this retry is due

    async def _fail(self, d: _Delivery, job: Job, exc: Exception, ran_s: float, reason: str,
                    *, final: JobStatus) -> None:
        """End the job failed (no dead letter) or dead (dead-lettered)."""
        if final is JobStatus.DEAD:
            await self._bury(d, reason, error=exc, ran_s=ran_s)
            return
        d.settling = True
        self._counts["failed"] += 1
        logger.info("%6.2fs ✗ %s(id=%s) failed: %s: %s", ran_s, job.task, job.id,
                    type(exc).__name__, reason)
        await self._bookkeep(self._settle(
            d.entry_id, job.id, notify=True,
            record={"status": JobStatus.FAILED.value, "finished_at": repr(time.time()),
                    **_error_fields(exc, reason)},
        ))  # fmt: skip

    async def _bury(self, d: _Delivery, reason: str, *, error: Exception | None = None,
                    ran_s: float = 0.0) -> None:
        """Ack the entry and add it to the dead-letter stream, with the reason, at once."""
        d.settling = True
        self._counts["dead"] += 1
        job = d.job
        error_type = type(error).__name__ if error is not None else ""
        message = str(error)[:_MAX_ERROR_CHARS] if error is not None else ""
        letter: list[Any] = [
            "reason", reason, "error_type", error_type, "error", message,
            "origin_id", d.entry_id, "worker", self.name, "dead_at", repr(time.time()),
        ]  # fmt: skip
        for key, value in d.fields.items():  # the entry as it was: never lost
            name = _text(key)
            letter += [name if name == "job" else f"extra:{name}", value]
        if job is None:
            logger.warning("%6.2fs ✗ entry %s dead: %s", ran_s, d.entry_id, reason)
            await self._bookkeep(self._settle(d.entry_id, action="xadd", target=self.keys.dead,
                                              payload=letter))
            return
        logger.info("%6.2fs ✗ %s(id=%s) dead: %s", ran_s, job.task, job.id, reason)
        record = {"status": JobStatus.DEAD.value, "finished_at": repr(time.time()),
                  "reason": reason}
        if error is not None:
            record |= _error_fields(error, reason)
        await self._bookkeep(self._settle(d.entry_id, job.id, notify=True, action="xadd",
                                          target=self.keys.dead, payload=letter, record=record))

    async def _hand_back(self, d: _Delivery) -> None:
        assert d.job is not None
        d.settling = True
        self._counts["handed_back"] += 1
        ran_s = 0.0 if d.started is None else asyncio.get_running_loop().time() - d.started
        logger.info("%6.2fs ⇠ %s(id=%s) handed back: worker stopping", ran_s, d.job.task,
                    d.job.id)
        await self._settle(d.entry_id, d.job.id, ttl=False, action="xadd",
                           target=self.keys.stream, payload=["job", d.raw],
                           record={"status": JobStatus.QUEUED.value})

    async def _mark_running(self, job: Job) -> str | None:
        """Record the attempt as running; the final status instead if the job ended already."""
        try:
            final = await self._start_script(
                keys=[self.keys.job(job.id)],
                args=[self.name, repr(time.time()), job.attempt, job.max_attempts, job.task,
                      repr(job.enqueued_at)],
            )  # fmt: skip
        except _REDIS_DOWN as exc:  # only the record suffers: run it, settle later
            logger.warning("job %s: could not record it running (%s)", job.id, exc)
            return None
        return None if final is None else _text(final)

    async def _heartbeat(self, d: _Delivery, over: asyncio.Event) -> None:
        """Keep the entry's idle time low while the job runs, so it is not reclaimed.

        Ends when ``over`` is set, between beats: it is not cancelled mid-command.
        (On Python 3.11 a cancel that lands as a fakeredis reply arrives can be lost
        inside ``wait_for``; a heartbeat that missed its cancel would then beat on,
        and the job awaiting it would never settle.)
        """
        while True:
            try:
                async with asyncio.timeout(self.heartbeat_s):
                    await over.wait()
                return
            except TimeoutError:
                pass
            try:
                mine = await self._heartbeat_script(
                    keys=[self.keys.stream], args=[self.keys.group, self.name, d.entry_id])
            except Exception as exc:  # Redis away: the next beat may do
                logger.debug("heartbeat of %s failed: %r", d.entry_id, exc)
                continue
            if not mine:
                logger.warning("entry %s was reclaimed by another worker while running here: "
                               "the job may run twice", d.entry_id)
                return

    async def _end_heartbeat(self, heartbeat: asyncio.Task[None], over: asyncio.Event) -> None:
        over.set()
        # A beat in flight takes a round trip; one stuck on a dead connection is
        # cancelled and left to end on its own (held, so it is not collected).
        await asyncio.wait({heartbeat}, timeout=self.heartbeat_s)
        if not heartbeat.done():
            heartbeat.cancel()

    # --- bookkeeping ------------------------------------------------------------------

    async def _bookkeep(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` to its end even if we are cancelled meanwhile (stop() waits for it)."""
        task = asyncio.create_task(coro)
        self._bookkeeping.add(task)
        task.add_done_callback(self._bookkeeping.discard)
        return await asyncio.shield(task)

    async def _settle(
        self,
        entry_id: str,
        job_id: str | None = None,
        *,
        record: dict[str, Any] | None = None,
        ttl: bool = True,
        action: str = "ack",
        target: str | None = None,
        score: float = 0.0,
        payload: list[Any] | tuple[Any, ...] = (),
        notify: bool = False,
    ) -> int | None:
        """One run of the settle script, retried while Redis is away; never raises.

        Returns what the script returned (1 settled, 0 settled already, 2 the job had
        ended already), or None when it gave up (the entry stays pending: reclaimed).
        """
        pairs = [item for field in (record or {}).items() for item in field]
        ttl_ms = max(1, round(self.result_ttl_s * 1000)) if ttl and job_id else 0
        stream = self.keys.stream
        keys = [stream, self.keys.job(job_id) if job_id else stream,
                self.keys.done(job_id) if job_id else stream, target or stream]
        args = [self.keys.group, entry_id, ttl_ms, action, repr(score), "1" if notify else "0",
                len(pairs), *pairs, *payload]
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.visibility_timeout_s
        failures = 0
        while True:
            try:
                return int(await self._settle_script(keys=keys, args=args))
            except _REDIS_DOWN as exc:
                failures += 1
                if loop.time() >= give_up_at:
                    logger.error("entry %s: could not settle it for %s s (%r); it stays pending "
                                 "and will be reclaimed", entry_id, self.visibility_timeout_s, exc)
                    return None
                await asyncio.sleep(backoff_s(failures, base_s=self.reconnect_base_s,
                                              max_s=self.reconnect_max_s))
            except Exception:
                logger.exception("entry %s: settle failed; it stays pending", entry_id)
                return None

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
    ``queue._raise_if_cancel_lost``).
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + give_up_s
    while tasks and loop.time() < give_up_at:
        for task in tasks:
            task.cancel()
        _, tasks = await asyncio.wait(tasks, timeout=min(0.1, give_up_s))
    return tasks


def _field(fields: dict[Any, Any], name: str) -> Any:
    value = fields.get(name.encode())
    return fields.get(name) if value is None else value


def _error_fields(exc: BaseException, reason: str) -> dict[str, str]:
    tb = "".join(traceback.format_exception(exc))[-_MAX_TRACEBACK_CHARS:]
    return {"error_type": type(exc).__name__, "error": str(exc)[:_MAX_ERROR_CHARS],
            "traceback": tb, "reason": reason}

