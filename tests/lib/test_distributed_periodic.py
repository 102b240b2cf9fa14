"""Periodic jobs: ``registry.every(every_s, task, ...)``, enqueued by the workers' schedulers.

Ticks are wall-clock instants aligned to the Unix epoch (plus ``offset_s``); each tick's
job id is derived from the schedule's name and the tick, so the idempotent enqueue
adds it once however many workers schedule it, with a deadline (default: the next
tick). Real time, short periods: the ticks are wall-clock time, which looptime does
not fake; the deadline tests pass the scheduler a time of their own instead.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import math
import time

import pytest
from _worker_support import fast_worker

from course_lib.distributed import Job, JobFailed, JobStatus, Queue, TaskRegistry
from course_lib.distributed.periodic import Periodic, Scheduler


def _registry() -> tuple[TaskRegistry, list[str]]:
    registry = TaskRegistry()
    runs: list[str] = []

    @registry.task
    async def beat(label: str) -> str:
        runs.append(label)
        return label

    return registry, runs


def test_ticks_are_aligned_to_the_epoch_plus_the_offset():
    daily = Periodic("report", every_s=86400, offset_s=3 * 3600)  # every day at 03:00 UTC
    now = datetime.datetime(2030, 5, 17, 14, 30, tzinfo=datetime.UTC).timestamp()
    assert daily.latest_tick(now) == datetime.datetime(2030, 5, 17, 3, 0,
                                                       tzinfo=datetime.UTC).timestamp()
    assert daily.latest_tick(daily.latest_tick(now)) == daily.latest_tick(now)  # on a tick
    assert daily.job_id(daily.latest_tick(now)) == "report@1905217200000"
    often = Periodic("beat", every_s=0.25)
    assert often.latest_tick(100.3) == 100.25 and often.job_id(100.25) == "beat@100250"
    assert repr(often) == "Periodic('beat', every_s=0.25, offset_s=0)"


def test_the_registry_keeps_periodic_schedules_and_refuses_bad_ones():
    registry, _ = _registry()
    schedule = registry.every(60, "beat", ["minute"])
    assert registry.periodic == [schedule] and schedule.kwargs == {}
    assert (schedule.name, schedule.task, schedule.args) == ("beat", "beat", ("minute",))
    hourly = registry.every(datetime.timedelta(hours=1), "beat", kwargs={"label": "hour"},
                            offset_s=datetime.timedelta(minutes=5), name="beat-hourly")
    assert (hourly.every_s, hourly.offset_s) == (3600, 300)
    with pytest.raises(ValueError, match="no task 'nope'"):
        registry.every(60, "nope")
    with pytest.raises(ValueError, match="already"):
        registry.every(30, "beat")  # the name is the schedule's identity: one per name
    with pytest.raises(ValueError, match="every_s"):
        registry.every(0, "beat", name="zero")
    with pytest.raises(ValueError, match="offset_s"):
        registry.every(60, "beat", name="late", offset_s=60)
    with pytest.raises(ValueError, match="JSON"):
        registry.every(60, "beat", [object()], name="bad-args")


@pytest.mark.asyncio
async def test_two_schedulers_enqueue_each_tick_once_and_one_stopping_loses_none(redis):
    registry, runs = _registry()
    every_s = 0.25
    # A deadline far past the next tick: on a loaded machine a job may start late, and
    # this test is about enqueueing once per tick, not about deadlines (see below).
    registry.every(every_s, "beat", ["tick"], deadline_s=60)
    queue = Queue(redis)
    a = fast_worker(redis, registry, name="a")
    b = fast_worker(redis, registry, name="b")
    async with b:
        async with a:
            await asyncio.sleep(8 * every_s)
        stopped_at = time.time()
        await asyncio.sleep(8 * every_s)  # b alone
        last = time.time()
    ticks = sorted([int(key.decode().rsplit("@", 1)[1]) async for key in
                    redis.scan_iter(match=queue.keys.job("beat@*"))])
    steps = {later - earlier for earlier, later in itertools.pairwise(ticks)}
    assert steps == {round(every_s * 1000)}  # one job per tick, none skipped
    assert ticks[-1] / 1000 > stopped_at + 4 * every_s  # b went on alone
    assert ticks[-1] / 1000 <= last and len(ticks) >= 10
    assert len(runs) <= len(ticks)  # each tick's job ran at most once (the last may wait)
    statuses = {await queue.handle(f"beat@{t}").status() for t in ticks[:-2]}
    assert statuses == {JobStatus.DONE}
    # Both schedulers met the ticks they shared: the one that came second added nothing.
    assert a.scheduler is not None and b.scheduler is not None
    assert a.scheduler.enqueued + b.scheduler.enqueued == len(ticks)
    assert a.scheduler.duplicates + b.scheduler.duplicates >= 4


@pytest.mark.asyncio
async def test_a_worker_without_periodic_tasks_runs_no_scheduler(redis):
    registry, _ = _registry()
    async with fast_worker(redis, registry) as worker:
        assert worker.scheduler is None


@pytest.mark.asyncio
async def test_a_scheduler_catches_up_missed_ticks_but_never_one_its_record_may_have_left(
        redis):
    registry, _ = _registry()
    registry.every(1, "beat", ["second"], name="sec", deadline_s=5)  # not missed: below
    registry.every(10, "beat", ["ten"], name="ten")
    queue = Queue(redis)
    scheduler = Scheduler(queue, registry, result_ttl_s=5)
    await scheduler.tick(1000.2)  # a new scheduler: the latest tick only
    await scheduler.tick(1003.5)  # a stall of three ticks: caught up, in order
    ids = [job.id for _, fields in await redis.xrange(queue.keys.stream)
           for job in [Job.decode(fields[b"job"])]]
    assert ids == ["sec@1000000", "ten@1000000", "sec@1001000", "sec@1002000", "sec@1003000"]
    late = Scheduler(queue, registry, result_ttl_s=5)
    await late.tick(1016)  # ten@1010000 is 6 s old: past result_ttl_s, so not enqueued
    assert [job.id for _, fields in await redis.xrange(queue.keys.stream, count=100)
            for job in [Job.decode(fields[b"job"])]][-1] == "sec@1016000"
    assert not await queue.handle("ten@1010000").status()
    assert (scheduler.enqueued, late.enqueued, late.duplicates) == (5, 1, 0)


# --- deadlines: a tick's job runs by the next tick, or dies unrun ---------------------------


def test_a_ticks_job_has_a_deadline_at_the_next_tick_unless_told():
    minute = Periodic("beat", every_s=60)
    assert minute.job(120.0).deadline == 180.0 and repr(minute) == (
        "Periodic('beat', every_s=60, offset_s=0)")
    short = Periodic("beat", every_s=60, deadline_s=datetime.timedelta(seconds=10))
    assert short.job(120.0).deadline == 130.0 and "deadline_s=10" in repr(short)
    assert Periodic("beat", every_s=60, deadline_s=math.inf).job(120.0).deadline is None
    registry, _ = _registry()
    assert registry.every(3600, "beat", deadline_s=300).job(0.0).deadline == 300.0
    for bad in (0, -1, math.nan, "soon"):
        with pytest.raises(ValueError, match=r"deadline_s|seconds"):
            Periodic("beat", every_s=60, deadline_s=bad)


@pytest.mark.asyncio
async def test_a_tick_that_waited_past_its_deadline_dies_unrun_instead_of_running_late(redis):
    """Its tick's job was enqueued an hour ago (say every worker was down since): when a
    worker comes, it records the job dead, "its deadline passed", and never runs it."""
    registry, runs = _registry()
    hourly = registry.every(3600, "beat", ["hourly"])
    queue = Queue(redis)
    an_hour_ago = time.time() - 3600
    await Scheduler(queue, registry, result_ttl_s=86400).tick(an_hour_ago)
    late = queue.handle(hourly.job_id(hourly.latest_tick(an_hour_ago)))
    assert await late.status() is JobStatus.QUEUED
    async with fast_worker(redis, registry):
        with pytest.raises(JobFailed, match="its deadline passed before it could start"):
            await asyncio.wait_for(late.result(), 30)  # a hang guard, not a measure
        # This hour's tick (the worker's own scheduler enqueues it) is in time: it runs.
        this_hour = queue.handle(hourly.job_id(hourly.latest_tick(time.time())))
        assert await asyncio.wait_for(this_hour.result(), 30) == "hourly"
    assert await late.status() is JobStatus.DEAD and runs == ["hourly"]
    [letter] = await queue.dead_letters()
    assert "deadline" in letter.reason and Job.decode(letter.job).id == late.id


@pytest.mark.asyncio
async def test_the_catch_up_skips_the_ticks_whose_deadline_has_passed(redis):
    registry, _ = _registry()
    registry.every(1, "beat", ["sec"], name="sec")  # deadline: the next tick
    registry.every(1, "beat", ["patient"], name="patient", deadline_s=10)
    queue = Queue(redis)
    scheduler = Scheduler(queue, registry, result_ttl_s=3600)
    await scheduler.tick(1000.2)
    await scheduler.tick(1003.5)  # a stall of three ticks
    ids = [Job.decode(fields[b"job"]).id for _, fields in await redis.xrange(queue.keys.stream)]
    assert ids == ["sec@1000000", "patient@1000000", "sec@1003000", "patient@1001000",
                   "patient@1002000", "patient@1003000"]
    assert (scheduler.enqueued, scheduler.missed) == (6, 2)  # sec@1001000, sec@1002000
    assert await queue.handle("sec@1001000").status() is None  # never enqueued


@pytest.mark.asyncio
async def test_a_periodic_run_is_cut_at_its_deadline_as_any_jobs_is(redis):
    """No attempt runs past the deadline: a task slower than its period is cut at the
    next tick (give it a longer deadline_s), rather than overlap the next run."""
    registry = TaskRegistry()
    started = asyncio.Event()

    @registry.task(max_attempts=1)
    async def stuck() -> None:
        started.set()
        await asyncio.sleep(3600)

    schedule = Periodic("stuck", every_s=3600, deadline_s=0.5)
    queue = Queue(redis)
    tick = time.time()
    handle = await queue.enqueue_job(schedule.job(tick))
    async with fast_worker(redis, registry):
        with pytest.raises(JobFailed):
            await asyncio.wait_for(handle.result(), 30)  # a hang guard, not a measure
    assert started.is_set() and await handle.status() is JobStatus.DEAD
