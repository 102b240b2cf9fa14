"""The runner: starts the jobs of a read in the slots it took, runs each to its settle.

    runner = _Running(registry, settings, control, start_script, slots, outcomes)
    started = await runner.start([(entry_id, fields, None), ...])   # slots already taken
    runner.holding                     # the deliveries held here, by entry id (heartbeat)
    runner.settled(deliveries)         # the Settler's callback: their slots are free

A delivery goes: decode the entry (``Job.decode``; bad input is dead-lettered at
once), mark the job running (``scripts.START``, one call for all the jobs of a
read), run its task under its timeout while the worker's heartbeat keeps the entry
ours, then settle it (``Outcomes``, sent by the ``Settler``). At most ``concurrency``
tasks run; what a read brings beyond them (read ahead) waits in ``ready``, marked
running and beaten, and starts as soon as a task ends (not after its settle), so the
settle of one batch and the start of the next overlap. See the docstring of
``worker`` for why each step is safe.
"""

from __future__ import annotations

__all__: list[str] = []  # internal: Worker is the public face

import asyncio
import collections
import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any

from ..lifecycle import BackgroundTasks
from .control import REDIS_DOWN, Control, Settings, refused_for_now
from .job import InvalidJob, Job
from .outcomes import Outcomes
from .queue import _text
from .registry import Task, TaskRegistry
from .scripts import Script

if TYPE_CHECKING:
    from .reader import Slots

logger = logging.getLogger("course_lib.distributed.worker")

_REDIS_DOWN = REDIS_DOWN  # under its old name: the CLI imports it from here


@dataclasses.dataclass(slots=True, eq=False)
class Delivery:
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


