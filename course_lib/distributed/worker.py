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
- start: one Lua script marks the jobs of a read running (status, worker,
  started_at), or finds a job ended already (a duplicate entry: acked, not run).
- run: under ``asyncio.timeout`` (the job's ``timeout_s``, else the task's, else the
  worker's ``default_timeout_s``; capped by what is left before its deadline): a task
  that hangs would heartbeat for ever, never reclaimed, its slot taken. Every
  ``heartbeat_s`` one heartbeat resets the idle time of all the entries the worker
  runs, so no other worker takes a long job over, and reports any that one did take.
- settle: ONE Lua script writes what follows from the attempt (the result and
  status, a retry in the delayed set, a dead letter, the token that wakes
  ``result()``) and acks the entry (XACK + XDEL), last, so a write that fails leaves
  it pending. Nothing happens for an entry that is no longer pending: a settle
  retried after a lost reply, or one racing a worker that reclaimed the entry, never
  writes twice. (A MULTI could not make the writes depend on that check.) Jobs that
  end in the same turn of the event loop are settled by one call of the script.
- retry: exponential backoff with full jitter (``timeouts.backoff_s``); the next
  attempt waits in a ZSET scored by its due time, and ``Queue.move_due`` (a Lua
  script) puts due ones back into the stream, atomically, whoever runs it.
- reclaim: ``XAUTOCLAIM`` takes over entries idle longer than ``visibility_timeout_s``
  (their worker died); one delivered ``max_deliveries`` times is dead-lettered.
- Redis out of memory (``maxmemory`` reached; a queue needs ``noeviction``): running
  jobs still settle (SETTLE runs with ``allow-oom`` on Redis 7), a read whose jobs
  cannot be marked running is held, beaten and retried with backoff (no more reads
  meanwhile), so a delivery counts a worker lost, never a refusal; a worker restarts
  when its group exists. Clients get ``QueueFull`` from enqueue.
- bad input: an entry that is not a valid job (not JSON, wrong types, unknown
  fields, oversize, no ``job`` field) or names an unregistered task is acked and
  dead-lettered with its reason in one step: never lost, never crashing a worker.
- stop: stop reading, let in-flight jobs finish for ``grace_s``, then cancel them and
  *hand back* each one: re-added to the stream and acked in one step, so another
  worker can start it at once (rather than after a visibility timeout). The attempt
  count is unchanged. If Redis is unreachable then, the entry stays pending and is
  reclaimed later. A read that has not returned ``block_s + cancel_timeout_s`` after
  the stop request (a connection gone silent) is cancelled. The stop runs in a task
  of its own: a caller that gives up on ``stop()`` (cancelled, timed out) leaves it
  going, heartbeat included, and a second ``stop()`` waits for it. ``abort()`` stops
  like a crash (nothing handed back), for tests.
- bounded: the stream holds what is queued or running, no more (each settle deletes
  its entry: a work buffer, not a log; see ``keys``). The dead-letter stream keeps
  about ``max_dead_letters`` letters (default 10,000; ``None``: all): each new letter
  trims the oldest, in whole nodes of the stream (``MAXLEN ~``), for good, while their
  job records stay dead until they expire. A crashed worker's consumer leaves the group
  once it has been idle ``idle_consumer_s`` (default: 10 visibility timeouts, at least
  an hour) holding no entry; one that holds entries stays until they are reclaimed.
- a cancel from outside: a job's task cancelled by anyone but the worker (aiomonitor's
  ``cancel``) is the job's failed attempt, "cancelled from outside the worker":
  retried or dead-lettered, not handed back (read again, it would hang again). Once a
  stop has begun, every cancel counts as the stop's.
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
import math
import os
import secrets
import socket
import time
from collections.abc import Coroutine
from typing import Any

import redis.asyncio
import redis.exceptions

from ..lifecycle import BackgroundTasks, ShutdownReport
from ..redis import mask_url
from ..timeouts import backoff_s
from . import scripts
from .job import TaskRegistry
from .keys import DEFAULT_QUEUE
from .periodic import Scheduler
from .queue import Queue, _out_of_memory, _text
from .running import (
    _REDIS_DOWN,
    _cancel_until_done,
    _Delivery,
    _Running,
    _Settle,
)

