"""The worker: runs jobs from a Redis Stream consumer group, reliably.

    registry = TaskRegistry()

    @registry.task(max_attempts=5, timeout_s=30)
    async def resize(image_id: int) -> str: ...

    async with Worker(await connect(), registry, concurrency=10) as worker:
        await stop_requested.wait()          # leaving the block: graceful stop

How each job goes, and what makes it safe:

- read: ``XREADGROUP ... COUNT <free slots> BLOCK <block_s>`` puts the entry in this
  worker's pending list (PEL) before anything runs. Never more than the free slots:
  what is read and not running sits in no local queue where a crash would lose it.
- run: under ``asyncio.timeout`` (the job's ``timeout_s``, the task's, or what is left
  before its deadline); a heartbeat resets the entry's idle time every
  ``heartbeat_s``, so no other worker takes a long job over.
- settle: ONE Lua script acks the entry (XACK + XDEL) and writes what follows: the
  result and status, a retry in the delayed set, a dead letter, the token that wakes
  ``result()``. The script does nothing when XACK acks nothing: a settle retried
  after a lost reply, or one racing a worker that reclaimed the entry, never writes
  twice. (A MULTI could not make the writes depend on XACK's answer.)
- retry: exponential backoff with full jitter (``timeouts.backoff_s``); the next
  attempt waits in a ZSET scored by its due time, and ``Queue.move_due`` (a Lua
  script) puts due ones back into the stream, atomically, whoever runs it.
- reclaim: ``XAUTOCLAIM`` takes over entries idle longer than ``visibility_timeout_s``
  (their worker died); one delivered ``max_deliveries`` times is dead-lettered.
- bad input: an entry that is not a valid job (not JSON, wrong types, unknown
  fields, oversize, no ``job`` field) or names an unregistered task is acked and
  dead-lettered with its reason in one step: never lost, never crashing a worker.
- stop: stop reading, let in-flight jobs finish for ``grace_s``, then cancel them and
  *hand back* each one: re-added to the stream and acked in one step, so another
  worker can start it at once (rather than after a visibility timeout). The attempt
  count is unchanged. If Redis is unreachable then, the entry stays pending and is
  reclaimed later. ``abort()`` stops like a crash (nothing handed back), for tests.
- Redis gone: every loop backs off (``reconnect_base_s`` .. ``reconnect_max_s``) and
  carries on; settles are retried for up to ``visibility_timeout_s``, after which the
  entry is left to be reclaimed (the job may then run twice: at-least-once).

One log line per job transition (logger ``course_lib.distributed.worker``), with the
seconds it queued or ran: ``0.42s → resize(id=…) 1/3``, ``0.51s ← resize(id=…) ok``,
``0.10s ↻ resize(id=…) retry 2/3 in 0.80s: ValueError``, ``0.10s ✗ resize(id=…) dead: …``.
Arguments and results are never logged (they can hold secrets), nor passwords.
"""

from __future__ import annotations

__all__ = ["Worker", "WorkerStats"]

import asyncio
import dataclasses
import enum
import logging
import os
import secrets
import socket
import time
import traceback
from collections.abc import Coroutine
from typing import Any

import redis.asyncio
import redis.exceptions

from ..lifecycle import BackgroundTasks, ShutdownReport
from ..redis import mask_url
from ..timeouts import backoff_s
from .job import MAX_JOB_BYTES, InvalidJob, Job, JobStatus, Task, TaskRegistry, to_json
from .keys import DEFAULT_QUEUE
from .queue import Queue, _raise_if_cancel_lost, _text

logger = logging.getLogger(__name__)

# What "Redis went away" looks like from redis-py: refused, reset, timed out.
_REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
_MAX_ERROR_CHARS = 2000
_MAX_TRACEBACK_CHARS = 8000

_SETTLE = """
-- Settle one delivery in one atomic step: ack it and write what follows from it.
-- KEYS[1] stream, KEYS[2] job record, KEYS[3] done list, KEYS[4] the target:
--   delayed zset ('zadd': a retry), dead-letter stream or the stream itself ('xadd')
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] ttl in ms for record and token (0: none),
-- ARGV[4] action 'ack' | 'zadd' | 'xadd', ARGV[5] zadd score, ARGV[6] '1': push the
-- done token, ARGV[7] n, then n record field/value arguments, then the zadd member
-- or the xadd field/value pairs.
-- Nothing happens unless XACK acks: the delivery was settled already (by us before a
-- lost reply, or by a worker that reclaimed it), and must not be settled twice.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
local n = tonumber(ARGV[7])
if n > 0 then
  local status = redis.call('HGET', KEYS[2], 'status')
  -- A final record stays final: another delivery of this job id ended it first.
  if status == 'done' or status == 'failed' or status == 'dead' then return 2 end
  redis.call('HSET', KEYS[2], unpack(ARGV, 8, 7 + n))
  if ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
end
local rest = 8 + n
if ARGV[4] == 'zadd' then
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[rest])
elseif ARGV[4] == 'xadd' then
  redis.call('XADD', KEYS[4], '*', unpack(ARGV, rest, #ARGV))
end
if ARGV[6] == '1' then
  redis.call('LPUSH', KEYS[3], 'done')
  if ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
end
return 1
"""