class _Running:
    """Runs delivered entries, one task per job in a slot, to their settlement."""

    def __init__(self, registry: TaskRegistry, keys_job: bytes, settings: Settings,
                 control: Control, start_script: Script, slots: Slots,
                 outcomes: Outcomes) -> None:
        self.registry = registry
        self.start_script = start_script
        self.holding: dict[str, Delivery] = {}  # entries running (or held) here, by id
        self.jobs = BackgroundTasks(name=f"worker {settings.name}", grace_s=settings.grace_s,
                                    cancel_timeout_s=settings.cancel_timeout_s)
        # Read ahead: marked running, waiting for a task to end (at most read_ahead of them).
        self.ready: collections.deque[Delivery] = collections.deque()
        self._running = 0  # tasks of jobs (each under concurrency): from spawn to their end
        self._job_key = keys_job  # keys.job(""), UTF-8: + a job id, the key of its record
        self._settings, self._control, self._slots = settings, control, slots
        self._outcomes = outcomes

    # --- starting a batch -------------------------------------------------------------

    async def start(self, batch: list[tuple[str, dict[Any, Any], str | None]]) -> int:
        """Decode entries just read, mark their jobs running in one call, run each.

        ``batch``: (entry id, fields, why it is poison or None). Returns how many run
        (each in a task that owns one slot, already taken); the others stay pending.
        """
        deliveries = []
        for entry_id, fields, poison in batch:
            try:
                deliveries.append(self._prepare(entry_id, fields, poison))
            except Exception:  # a bug of ours: the entry stays pending, reclaimed later
                logger.exception("worker %s: entry %s could not be handled",
                                 self._settings.name, entry_id)
        runnable = [d for d in deliveries if d.problem is None]
        if runnable:
            unmarked = await self._mark_running(runnable)
            if unmarked:
                deliveries = [d for d in deliveries if d not in unmarked]
        if self._control.aborting:
            return 0  # a "crash": they stay in our PEL, unrun
        for d in deliveries:
            self.holding[d.entry_id] = d
            if self._running < self._settings.concurrency:
                self._spawn(d)
            else:  # read ahead: it starts as soon as a task ends (_run_entry)
                self.ready.append(d)
        return len(deliveries)

    def _spawn(self, d: Delivery) -> None:
        self._running += 1
        d.runner = self.jobs.spawn(self._run_entry(d), name=f"{self._settings.name} {d.entry_id}")

    def hand_back_ready(self) -> None:
        """At stop: hand back what was read ahead (or run it when it needs no task of ours).

        They never started: re-added to the stream and acked in one step, as the jobs
        cancelled at the end of the grace. One another worker took over is just dropped.
        """
        while self.ready:
            d = self.ready.popleft()
            if d.lost:
                self.holding.pop(d.entry_id, None)
                self._slots.release(1)
            elif d.job is not None and d.problem is None and d.ended is None:
                self._outcomes.hand_back(d)
            else:  # dead-lettered or acked unrun: no code of the job's runs
                self._spawn(d)

    def _prepare(self, entry_id: str, fields: dict[Any, Any], poison: str | None) -> Delivery:
        """The delivery, decoded; ``problem`` set when it is to be dead-lettered unrun."""
        d = Delivery(entry_id, fields)
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

    async def _mark_running(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Record each attempt as running, in one call; those that could not be (not run).

        A job whose record is final ended already (another entry with its id ran):
        its ``ended`` is set, and it is acked as a duplicate, not run. With Redis
        away only the records suffer: the jobs run, and are settled later. Refused for
        now (Redis out of memory, or its scripts flushed again and again), the read is
        held and the call retried with backoff (see ``_hold``); at a stop meanwhile,
        none is marked (they stay pending, reclaimed later).
        """
        name = self._settings.name
        keys: list[Any] = []
        args: list[Any] = [name, repr(time.time())]
        for d in deliveries:
            job = d.job
            assert job is not None
            keys.append(self._job_key + job.id.encode())
            args.append(f"{job.attempt} {job.max_attempts} {job.task} {job.enqueued_at!r}"
                        .encode())
        try:
            replies = await self.start_script(keys=keys, args=args)
        except REDIS_DOWN as exc:
            logger.warning("worker %s: could not record %d job(s) running (%s)", name,
                           len(deliveries), exc)
            return []
        except Exception as exc:
            if refused_for_now(exc):
                replies = await self._hold(deliveries, keys, args, exc)
                if replies is None:
                    return deliveries
            elif len(deliveries) == 1:  # a bug, or a key of the wrong type: left pending
                logger.exception("worker %s: entry %s could not be marked running", name,
                                 deliveries[0].entry_id)
                return deliveries
            else:
                return [d for one in deliveries for d in await self._mark_running([one])]
        for d, ended in zip(deliveries, replies, strict=True):
            d.ended = _text(ended) or None
        return []

    async def _hold(self, deliveries: list[Delivery], keys: list[Any], args: list[Any],
                    refusal: Exception) -> list[Any] | None:
        """Retry START for a read it refused, with backoff; its reply, or None at a stop.

        The read keeps its slots meanwhile, and its entries are beaten with the running
        ones: a read that cannot start must not make room for the next (each would pull
        more entries into this worker's pending list, unrun), and an entry held here is
        not delivered again, so its delivery count, which ``max_deliveries`` bounds,
        counts workers lost, not refusals.
        """
        name = self._settings.name
        logger.warning("worker %s: Redis refused to mark %d job(s) running (%s); holding "
                       "them, retrying with backoff", name, len(deliveries), refusal)
        for d in deliveries:
            self.holding[d.entry_id] = d
        failures = 1
        try:
            while True:
                await self._control.sleep(self._settings.reconnect_delay_s(failures))
                if self._control.requested.is_set():
                    return None
                try:
                    replies = await self.start_script(keys=keys, args=args)
                except Exception as exc:
                    if not (refused_for_now(exc) or isinstance(exc, REDIS_DOWN)):
                        raise
                    failures += 1
                    logger.debug("worker %s: still refused: %r", name, exc)
                    continue
                logger.warning("worker %s: %d held job(s) marked running after %d refusals",
                               name, len(deliveries), failures)
                return replies
        finally:
            for d in deliveries:  # start() holds those that run
                self.holding.pop(d.entry_id, None)

    def settled(self, deliveries: list[Delivery]) -> None:
        """Their settle is done, given up or cancelled: forget them, free their slots."""
        for d in deliveries:
            self.holding.pop(d.entry_id, None)
        self._slots.release(len(deliveries))

    # --- running one entry ------------------------------------------------------------

    async def _run_entry(self, d: Delivery) -> None:
        """Run one delivery to its settle; the settle, sent later, frees its slot."""
        outcomes = self._outcomes
        try:
            if d.lost:  # read ahead, then taken over by another worker (see Heartbeat.beat)
                logger.info("entry %s: read ahead, taken over by another worker; not run here",
                            d.entry_id)
            elif d.problem is not None:
                outcomes.bury(d, d.problem, error=d.error)
            elif d.ended == "cancel" and d.job is not None:  # asked while a worker lost it ran
                outcomes.cancelled(d, d.job, 0.0, "cancelled on request before this attempt "
                                                  "started")
            elif d.ended == "cancelled":
                logger.info("entry %s: job %s was cancelled before it started; acked unrun",
                            d.entry_id, d.job.id if d.job else "?")
                outcomes.ack(d)
            elif d.ended is not None:
                logger.info("entry %s: job %s ended already; acked as a duplicate",
                            d.entry_id, d.job.id if d.job else "?")
                outcomes.ack(d)
            else:
                assert d.job is not None and d.task is not None
                await self._run_one(d, d.job, d.task)
        except asyncio.CancelledError:
            # Not a lost one (a heartbeat found another worker running it): acking
            # that entry would settle the other worker's delivery and run it again.
            if (d.job is not None and not d.settling and not self._control.aborting
                    and not d.lost):
                outcomes.hand_back(d)  # hand it back, then go on cancelling
            raise
        except Exception:
            # A bug of ours, not the job's: log it, keep the worker going. The entry
            # stays pending and is reclaimed after visibility_timeout_s.
            logger.exception("worker %s: entry %s could not be handled", self._settings.name,
                             d.entry_id)
        finally:
            if not d.settling:  # else its settle frees the slot, once sent
                self.holding.pop(d.entry_id, None)
                self._slots.release(1)
            self._running -= 1  # the next one read ahead starts now, not after the settle
            self._slots.ended(asyncio.get_running_loop().time())
            if self.ready and not self._control.requested.is_set():
                self._spawn(self.ready.popleft())

    async def _run_one(self, d: Delivery, job: Job, task: Task) -> None:
        timeout_s = job.timeout_s if job.timeout_s is not None else task.timeout_s
        if timeout_s is None:
            timeout_s = self._settings.default_timeout_s
        if job.deadline is not None:
            left_s = job.deadline - time.time()
            if left_s <= 0:  # read ahead, and it waited past its deadline
                self._outcomes.bury(d, "its deadline passed before it could start")
                return
            timeout_s = left_s if timeout_s is None else min(timeout_s, left_s)
        if logger.isEnabledFor(logging.INFO):
            logger.info("%6.2fs → %s(id=%s) %d/%d", max(0.0, time.time() - job.enqueued_at),
                        job.task, job.id, job.attempt, job.max_attempts)
        outcomes = self._outcomes
        if d.cancel:  # a heartbeat read the flag while START was held (_hold)
            outcomes.cancelled(d, job, 0.0, "cancelled on request before this attempt started")
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
                if self._control.begun or d.lost:
                    raise  # our stop (or abort): _run_entry hands it back, or leaves it
                if d.cancel:  # ours, asked for by Queue.cancel (see Heartbeat.beat)
                    while current.uncancel():
                        pass
                    outcomes.cancelled(d, job, loop.time() - started,
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
            outcomes.retry_or_bury(d, job, task, error, loop.time() - started, why)
            return
        except Exception as exc:
            # Ours only when our scope expired: the task may raise TimeoutError itself.
            why = None
            if isinstance(exc, TimeoutError) and scope is not None and scope.expired():
                why = f"timed out after {timeout_s:.3g} s"
            outcomes.retry_or_bury(d, job, task, exc, loop.time() - started, why)
            return
        outcomes.finished(d, job, result, loop.time() - started)


def _field(fields: dict[Any, Any], name: str) -> Any:
    value = fields.get(name.encode())
    return fields.get(name) if value is None else value