logger = logging.getLogger(__name__)

# A command that does not block and has not returned in this long meets a server that
# is frozen (SIGSTOP, overloaded) or cut off. The maintenance loop, which sends only
# such commands, bounds each by it: it logs the outage once and retries. The read's
# BLOCK and the rest wait on (no socket_timeout): they go on when the server does.
ANSWER_TIMEOUT_S = 5.0


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


class Worker(_Running):
    """Run registered tasks from a queue's stream, with retries, reclaim and graceful stop.

        async with Worker(redis, registry, queue="images", concurrency=8) as worker:
            ...
            print(await worker.stats())

    The Redis client is the caller's (not closed here). Several workers, in one
    process or many, share a queue through its consumer group ``workers``; each
    needs a distinct ``name`` (default: host-pid-random). ``default_timeout_s`` bounds
    each attempt of a job that sets no ``timeout_s`` and whose task sets none (default
    300 s; ``None`` or ``inf``: unbounded, a hung task then holds its slot for ever).
    A registry with periodic schedules (``registry.every``) makes it run a ``Scheduler``
    too (``worker.scheduler``; see ``periodic``): each tick is enqueued once across workers.
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
        max_dead_letters: int | None = 10_000,
        idle_consumer_s: float | None = None,
        default_timeout_s: float | None = 300.0,
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
        if max_dead_letters is not None and max_dead_letters < 1:
            raise ValueError(f"max_dead_letters must be >= 1 or None (keep all), not "
                             f"{max_dead_letters!r}")
        idle_consumer_s = (max(10 * visibility_timeout_s, 3600.0) if idle_consumer_s is None
                           else idle_consumer_s)
        if not idle_consumer_s > 0:
            raise ValueError(f"idle_consumer_s must be > 0, not {idle_consumer_s!r}")
        if default_timeout_s is not None and not (
                isinstance(default_timeout_s, (int, float))
                and not isinstance(default_timeout_s, bool) and default_timeout_s > 0):
            raise ValueError(f"default_timeout_s must be a number > 0 or None, not "
                             f"{default_timeout_s!r}")
        self.redis = redis
        self.registry = registry
        self.queue = Queue(redis, queue)
        self.keys = self.queue.keys
        self._job_key, self._done_key = self.keys.job("").encode(), self.keys.done("").encode()
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
        self.max_dead_letters = max_dead_letters
        self.idle_consumer_s = idle_consumer_s
        # A job with no timeout_s of its own, nor its task, runs at most this long (inf: None).
        self.default_timeout_s = None if default_timeout_s == math.inf else default_timeout_s
        self.grace_s = grace_s
        self.cancel_timeout_s = cancel_timeout_s
        self.reconnect_base_s = reconnect_base_s
        self.reconnect_max_s = reconnect_max_s
        self.report: ShutdownReport | None = None  # set by stop()
        # Enqueues the ticks of the registry's periodic jobs, once each across workers.
        self.scheduler = (Scheduler(self.queue, registry, result_ttl_s=result_ttl_s,
                                    retry_s=reconnect_max_s) if registry.periodic else None)
        self._settle_script = scripts.Script(redis, scripts.SETTLE, flags=scripts.SETTLE_FLAGS)
        self._start_script = scripts.Script(redis, scripts.START)
        self._heartbeat_script = scripts.Script(redis, scripts.HEARTBEAT)
        self._forget_script = scripts.Script(redis, scripts.FORGET_CONSUMERS)
        self._state = _State.NEW
        self._aborting = False
        self._stop_requested = asyncio.Event()
        self._stopping: asyncio.Task[ShutdownReport] | None = None  # the stop (or abort)
        self._wake = asyncio.Event()  # a slot was freed, or a stop requested
        self._nudge = asyncio.Event()  # a retry was scheduled, or a stop requested
        self._free = concurrency
        self._jobs = BackgroundTasks(name=f"worker {self.name}", grace_s=grace_s,
                                     cancel_timeout_s=cancel_timeout_s)
        self._bookkeeping: set[asyncio.Task[Any]] = set()  # settles being sent
        self._settles: list[_Settle] = []  # settles of this turn, not sent yet
        self._loops: list[asyncio.Task[None]] = []
        self._heartbeat: asyncio.Task[None] | None = None
        self._beating_over = asyncio.Event()
        self._holding: dict[str, _Delivery] = {}  # entries running here, by id
        self._prefetched: list[tuple[str, Any, None]] = []  # read by a settle, not started
        self._prefetching = False  # a settle that reads too is in flight
        self._prefetch_over = asyncio.Event()
        self._parked = False  # the reader waits for a free slot
        self._next_reclaim = 0.0  # loop time
        self._next_forget = 0.0  # loop time: when to look for consumers to forget
        self._claim_cursor = "0-0"
        self._down_since: float | None = None
        self._wrong_key = False  # the stream key holds another type: said once
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
        if self.scheduler is not None:  # the registry's periodic jobs (periodic.py)
            self._loops.append(asyncio.create_task(self.scheduler.run(self._stop_requested),
                                                   name=f"{self.name} schedule"))
        # Apart from the loops above: it beats on while stop() lets running jobs finish.
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(),
                                              name=f"{self.name} heartbeat")
        logger.info("worker %s on %s, queue %r: tasks %s, concurrency %d", self.name,
                    _describe(self.redis), self.queue.name, sorted(self.registry),
                    self.concurrency)

    async def stop(self, grace_s: float | None = None) -> ShutdownReport:
        """Stop reading, give running jobs ``grace_s``, cancel and hand back the rest.

        Returns the report of the jobs that were running (finished; cancelled, i.e.
        handed back; stuck...). A second call waits for the first and returns its report.
        The stop runs in a task of its own: if the caller is cancelled meanwhile (a
        timeout around the shutdown, a second Ctrl-C), it goes on all the same, so no
        job is left running without a heartbeat; call ``stop()`` again to wait for it.
        """
        if self._stopping is None:
            if self._state is not _State.RUNNING:  # never started: nothing to stop
                self._state = _State.STOPPED
                self.report = self.report or ShutdownReport()
                return self.report
            grace_s = self.grace_s if grace_s is None else grace_s
            if grace_s < 0:
                raise ValueError(f"grace_s must be >= 0, not {grace_s!r}")
            self._begin_stopping(self._shut_down(grace_s))
        assert self._stopping is not None
        # shield: a cancel aimed at this caller does not reach the stop itself.
        return await asyncio.shield(self._stopping)

    async def abort(self) -> None:
        """Stop as a crash would: cancel everything, hand nothing back, ack nothing.

        What it held stays pending in its PEL until another worker reclaims it after
        ``visibility_timeout_s``. For tests and the failure lab of chapter 4. When a
        stop is under way already, it waits for that one.
        """
        if self._stopping is None and self._state is _State.RUNNING:
            self._aborting = True
            self._begin_stopping(self._crash())
        await self.stop()  # not started: nothing to abort; stopping: wait for it

    def _begin_stopping(self, shutdown: Coroutine[Any, Any, ShutdownReport]) -> None:
        self._state = _State.STOPPING
        self._stopping = asyncio.create_task(shutdown, name=f"{self.name} stop")
        self._stopping.add_done_callback(self._log_if_stop_failed)

    def _log_if_stop_failed(self, task: asyncio.Task[ShutdownReport]) -> None:
        # Retrieved here too: a caller cancelled meanwhile will never see it.
        if not task.cancelled() and task.exception() is not None:
            logger.error("worker %s: stopping failed", self.name, exc_info=task.exception())

    async def _shut_down(self, grace_s: float) -> ShutdownReport:
        """The graceful stop, in the task ``stop()`` starts and every later call awaits."""
        logger.info("worker %s stopping: %d running, grace %s s", self.name, len(self._jobs),
                    grace_s)
        try:
            self._request_stop()
            await self._wait_loops()
            self.report = await self._jobs.close(grace_s,
                                                 cancel_timeout_s=self.cancel_timeout_s)
            await self._end_bookkeeping()
            await self._end_heartbeat()
            await self._leave_group()
        finally:
            self._beating_over.set()  # if we got here early: the heartbeat ends too
            self.report = self.report or ShutdownReport()
            self._state = _State.STOPPED
        logger.info("worker %s stopped: %s", self.name, self.report)
        return self.report

    async def _crash(self) -> ShutdownReport:
        """What ``abort()`` runs, in the task ``stop()`` would."""
        try:
            self._request_stop()
            for task in list(self._bookkeeping):
                task.cancel()
            self.report = await self._jobs.close(0, cancel_timeout_s=self.cancel_timeout_s)
            self._settles.clear()  # a crash settles nothing more
            await self._end_bookkeeping()
            await self._end_heartbeat()
            # The read in flight is left to return (within block_s; cancelled if Redis does
            # not answer): what it brings is dropped unrun, in this consumer's PEL, as
            # after a crash.
            await self._wait_loops()
        finally:
            self._beating_over.set()
            self.report = self.report or ShutdownReport()
            self._state = _State.STOPPED
        logger.warning("worker %s aborted: what it held waits for reclaim", self.name)
        return self.report

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
        return WorkerStats(**self.local_counts(), pending=counts.pending,
                           lag=counts.lag, delayed=counts.delayed, dead_letters=counts.dead)

    def local_counts(self) -> dict[str, int]:
        """This worker's own counters and ``in_flight``, without asking Redis.

        Safe to call from another thread (a metrics scrape): one copy of the counters
        under the GIL, so the figures are consistent with each other.
        """
        counts = dict(self._counts)
        counts["in_flight"] = len(self._jobs)
        return counts

    # --- reading --------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Take free slots; fill them from dead workers' entries, then from new ones.

        Reclaiming runs here, not in a loop of its own: the slots a read has taken are
        the only ones, so reclaimed and new entries together never exceed them.
        """
        loop = asyncio.get_running_loop()
        failures = 0
        self._next_reclaim = loop.time()
        while not self._stop_requested.is_set():
            taken = await self._take_slots(self.batch_size)
            if not taken:
                break
            used = 0
            try:
                if self._prefetched:  # read by a settle, for the slots it freed
                    batch = self._prefetched[:taken]
                    del self._prefetched[:taken]
                    used += await self._start(batch)
                if used < taken and loop.time() >= self._next_reclaim:
                    self._next_reclaim = loop.time() + self.maintenance_s
                    used += await self._reclaim(taken - used)
                if used < taken and self._prefetching:
                    used += await self._start_when_read(taken - used)
                if used < taken:
                    reply = await self.redis.xreadgroup(
                        self.keys.group, self.name, {self.keys.stream: ">"},
                        count=taken - used, block=max(1, round(self.block_s * 1000)),
                    )  # fmt: skip
                    if not self._aborting:  # else a "crash": they stay in our PEL, unrun
                        used += await self._start(
                            [(_text(entry_id), fields, None) for entry_id, fields in
                             _entries(reply)])
                self._redis_up(read=True)
                failures = 0
            except Exception as exc:
                failures += 1
                await self._after_error(exc, failures, "reading")
            finally:
                self._release(taken - used)
        await self._start_prefetched()

    async def _maintain_loop(self) -> None:
        """Move due retries back to the stream, in time for each."""
        failures = 0
        while not self._stop_requested.is_set():
            self._nudge.clear()  # before reading the delayed set: a later nudge is kept
            try:
                while await _answered(self.queue.move_due(limit=100)) == 100:
                    pass
                wait_s = self.maintenance_s
                soonest = await _answered(
                    self.redis.zrange(self.keys.delayed, 0, 0, withscores=True))
                if soonest:  # wake for the next retry, not at the next tick only
                    wait_s = min(wait_s, max(0.0, soonest[0][1] - time.time()))
                if asyncio.get_running_loop().time() >= self._next_forget:
                    await self._forget_idle_consumers()
                failures = 0
                self._redis_up()
            except Exception as exc:
                failures += 1
                await self._after_error(exc, failures, "maintaining")
                continue
            await self._sleep(wait_s, self._nudge)

    async def _forget_idle_consumers(self) -> None:
        """Delete the consumers idle over ``idle_consumer_s`` that hold nothing: crashed workers'.

        A stopped worker leaves the group (``_leave_group``); one that crashed stays in it
        for ever otherwise, listed by XINFO and counted by ``stats``. Runs at start and
        every tenth of ``idle_consumer_s`` (at least every ``maintenance_s``). One that
        holds entries stays (deleting a consumer drops its pending entries: those jobs
        would never run): its entries are reclaimed first, then it goes. Never this
        worker. A live worker deleted all the same (no read for that long) is created
        again by its next read, as at its first.
        """
        loop = asyncio.get_running_loop()
        self._next_forget = loop.time() + max(self.maintenance_s, self.idle_consumer_s / 10)
        try:
            rows = await self.redis.xinfo_consumers(self.keys.stream, self.keys.group)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" in str(exc) or "no such key" in str(exc):
                return  # nothing to forget; the reader recreates the group
            raise
        idle_ms = self.idle_consumer_s * 1000
        names = [row["name"] for row in rows if int(row["pending"]) == 0
                 and int(row["idle"]) >= idle_ms and _text(row["name"]) != self.name]
        if not names:
            return
        gone = await self._forget_script(keys=[self.keys.stream],
                                         args=[self.keys.group, *names])
        for name in gone:
            logger.info("worker %s: consumer %s left the group: idle over %s s, holding "
                        "nothing (a crashed worker's)", self.name, _text(name),
                        self.idle_consumer_s)

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
        batch: list[tuple[str, dict[Any, Any], str | None]] = []
        for (entry_id, fields), info in zip(claimed, pending, strict=True):
            deliveries = int(info[0]["times_delivered"]) if info else 0
            self._counts["reclaimed"] += 1
            logger.warning("reclaimed entry %s, idle over %s s (delivery %d)", entry_id,
                           self.visibility_timeout_s, deliveries)
            poison = None
            if deliveries > self.max_deliveries:
                poison = (f"delivered {deliveries} times, never settled: it may crash or "
                          "hang the workers that take it")
            batch.append((entry_id, fields, poison))
        return await self._start(batch)

    # --- reading with a settle ---------------------------------------------------------

    def _prefetch_count(self, settling: int) -> int:
        """How many new entries a settle of ``settling`` deliveries reads too (0: none).

        When every slot is taken and the reader waits for some, a settle frees
        ``settling`` slots: the same round trip can refill them, the settle script
        reading once it has settled, so the pending list never holds more than
        ``concurrency`` entries. Not when stopping, nor when a reclaim is due.
        """
        if (not self._parked or self._prefetched or self._prefetching
                or self._stop_requested.is_set()
                or asyncio.get_running_loop().time() >= self._next_reclaim):
            return 0
        return min(settling, self.batch_size)

    async def _settle_and_read(self, keys: list[Any], args: list[Any], count: int) -> Any:
        """The settle script's reply; and up to ``count`` new entries, read in one round trip.

        The script reads them itself, after settling, so that nothing is read when the
        settle does not run (see ``scripts.SETTLE``). The entries wait in
        ``_prefetched`` for the reader, which starts them in the slots this settle frees.
        """
        self._prefetching = True
        try:
            codes, reply = await self._settle_script(keys=keys, args=[*args, self.name, count])
        finally:
            self._prefetching = False
            self._prefetch_over.set()
        if not self._aborting:  # else a "crash": they stay in our PEL, unrun
            self._prefetched += [(_text(i), fields, None) for i, fields in _read_in_script(reply)]
        return codes

    async def _start_when_read(self, slots: int) -> int:
        """Wait for the settle that reads, in flight; start up to ``slots`` of its entries.

        It was sent while the reader waited for a slot, and another settle freed one
        first. Its read may take the last entries of the stream: a BLOCK read now would
        find none and wait ``block_s`` while they sat here, unstarted (chapter 4's chart:
        ``resize(6)`` ~100 ms late). Its reply comes within a round trip; the wait is
        bounded by ``block_s`` all the same, as the read it replaces.
        """
        self._prefetch_over.clear()  # no await since _prefetching was seen: set later
        await self._sleep(self.block_s, self._prefetch_over)
        batch = self._prefetched[:slots]
        del self._prefetched[:slots]
        return await self._start(batch) if batch else 0

    async def _start_prefetched(self) -> None:
        """At stop: start what a last settle read (run in the grace period, or handed back).

        What arrives later, or when Redis is away, stays pending: reclaimed later.
        """
        if self._prefetching:
            self._prefetch_over.clear()
            await self._sleep(self.cancel_timeout_s, self._prefetch_over)
        batch, self._prefetched = self._prefetched, []
        if batch and not self._aborting:
            self._free -= len(batch)  # the slots their settle freed
            used = 0
            try:
                used = await self._start(batch)
            except Exception as exc:
                logger.warning("worker %s: %d entries read at stop stay pending (%r)",
                               self.name, len(batch), exc)
            finally:
                self._release(len(batch) - used)

    # --- slots ----------------------------------------------------------------------

    async def _take_slots(self, want: int) -> int:
        """Up to ``want`` free slots, waiting for one; 0 once a stop is requested."""
        while not self._free and not self._stop_requested.is_set():
            self._wake.clear()
            self._parked = True
            try:
                await self._wake.wait()
            finally:
                self._parked = False
        return 0 if self._stop_requested.is_set() else self._try_take_slots(want)

    def _try_take_slots(self, want: int) -> int:
        taken = min(want, self._free)  # no await between the check and the take
        self._free -= taken
        return taken

    def _release(self, slots: int) -> None:
        if slots:
            self._free += slots
            self._wake.set()

    async def _wait_loops(self) -> None:
        """Wait for the loops to end, once a stop is requested; cancel those that don't.

        The read in flight returns within ``block_s``, a settle's read within
        ``cancel_timeout_s``. A loop still running after both waits on a connection
        gone silent (no ``socket_timeout``: its command never returns): it is
        cancelled, and what it was reading stays pending, reclaimed later.
        """
        if self._loops:
            _, late = await asyncio.wait(self._loops, timeout=self.block_s + self.cancel_timeout_s)
            if late:
                logger.warning("worker %s: %s still running %s s after the stop request "
                               "(Redis not answering?); cancelling", self.name,
                               sorted(t.get_name() for t in late),
                               self.block_s + self.cancel_timeout_s)
                if await _cancel_until_done(late, self.cancel_timeout_s):
                    logger.error("worker %s: its loops ignore cancellation", self.name)
            for task in self._loops:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    logger.error("worker %s: %s failed", self.name, task.get_name(),
                                 exc_info=task.exception())

    # --- heartbeat ----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Every ``heartbeat_s``, beat all the entries running here (``_beat``), at once.

        Ends when ``_beating_over`` is set, between beats: it is not cancelled
        mid-command. (On Python 3.11 a cancel that lands as a fakeredis reply arrives
        can be lost inside ``wait_for``; a loop that missed its cancel would beat on.)
        """
        while True:
            await self._sleep(self.heartbeat_s, self._beating_over)
            if self._beating_over.is_set():
                return
            await self._beat()

    async def _end_heartbeat(self) -> None:
        """End the heartbeat loop, once nothing runs any more."""
        self._beating_over.set()
        if self._heartbeat is None:
            return
        # A beat in flight takes a round trip; one stuck on a dead connection is
        # cancelled after heartbeat_s, again until it ends.
        await asyncio.wait({self._heartbeat}, timeout=self.heartbeat_s)
        if await _cancel_until_done({self._heartbeat}, self.cancel_timeout_s):
            logger.error("worker %s: its heartbeat ignores cancellation", self.name)

    # --- Redis housekeeping -----------------------------------------------------------

    async def _ensure_group(self) -> None:
        try:
            # From id 0, not $: entries enqueued before any worker existed are jobs too.
            await self.redis.xgroup_create(self.keys.stream, self.keys.group, id="0",
                                           mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return
            # Out of memory, Redis refuses the create before it would find the group:
            # a worker restarting then must not fail when there is nothing to create.
            if not _out_of_memory(exc) or not await self._group_exists():
                raise

    async def _group_exists(self) -> bool:
        try:
            groups = await self.redis.xinfo_groups(self.keys.stream)
        except redis.exceptions.ResponseError:  # no such stream
            return False
        return any(_text(group["name"]) == self.keys.group for group in groups)

    async def _leave_group(self) -> None:
        """Delete this consumer from the group when it holds nothing (tidy XINFO output)."""
        try:
            async with asyncio.timeout(self.cancel_timeout_s):  # Redis may not answer
                mine = await self.redis.xpending_range(self.keys.stream, self.keys.group, "-",
                                                       "+", 1, consumername=self.name)
                if not mine:
                    await self.redis.xgroup_delconsumer(self.keys.stream, self.keys.group,
                                                        self.name)
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
        if _out_of_memory(exc):
            if failures == 1:  # once per streak: it may last
                logger.warning("worker %s: Redis out of memory while %s (%s); retrying with "
                               "backoff", self.name, doing, exc)
        elif _stream_replaced(exc):
            # Its key deleted under a read, or holding a string, a hash...: said once
            # per window, not a traceback per retry (the backoff bounds the retries).
            if not self._wrong_key:
                self._wrong_key = True
                logger.warning("worker %s: the stream key %r is not a stream while %s (%s): "
                               "replaced or deleted under the worker? Retrying with backoff "
                               "until it is one again", self.name, self.keys.stream, doing,
                               exc)
        elif isinstance(exc, _REDIS_DOWN):
            if self._down_since is None:
                self._down_since = time.monotonic()
                logger.warning("worker %s: Redis unreachable at %s while %s (%s: %s); "
                               "retrying with backoff", self.name, _describe(self.redis), doing,
                               type(exc).__name__, exc)
        else:
            logger.error("worker %s: error while %s", self.name, doing, exc_info=exc)
        await self._sleep(backoff_s(failures, base_s=self.reconnect_base_s,
                                    max_s=self.reconnect_max_s))

    def _redis_up(self, *, read: bool = False) -> None:
        if self._wrong_key and read:  # only a read says the stream is one again
            logger.warning("worker %s: the stream key %r is a stream again", self.name,
                           self.keys.stream)
            self._wrong_key = False
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


def _stream_replaced(exc: Exception) -> bool:
    """True for the errors of a stream key deleted under a BLOCK read or holding another type."""
    return isinstance(exc, redis.exceptions.ResponseError) and (
        str(exc).startswith(("WRONGTYPE", "UNBLOCKED the stream key no longer exists")))


class _NoAnswer(redis.exceptions.TimeoutError):
    """A command took longer than ``ANSWER_TIMEOUT_S``: handled as Redis being away."""


async def _answered(command: Coroutine[Any, Any, Any]) -> Any:
    """``await command``, or _NoAnswer after ``ANSWER_TIMEOUT_S`` (the command cancelled)."""
    try:
        async with asyncio.timeout(ANSWER_TIMEOUT_S) as scope:
            return await command
    except TimeoutError:
        if scope.expired():
            raise _NoAnswer(f"Redis not answering within {ANSWER_TIMEOUT_S:g} s (stopped, "
                            "overloaded or cut off?)") from None
        raise


def _entries(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """The entries of an XREADGROUP reply, in RESP2 ([[stream, entries]]) or RESP3 ({})."""
    if not reply:
        return []
    streams = reply.items() if isinstance(reply, dict) else reply
    out = []
    for _, entries in streams:
        out.extend((entry_id, fields or {}) for entry_id, fields in entries)
    return out


def _read_in_script(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """The entries of an XREADGROUP run in a script: [[stream, [[id, [f, v, ...]]]]].

    Fields come as a flat list (a script's reply is not parsed as XREADGROUP's);
    nothing read comes as None. (fakeredis leaves out the outer list.)
    """
    if not reply:
        return []
    streams = reply if isinstance(reply[0], list) else [reply]
    out = []
    for _, entries in streams:
        for entry_id, flat in entries:
            fields = flat or []
            out.append((entry_id, dict(zip(fields[::2], fields[1::2], strict=True))))
    return out


def _describe(client: redis.asyncio.Redis) -> str:
    """Where the client points, for logs: a URL without password, or 'fakeredis'."""
    if not hasattr(client, "connection_pool"):  # a RedisCluster: its nodes, no password
        return "redis+cluster://" + ",".join(node.name for node in client.get_nodes())
    kw = getattr(client.connection_pool, "connection_kwargs", {})
    if "server" in kw or type(client).__module__.startswith("fakeredis"):
        return "fakeredis"
    if "path" in kw:
        return mask_url(f"unix://{kw['path']}?db={kw.get('db', 0)}")
    return mask_url(f"redis://{kw.get('host', '?')}:{kw.get('port', 6379)}/{kw.get('db', 0)}")