_START = """
-- KEYS[1] job record; ARGV: worker, started_at, attempt, max_attempts, task, enqueued_at
-- Returns the status when the job already ended (a duplicate entry), else marks it running.
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'done' or status == 'failed' or status == 'dead' then return status end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[2],
           'attempt', ARGV[3], 'max_attempts', ARGV[4], 'task', ARGV[5], 'enqueued_at', ARGV[6])
redis.call('HDEL', KEYS[1], 'next_at')
return false
"""

_HEARTBEAT = """
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id
-- Reset the entry's idle time, but only while it is still ours: a bare XCLAIM would
-- take it back from a worker that reclaimed it meanwhile.
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2]) == 0 then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerStats:
    """Counts of one worker since it started, and of its queue in Redis now.

    ``processed``: jobs it completed; ``failed``, ``retried``, ``dead``: attempts that
    ended so; ``handed_back``: jobs returned at stop; ``reclaimed``: entries taken over
    from dead workers. Queue-wide: ``pending`` (delivered, unsettled), ``lag`` (not
    yet delivered), ``delayed`` (retries waiting), ``dead_letters``.
    """

    processed: int
    failed: int
    retried: int
    dead: int
    handed_back: int
    reclaimed: int
    in_flight: int
    pending: int
    lag: int
    delayed: int
    dead_letters: int


class _State(enum.Enum):
    NEW = "new"  # made, start() not called
    RUNNING = "running"  # reading and running jobs
    STOPPING = "stopping"  # stop() or abort() running: no more reads
    STOPPED = "stopped"  # nothing left running


@dataclasses.dataclass(slots=True)
class _Delivery:
    """One entry this worker holds in its PEL, and how far it got."""

    entry_id: str
    fields: dict[Any, Any]
    raw: Any = None  # the entry's ``job`` field, as read
    job: Job | None = None
    started: float | None = None  # loop time the attempt began
    settling: bool = False  # a settle has begun: a cancel must not hand it back


class Worker:
    """Run registered tasks from a queue's stream, with retries, reclaim and graceful stop.

        async with Worker(redis, registry, queue="images", concurrency=8) as worker:
            ...
            print(await worker.stats())

    The Redis client is the caller's (not closed here). Several workers, in one
    process or many, share a queue through its consumer group ``workers``; each
    needs a distinct ``name`` (default: host-pid-random).
    """

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        registry: TaskRegistry,
        *,
        queue: str = DEFAULT_QUEUE,
        name: str | None = None,
        concurrency: int = 10,
        batch_size: int | None = None,
        visibility_timeout_s: float = 30.0,
        heartbeat_s: float | None = None,
        block_s: float = 1.0,
        maintenance_s: float | None = None,
        retry_base_s: float = 1.0,
        retry_max_s: float = 300.0,
        retry_jitter: str = "full",
        result_ttl_s: float = 24 * 3600.0,
        max_deliveries: int = 5,
        grace_s: float = 10.0,
        cancel_timeout_s: float = 5.0,
        reconnect_base_s: float = 0.1,
        reconnect_max_s: float = 5.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {concurrency!r}")
        if not 0 < block_s < visibility_timeout_s:
            # A finite BLOCK, never 0: fakeredis never unblocks a reader whose client
            # died, and stop() waits for the read in flight to return.
            raise ValueError(f"block_s must be > 0 and below visibility_timeout_s: {block_s!r}")
        heartbeat_s = visibility_timeout_s / 3 if heartbeat_s is None else heartbeat_s
        if not 0 < heartbeat_s < visibility_timeout_s:
            raise ValueError(f"heartbeat_s must be > 0 and below visibility_timeout_s "
                             f"({visibility_timeout_s}), not {heartbeat_s!r}")
        backoff_s(1, base_s=retry_base_s, max_s=retry_max_s, jitter=retry_jitter)  # checks them
        self.redis = redis
        self.registry = registry
        self.queue = Queue(redis, queue)
        self.keys = self.queue.keys
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"
        self.concurrency = concurrency
        self.batch_size = min(batch_size or concurrency, concurrency)
        self.visibility_timeout_s = visibility_timeout_s
        self.heartbeat_s = heartbeat_s
        self.block_s = block_s
        self.maintenance_s = (min(1.0, visibility_timeout_s / 2) if maintenance_s is None
                              else maintenance_s)
        self.retry_base_s = retry_base_s
        self.retry_max_s = retry_max_s
        self.retry_jitter = retry_jitter
        self.result_ttl_s = result_ttl_s
        self.max_deliveries = max_deliveries
        self.grace_s = grace_s
        self.cancel_timeout_s = cancel_timeout_s
        self.reconnect_base_s = reconnect_base_s
        self.reconnect_max_s = reconnect_max_s
        self.report: ShutdownReport | None = None  # set by stop()
        self._settle_script = redis.register_script(_SETTLE)
        self._start_script = redis.register_script(_START)
        self._heartbeat_script = redis.register_script(_HEARTBEAT)
        self._state = _State.NEW
        self._aborting = False
        self._stop_requested = asyncio.Event()
        self._stopped = asyncio.Event()
        self._wake = asyncio.Event()  # a slot was freed, or a stop requested
        self._nudge = asyncio.Event()  # a retry was scheduled, or a stop requested
        self._free = concurrency
        self._jobs = BackgroundTasks(name=f"worker {self.name}", grace_s=grace_s,
                                     cancel_timeout_s=cancel_timeout_s)
        self._bookkeeping: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._holding: set[str] = set()  # entry ids running here
        self._claim_cursor = "0-0"
        self._down_since: float | None = None
        self._counts = dict.fromkeys(
            ("processed", "failed", "retried", "dead", "handed_back", "reclaimed"), 0)

    def __repr__(self) -> str:
        return (f"<Worker {self.name!r} queue={self.queue.name!r} {self._state.value}, "
                f"{len(self._jobs)}/{self.concurrency} running>")

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Join the consumer group (creating it and the stream if needed), start reading."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"{self!r} cannot be started again")
        await self._ensure_group()
        self._state = _State.RUNNING
        self._loops = [
            asyncio.create_task(self._read_loop(), name=f"{self.name} read"),
            asyncio.create_task(self._maintain_loop(), name=f"{self.name} maintain"),
        ]
        logger.info("worker %s on %s, queue %r: tasks %s, concurrency %d", self.name,
                    _describe(self.redis), self.queue.name, sorted(self.registry),
                    self.concurrency)

    async def stop(self, grace_s: float | None = None) -> ShutdownReport:
        """Stop reading, give running jobs ``grace_s``, cancel and hand back the rest.

        Returns the report of the jobs that were running (finished; cancelled, i.e.
        handed back; stuck...). A second call waits for the first and returns its report.
        """
        if self._state is _State.NEW:
            self._state = _State.STOPPED
            self.report = ShutdownReport()
            self._stopped.set()
        if self._state is not _State.RUNNING:
            await self._stopped.wait()
            assert self.report is not None
            return self.report
        self._state = _State.STOPPING
        grace_s = self.grace_s if grace_s is None else grace_s
        logger.info("worker %s stopping: %d running, grace %s s", self.name, len(self._jobs),
                    grace_s)
        try:
            self._request_stop()
            await self._wait_loops()  # the read in flight returns within block_s
            self.report = await self._jobs.close(grace_s,
                                                 cancel_timeout_s=self.cancel_timeout_s)
            await self._end_bookkeeping()
            await self._leave_group()
        finally:
            self.report = self.report or ShutdownReport()
            self._state = _State.STOPPED
            self._stopped.set()
        logger.info("worker %s stopped: %s", self.name, self.report)
        return self.report

    async def abort(self) -> None:
        """Stop as a crash would: cancel everything, hand nothing back, ack nothing.

        What it held stays pending in its PEL until another worker reclaims it after
        ``visibility_timeout_s``. For tests and the failure lab of chapter 4.
        """
        if self._state is not _State.RUNNING:
            await self.stop()  # not started: nothing to abort; stopping: wait for it
            return
        self._aborting = True
        self._state = _State.STOPPING
        try:
            self._request_stop()
            for task in list(self._bookkeeping):
                task.cancel()
            self.report = await self._jobs.close(0, cancel_timeout_s=self.cancel_timeout_s)
            await self._end_bookkeeping()
            # The read in flight is left to return (within block_s) rather than cancelled:
            # what it brings is dropped unrun, in this consumer's PEL, as after a crash.
            await self._wait_loops()
        finally:
            self._state = _State.STOPPED
            self._stopped.set()
        logger.warning("worker %s aborted: what it held waits for reclaim", self.name)

    def _request_stop(self) -> None:
        self._stop_requested.set()
        self._wake.set()  # the reader, if it waits for a slot
        self._nudge.set()  # the maintenance loop, if it sleeps

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        await self.stop()

    async def stats(self) -> WorkerStats:
        """This worker's counters, plus the queue's pending, lag, delayed and dead counts."""
        counts = await self.queue.counts()
        return WorkerStats(**self._counts, in_flight=len(self._jobs), pending=counts.pending,
                           lag=counts.lag, delayed=counts.delayed, dead_letters=counts.dead)

    # --- reading --------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Take free slots; fill them from dead workers' entries, then from new ones.

        Reclaiming runs here, not in a loop of its own: the slots a read has taken are
        the only ones, so reclaimed and new entries together never exceed them.
        """
        loop = asyncio.get_running_loop()
        failures = 0
        next_reclaim = loop.time()
        while not self._stop_requested.is_set():
            taken = await self._take_slots(self.batch_size)
            if not taken:
                break
            used = 0
            try:
                if loop.time() >= next_reclaim:
                    next_reclaim = loop.time() + self.maintenance_s
                    used += await self._reclaim(taken)
                if used < taken:
                    reply = await self.redis.xreadgroup(
                        self.keys.group, self.name, {self.keys.stream: ">"},
                        count=taken - used, block=max(1, round(self.block_s * 1000)),
                    )  # fmt: skip
                    if not self._aborting:  # else a "crash": they stay in our PEL, unrun
                        for entry_id, fields in _entries(reply):
                            self._spawn(_text(entry_id), fields)
                            used += 1
                self._redis_up()
                failures = 0
            except Exception as exc:
                failures += 1
                await self._after_error(exc, failures, "reading")
            finally:
                self._release(taken - used)

    async def _maintain_loop(self) -> None:
        """Move due retries back to the stream, in time for each."""
        failures = 0
        while not self._stop_requested.is_set():
            self._nudge.clear()  # before reading the delayed set: a later nudge is kept
            try:
                while await self.queue.move_due(limit=100) == 100:
                    pass
                wait_s = self.maintenance_s
                soonest = await self.redis.zrange(self.keys.delayed, 0, 0, withscores=True)
                if soonest:  # wake for the next retry, not at the next tick only
                    wait_s = min(wait_s, max(0.0, soonest[0][1] - time.time()))
                failures = 0
                self._redis_up()
            except Exception as exc:
                failures += 1
                await self._after_error(exc, failures, "maintaining")
                continue
            await self._sleep(wait_s, self._nudge)

    async def _reclaim(self, slots: int) -> int:
        """XAUTOCLAIM up to ``slots`` entries idle past the visibility timeout; how many run."""
        reply = await self.redis.xautoclaim(
            self.keys.stream, self.keys.group, self.name,
            min_idle_time=max(1, round(self.visibility_timeout_s * 1000)),
            start_id=self._claim_cursor, count=slots,
        )  # fmt: skip
        self._claim_cursor = _text(reply[0])
        # Redis 6.2 returns deleted entries with no fields; 7 lists them apart. An
        # entry still running here (our heartbeat failed) is ours already: the claim
        # only reset its idle time.
        claimed = [(_text(i), f) for i, f in reply[1] if f and _text(i) not in self._holding]
        if not claimed:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in claimed:
                pipe.xpending_range(self.keys.stream, self.keys.group, entry_id, entry_id, 1)
            pending = await pipe.execute()
        if self._aborting:
            return 0  # a "crash": they stay in our PEL, unrun
        for (entry_id, fields), info in zip(claimed, pending, strict=True):
            deliveries = int(info[0]["times_delivered"]) if info else 0
            self._counts["reclaimed"] += 1
            logger.warning("reclaimed entry %s, idle over %s s (delivery %d)", entry_id,
                           self.visibility_timeout_s, deliveries)
            if deliveries > self.max_deliveries:
                reason = (f"delivered {deliveries} times, never settled: it may crash or "
                          "hang the workers that take it")
                self._spawn(entry_id, fields, poison=reason)
            else:
                self._spawn(entry_id, fields)
        return len(claimed)

    # --- slots ----------------------------------------------------------------------

    async def _take_slots(self, want: int) -> int:
        """Up to ``want`` free slots, waiting for one; 0 once a stop is requested."""
        while not self._free and not self._stop_requested.is_set():
            self._wake.clear()
            await self._wake.wait()
        return 0 if self._stop_requested.is_set() else self._try_take_slots(want)

    def _try_take_slots(self, want: int) -> int:
        taken = min(want, self._free)  # no await between the check and the take
        self._free -= taken
        return taken

    def _release(self, slots: int) -> None:
        if slots:
            self._free += slots
            self._wake.set()

    def _spawn(self, entry_id: str, fields: dict[Any, Any], *, poison: str | None = None) -> None:
        """Run one entry as a task; it owns one slot, already taken."""
        delivery = _Delivery(entry_id, fields)
        self._holding.add(entry_id)
        self._jobs.spawn(self._run_entry(delivery, poison), name=f"{self.name} {entry_id}")

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

    async def _wait_loops(self) -> None:
        if self._loops:
            await asyncio.wait(self._loops)
            for task in self._loops:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("worker %s: %s failed", self.name, task.get_name(),
                                 exc_info=task.exception())

    # --- Redis housekeeping -----------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            # From id 0, not $: entries enqueued before any worker existed are jobs too.
            await self.redis.xgroup_create(self.keys.stream, self.keys.group, id="0",
                                           mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _leave_group(self) -> None:
        """Delete this consumer from the group when it holds nothing (tidy XINFO output)."""
        try:
            mine = await self.redis.xpending_range(self.keys.stream, self.keys.group, "-", "+",
                                                   1, consumername=self.name)
            if not mine:
                await self.redis.xgroup_delconsumer(self.keys.stream, self.keys.group, self.name)
        except Exception as exc:
            logger.debug("worker %s: could not leave the group: %r", self.name, exc)

    async def _after_error(self, exc: Exception, failures: int, doing: str) -> None:
        """Log an error of a loop once per outage, recreate a lost group, back off."""
        if isinstance(exc, redis.exceptions.ResponseError) and "NOGROUP" in str(exc):
            # The stream or group is gone (FLUSHALL, a restart without persistence).
            logger.warning("worker %s: consumer group missing while %s; recreating it",
                           self.name, doing)
            try:
                await self._ensure_group()
                return
            except Exception as again:
                exc = again
        if isinstance(exc, _REDIS_DOWN):
            if self._down_since is None:
                self._down_since = time.monotonic()
                logger.warning("worker %s: Redis unreachable at %s while %s (%s: %s); "
                               "retrying with backoff", self.name, _describe(self.redis), doing,
                               type(exc).__name__, exc)
        else:
            logger.error("worker %s: error while %s", self.name, doing, exc_info=exc)
        await self._sleep(backoff_s(failures, base_s=self.reconnect_base_s,
                                    max_s=self.reconnect_max_s))

    def _redis_up(self) -> None:
        if self._down_since is not None:
            logger.warning("worker %s: Redis reachable again after %.1f s", self.name,
                           time.monotonic() - self._down_since)
            self._down_since = None

    async def _sleep(self, delay_s: float, wake: asyncio.Event | None = None) -> None:
        """Sleep ``delay_s``, or less when ``wake`` (default: the stop request) is set."""
        try:
            async with asyncio.timeout(delay_s):
                await (wake or self._stop_requested).wait()
        except TimeoutError:
            pass


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


def _entries(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """The entries of an XREADGROUP reply, in RESP2 ([[stream, entries]]) or RESP3 ({})."""
    if not reply:
        return []
    streams = reply.items() if isinstance(reply, dict) else reply
    out = []
    for _, entries in streams:
        out.extend((entry_id, fields or {}) for entry_id, fields in entries)
    return out


def _field(fields: dict[Any, Any], name: str) -> Any:
    value = fields.get(name.encode())
    return fields.get(name) if value is None else value


def _error_fields(exc: BaseException, reason: str) -> dict[str, str]:
    tb = "".join(traceback.format_exception(exc))[-_MAX_TRACEBACK_CHARS:]
    return {"error_type": type(exc).__name__, "error": str(exc)[:_MAX_ERROR_CHARS],
            "traceback": tb, "reason": reason}


def _describe(client: redis.asyncio.Redis) -> str:
    """Where the client points, for logs: a URL without password, or 'fakeredis'."""
    kw = getattr(client.connection_pool, "connection_kwargs", {})
    if "server" in kw or type(client).__module__.startswith("fakeredis"):
        return "fakeredis"
    if "path" in kw:
        return mask_url(f"unix://{kw['path']}?db={kw.get('db', 0)}")
    return mask_url(f"redis://{kw.get('host', '?')}:{kw.get('port', 6379)}/{kw.get('db', 0)}")
