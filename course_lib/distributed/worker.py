"""The worker: runs jobs from a Redis Stream consumer group, reliably.

    registry = TaskRegistry()

    @registry.task(max_attempts=5, timeout_s=30)
    async def resize(image_id: int) -> str: ...

    async with Worker(await connect(), registry, concurrency=10) as worker:
        await stop_requested.wait()          # leaving the block: graceful stop

How each job goes, and what makes it safe:

- read: ``XREADGROUP ... COUNT <free slots> BLOCK <block_s>`` puts the entry in this
  worker's pending list (PEL) before anything runs. A worker holds at most
  ``concurrency + read_ahead`` entries, at most ``concurrency`` of them running: up to
  ``read_ahead`` (default 100, or ``batch_size`` if larger) are read and marked
  running ahead, so that when a job ends the next starts at once and no batch waits on
  a round trip. It reads ahead at the jobs' pace: as many as it starts in about 10 ms
  (``control.AHEAD_S``), one batch at least, one batch again once the stream runs dry;
  so short jobs get the whole read-ahead, and jobs of 10 ms or more one batch (a busy
  worker does not hoard entries an idle one could run). Those wait in memory, but a
  crash loses none: they are in the PEL (reclaimed later), beaten as running ones,
  cancelled on request, handed back at stop. ``read_ahead=0``: never more than the
  free slots, nothing waits in memory.
- start: one Lua script marks the jobs of a read running (status, worker,
  started_at), or finds a job ended already (a duplicate entry: acked, not run). Read
  ahead, a record says "running" (and its ``started_at``) before the job starts: about
  10 ms of work, or one batch of jobs; one whose deadline passed meanwhile is
  dead-lettered unrun.
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
  end in the same turn of the event loop are settled by one call of the script; with
  two calls in flight, those that end meanwhile go together in the next.
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
import os
import secrets
import socket
from collections.abc import Coroutine
from typing import Any

import redis.asyncio

from ..lifecycle import ShutdownReport
from . import scripts
from .control import Control, Outage, Settings, describe, wait_loops
from .heartbeat import Heartbeat
from .keys import DEFAULT_QUEUE
from .maintenance import Group, Maintenance
from .outcomes import COUNTS, Outcomes
from .periodic import Scheduler
from .queue import Queue
from .reader import Reader, Slots
from .registry import TaskRegistry
from .running import _Running
from .settling import Settler

logger = logging.getLogger(__name__)

# A command that does not block and has not returned in this long meets a server that
# is frozen (SIGSTOP, overloaded) or cut off. The maintenance loop, which sends only
# such commands, bounds each by it (read when a Worker is made): it logs the outage once
# and retries. The read's BLOCK and the rest wait on (no socket_timeout): they go on
# when the server does.
ANSWER_TIMEOUT_S = 5.0

_describe = describe  # under its old name: queue.py and tests import it from here


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerStats:
    """Counts of one worker since it started, and of its queue in Redis now.

    ``processed``: jobs it completed; ``failed``, ``retried``, ``dead``: attempts that
    ended so; ``cancelled``: jobs it ended cancelled, as ``Queue.cancel`` asked (while
    they ran, or flagged before their attempt started); ``handed_back``: jobs returned
    at stop; ``reclaimed``: entries taken over from dead workers. Queue-wide:
    ``pending`` (delivered, unsettled), ``lag`` (not yet delivered), ``delayed``
    (retries waiting), ``dead_letters``.
    """

    processed: int
    failed: int
    retried: int
    dead: int
    cancelled: int
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


class Worker:
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
    Up to ``read_ahead`` (default 100, or ``batch_size`` if larger; 0: none) entries are
    read and marked running before a slot frees, as many as the jobs' pace makes worth
    it (see the module's "read").

    Its parts, each an object of its own (see their modules): the ``Reader`` fills the
    ``Slots`` it takes (reclaim, then new entries), the runner (``running``) marks the
    jobs of a read running and runs each in a task, ``Outcomes`` turns each end into its
    settle, the ``Settler`` sends a turn's settles in one call, the ``Heartbeat`` beats
    what runs, ``Maintenance`` moves due jobs and reaps idle consumers, and this class
    starts them and stops them in order (the hand-back of ``stop``).
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
        read_ahead: int | None = None,
    ) -> None:
        settings = self._settings = Settings.checked(
            name=name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}",
            concurrency=concurrency, batch_size=batch_size, read_ahead=read_ahead,
            visibility_timeout_s=visibility_timeout_s, heartbeat_s=heartbeat_s,
            block_s=block_s, maintenance_s=maintenance_s, retry_base_s=retry_base_s,
            retry_max_s=retry_max_s, retry_jitter=retry_jitter, result_ttl_s=result_ttl_s,
            max_deliveries=max_deliveries, max_dead_letters=max_dead_letters,
            idle_consumer_s=idle_consumer_s, default_timeout_s=default_timeout_s,
            grace_s=grace_s, cancel_timeout_s=cancel_timeout_s,
            reconnect_base_s=reconnect_base_s, reconnect_max_s=reconnect_max_s)
        self.redis = redis
        self.registry = registry
        self.queue = Queue(redis, queue)
        self.keys = self.queue.keys
        # Each setting, checked and with its default filled in, as an attribute of its
        # name: worker.concurrency, worker.heartbeat_s... (read-only once made).
        for field in dataclasses.fields(Settings):
            setattr(self, field.name, getattr(settings, field.name))
        self.report: ShutdownReport | None = None  # set by stop()
        # Enqueues the ticks of the registry's periodic jobs, once each across workers.
        self.scheduler = (Scheduler(self.queue, registry, result_ttl_s=result_ttl_s,
                                    retry_s=reconnect_max_s) if registry.periodic else None)
        # The parts (see the class docstring), and what they share: counts, the stop.
        self._counts = dict.fromkeys(COUNTS, 0)
        self._state = _State.NEW
        self._control = control = Control()
        self._stopping: asyncio.Task[ShutdownReport] | None = None  # the stop (or abort)
        self._loops: list[asyncio.Task[None]] = []
        self._group = Group(redis, self.keys, settings)
        outage = Outage(redis, self.keys, settings, control, self._group.ensure)
        self._maintenance = Maintenance(
            self.queue, settings, control, outage,
            scripts.Script(redis, scripts.FORGET_CONSUMERS), answer_timeout_s=ANSWER_TIMEOUT_S)
        # A slot per entry it may hold: running, settling, or read ahead (see running).
        self._slots = Slots(concurrency, control, settings.read_ahead, settings.batch_size)
        self._settler = Settler(redis, self.keys, settings, control,
                                scripts.Script(redis, scripts.SETTLE, flags=scripts.SETTLE_FLAGS),
                                on_settled=lambda done: self._runner.settled(done))
        outcomes = Outcomes(settings, self._counts, self._settler,
                            on_retry=self._maintenance.nudge)
        self._runner = _Running(registry, self.keys.job("").encode(), settings, control,
                                scripts.Script(redis, scripts.START), self._slots, outcomes)
        self._reader = self._settler.reader = Reader(
            redis, self.keys, settings, control, outage, self._slots, self._runner,
            self._counts)
        self._heartbeat = Heartbeat(self.keys, settings, control,
                                    scripts.Script(redis, scripts.HEARTBEAT),
                                    self._runner.holding)

    @property
    def _settle_script(self) -> scripts.Script:
        """The settler's script (tests change how it runs; replace ``_settler.script``)."""
        return self._settler.script

    def __repr__(self) -> str:
        return (f"<Worker {self.name!r} queue={self.queue.name!r} {self._state.value}, "
                f"{len(self._runner.jobs)}/{self.concurrency} running>")

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Join the consumer group (creating it and the stream if needed), start reading."""
        if self._state is not _State.NEW:
            raise RuntimeError(f"{self!r} cannot be started again")
        await self._group.ensure()
        self._state = _State.RUNNING
        self._loops = [
            asyncio.create_task(self._reader.run(), name=f"{self.name} read"),
            asyncio.create_task(self._maintenance.run(), name=f"{self.name} maintain"),
        ]
        if self.scheduler is not None:  # the registry's periodic jobs (periodic.py)
            self._loops.append(asyncio.create_task(self.scheduler.run(self._control.requested),
                                                   name=f"{self.name} schedule"))
        # Apart from the loops above: it beats on while stop() lets running jobs finish.
        self._heartbeat.start()
        logger.info("worker %s on %s, queue %r: tasks %s, concurrency %d", self.name,
                    describe(self.redis), self.queue.name, sorted(self.registry),
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
            self._control.aborting = True
            self._begin_stopping(self._crash())
        await self.stop()  # not started: nothing to abort; stopping: wait for it

    def _begin_stopping(self, shutdown: Coroutine[Any, Any, ShutdownReport]) -> None:
        self._state = _State.STOPPING
        self._control.begun = True
        self._stopping = asyncio.create_task(shutdown, name=f"{self.name} stop")
        self._stopping.add_done_callback(self._log_if_stop_failed)

    def _log_if_stop_failed(self, task: asyncio.Task[ShutdownReport]) -> None:
        # Retrieved here too: a caller cancelled meanwhile will never see it.
        if not task.cancelled() and task.exception() is not None:
            logger.error("worker %s: stopping failed", self.name, exc_info=task.exception())

    async def _shut_down(self, grace_s: float) -> ShutdownReport:
        """The graceful stop, in the task ``stop()`` starts and every later call awaits."""
        logger.info("worker %s stopping: %d running, grace %s s", self.name,
                    len(self._runner.jobs), grace_s)
        try:
            self._request_stop()
            await self._wait_loops()
            self._runner.hand_back_ready()  # read ahead, not started: handed back now
            # Cancelled at the end of the grace: each is handed back (running.py).
            self.report = await self._runner.jobs.close(grace_s,
                                                        cancel_timeout_s=self.cancel_timeout_s)
            await self._settler.close()
            await self._heartbeat.close()
            await self._group.leave()
        finally:
            self._heartbeat.end_soon()  # if we got here early: the heartbeat ends too
            self.report = self.report or ShutdownReport()
            self._state = _State.STOPPED
        logger.info("worker %s stopped: %s", self.name, self.report)
        return self.report

    async def _crash(self) -> ShutdownReport:
        """What ``abort()`` runs, in the task ``stop()`` would."""
        try:
            self._request_stop()
            self._settler.drop()
            self.report = await self._runner.jobs.close(0,
                                                        cancel_timeout_s=self.cancel_timeout_s)
            self._settler.drop()  # a crash settles nothing more
            self._runner.ready.clear()  # what was read ahead stays pending, as after a crash
            await self._settler.close()
            await self._heartbeat.close()
            # The read in flight is left to return (within block_s; cancelled if Redis does
            # not answer): what it brings is dropped unrun, in this consumer's PEL, as
            # after a crash.
            await self._wait_loops()
        finally:
            self._heartbeat.end_soon()
            self.report = self.report or ShutdownReport()
            self._state = _State.STOPPED
        logger.warning("worker %s aborted: what it held waits for reclaim", self.name)
        return self.report

    def _request_stop(self) -> None:
        self._control.requested.set()
        self._slots.wake()  # the reader, if it waits for a slot
        self._maintenance.nudge()  # the maintenance loop, if it sleeps

    async def _wait_loops(self) -> None:
        await wait_loops(self._loops, self._settings)

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
        counts["in_flight"] = len(self._runner.jobs)
        return counts
