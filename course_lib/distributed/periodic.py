"""Periodic jobs: a schedule per task, enqueued once per tick however many workers run.

    registry.every(60, "cleanup")                                # every minute, on the minute
    registry.every(86400, "report", ["daily"], offset_s=3 * 3600)  # every day at 03:00 UTC

A schedule's ticks are wall-clock instants, ``offset_s + k * every_s`` seconds after
the Unix epoch (UTC): ``every_s=3600`` ticks on the hour, ``every_s=86400,
offset_s=3*3600`` at 03:00 UTC each day. (The epoch began on a Thursday: a weekly
schedule with ``offset_s=4*86400`` ticks on Mondays at 00:00 UTC.) No time zones, no
calendar months: that is cron's job, and a cron line that runs ``enqueue`` works too.

Every worker whose registry holds schedules runs a ``Scheduler``; each enqueues every
tick's job with an id derived from the schedule's name and the tick
(``report@1905562800000``: its epoch milliseconds), and the idempotent enqueue (one
Lua script: the id is taken while its record exists) adds it once: at most one job
per tick across any number of workers, and none lost while one of them runs. A
scheduler enqueues a tick only while its job's record must still exist (younger
than the workers' ``result_ttl_s``: a later enqueue could find it expired, and run
the tick twice), and catches up the ticks it missed within that bound (a loop
stalled, Redis away for a moment). Ticks while no worker runs are not replayed, as
cron does not; a new scheduler starts from the latest tick.

A tick's job has a deadline (``Job.deadline``, as ``EnqueueOptions(deadline=...)``):
``deadline_s`` after its tick, by default ``every_s``, the next tick. A job that has
not started by then dies unrun, recorded ``dead`` ("its deadline passed before it
could start") and dead-lettered, rather than running late, maybe many ticks late
behind a backlog or a worker that was down; and no attempt runs past it (a task
slower than its period needs a longer ``deadline_s``; ``math.inf``: none). The
catch-up skips the ticks whose deadline has passed (``Scheduler.missed``).
"""

from __future__ import annotations

__all__ = ["Periodic", "Scheduler"]

import asyncio
import dataclasses
import datetime
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .job import InvalidJob, Job

if TYPE_CHECKING:
    from .queue import Queue
    from .registry import TaskRegistry

logger = logging.getLogger("course_lib.distributed.worker")

_MIN_EVERY_S = 0.01  # job ids hold the tick in milliseconds: ticks must differ in them
_MAX_NAME = 180  # a job id is at most 200 characters: the name, '@', the tick
_CATCH_UP_S = 60.0  # a schedule faster than this catches up the ticks of the last minute


@dataclasses.dataclass(frozen=True, slots=True, repr=False)
class Periodic:
    """One schedule: run ``task(*args, **kwargs)`` at every tick (see the module).

        Periodic("beat", every_s=0.25).latest_tick(100.3)   # 100.25
        Periodic("beat", every_s=60, deadline_s=10).deadline(120.0)   # 130.0

    ``deadline_s``: how long after its tick a tick's job may still start (and run);
    default ``every_s``, the next tick; ``math.inf``: no deadline.
    """

    task: str
    every_s: float
    offset_s: float = 0.0
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    name: str = ""  # default: the task's name; one schedule per name in a registry
    deadline_s: float | None = None  # default: every_s (the next tick); inf: none

    def __post_init__(self) -> None:
        every_s, offset_s = _seconds(self.every_s), _seconds(self.offset_s)
        if not (math.isfinite(every_s) and every_s >= _MIN_EVERY_S):
            raise ValueError(f"every_s must be a finite number >= {_MIN_EVERY_S}, not "
                             f"{self.every_s!r}")
        if not 0 <= offset_s < every_s:
            raise ValueError(f"offset_s must be >= 0 and below every_s ({every_s:g}), not "
                             f"{self.offset_s!r}")
        deadline_s = every_s if self.deadline_s is None else _seconds(self.deadline_s)
        if not deadline_s > 0:  # NaN fails too
            raise ValueError(f"deadline_s must be > 0 seconds after the tick (inf: none), not "
                             f"{self.deadline_s!r}")
        name = self.name or self.task
        if len(name) > _MAX_NAME:
            raise ValueError(f"a periodic schedule's name has at most {_MAX_NAME} characters")
        object.__setattr__(self, "every_s", every_s)
        object.__setattr__(self, "offset_s", offset_s)
        object.__setattr__(self, "deadline_s", deadline_s)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "args", tuple(self.args))
        object.__setattr__(self, "kwargs", dict(self.kwargs))
        try:
            self.job(0.0)  # the task name, the arguments (JSON) and the id are checked
        except InvalidJob as exc:
            raise ValueError(f"periodic {name!r}: {exc}") from None

    def __repr__(self) -> str:
        named = "" if self.name == self.task else f", name={self.name!r}"
        if self.deadline_s != self.every_s:
            named += f", deadline_s={self.deadline_s:g}"
        return (f"Periodic({self.task!r}, every_s={self.every_s:g}, offset_s={self.offset_s:g}"
                f"{named})")

    def latest_tick(self, now_s: float) -> float:
        """The last tick at or before ``now_s`` (epoch seconds)."""
        return self.tick(self.index(now_s))

    def index(self, now_s: float) -> int:
        """The number of the last tick at or before ``now_s``, counted from the epoch."""
        return math.floor((now_s - self.offset_s) / self.every_s)

    def tick(self, index: int) -> float:
        return self.offset_s + index * self.every_s

    def job_id(self, tick: float) -> str:
        """The id of the tick's job: the same on every worker, so it is enqueued once."""
        return f"{self.name}@{round(tick * 1000)}"

    def deadline(self, tick: float) -> float | None:
        """When the tick's job dies unrun (epoch seconds); None: never."""
        return None if math.isinf(self.deadline_s) else tick + self.deadline_s  # type: ignore[operator]

    def job(self, tick: float, *, max_attempts: int = 3, timeout_s: float | None = None) -> Job:
        return Job(self.task, self.args, self.kwargs, id=self.job_id(tick),
                   max_attempts=max_attempts, timeout_s=timeout_s, deadline=self.deadline(tick))


