"""Periodic jobs: ``registry.every(every_s, task, ...)``, enqueued by the workers' schedulers.

Ticks are wall-clock instants aligned to the Unix epoch (plus ``offset_s``); each tick's
job id is derived from the schedule's name and the tick, so the idempotent enqueue
adds it once however many workers schedule it. Real time, short periods: the ticks
are wall-clock time, which looptime does not fake.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import time

import pytest
from _worker_support import fast_worker

from course_lib.distributed import Job, JobStatus, Queue, TaskRegistry
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
    registry.every(every_s, "beat", ["tick"])
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
    registry.every(1, "beat", ["second"], name="sec")
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