class Scheduler:
    """Enqueue the ticks of a registry's schedules on a queue; what ``Worker`` runs.

        scheduler = Scheduler(queue, registry, result_ttl_s=86400)
        await scheduler.run(stop_event)   # until stop_event is set
        scheduler.enqueued, scheduler.duplicates   # ticks it added; ticks others had
        scheduler.missed   # ticks past their deadline when it came to them: not enqueued

    ``result_ttl_s``: the workers' (how long a job's record outlives its end), which
    bounds how late a tick may still be enqueued (see the module).
    """

    def __init__(self, queue: Queue, registry: TaskRegistry, *, result_ttl_s: float,
                 retry_s: float = 1.0) -> None:
        self.queue = queue
        self.registry = registry
        self.schedules: list[Periodic] = list(registry.periodic)
        self.result_ttl_s = result_ttl_s
        self.retry_s = retry_s
        self.enqueued = 0  # ticks this scheduler added
        self.duplicates = 0  # ticks another scheduler had added first
        self.missed = 0  # ticks not enqueued: their deadline had passed (a stall, Redis away)
        self._last: dict[str, int] = {}  # schedule name -> index of the last tick handled

    def __repr__(self) -> str:
        return f"<Scheduler {[p.name for p in self.schedules]} on {self.queue!r}>"

    async def run(self, stop: asyncio.Event) -> None:
        """Enqueue each tick as it comes, until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.tick(time.time())
                wait_s = min(p.latest_tick(time.time()) + p.every_s for p in self.schedules
                             ) - time.time()
            except Exception as exc:  # Redis away, out of memory...: the next try catches up
                logger.warning("%r: enqueueing a tick failed (%r); retrying in %s s", self,
                               exc, self.retry_s)
                wait_s = self.retry_s
            try:
                async with asyncio.timeout(max(0.0, wait_s)):
                    await stop.wait()
            except TimeoutError:
                pass

    async def tick(self, now_s: float) -> None:
        """Enqueue the ticks due by ``now_s`` not handled yet, within the catch-up bound."""
        for schedule in self.schedules:
            latest = schedule.index(now_s)
            window_s = min(self.result_ttl_s, max(schedule.every_s, _CATCH_UP_S))
            # Older ticks than the window: their records may have expired (enqueued again,
            # they would run twice). A new scheduler starts from the latest tick.
            oldest = latest - math.ceil(window_s / schedule.every_s) + 1
            first = max(self._last.get(schedule.name, latest - 1) + 1, oldest)
            for index in range(first, latest + 1):
                tick = schedule.tick(index)
                deadline = schedule.deadline(tick)
                if deadline is not None and deadline <= now_s:  # it would die unrun
                    self.missed += 1
                    logger.info("⏲ %s(id=%s) missed: its deadline passed before it could "
                                "be enqueued", schedule.task, schedule.job_id(tick))
                elif now_s - tick < window_s:
                    await self._enqueue(schedule, tick)
                self._last[schedule.name] = index  # after the enqueue: one that failed is retried

    async def _enqueue(self, schedule: Periodic, tick: float) -> None:
        task = self.registry[schedule.task]
        job = schedule.job(tick, max_attempts=task.max_attempts, timeout_s=task.timeout_s)
        handle = await self.queue.enqueue_job(job)
        if handle.enqueued:
            self.enqueued += 1
            logger.info("⏲ %s(id=%s) enqueued for its tick", schedule.task, job.id)
        else:
            self.duplicates += 1


def _seconds(value: Any) -> float:
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected seconds (a number or a timedelta), not {value!r}")
    return float(value)
