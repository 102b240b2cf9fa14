"""Queue.requeue_dead: dead jobs go back with a fresh set of attempts, once, or stay dead.

Every test takes the ``redis`` fixture (fakeredis, then a real server). Jobs die for
real, in a worker, before they are requeued.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from _worker_support import FAST

from course_lib.distributed import (
    Job,
    JobFailed,
    JobStatus,
    Queue,
    RequeueReport,
    TaskRegistry,
    Worker,
)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _dead_letters_ready(queue: Queue, n: int, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while (await queue.counts()).dead < n:  # noqa: ASYNC110 (state in Redis)
            await asyncio.sleep(0.01)


def _flaky_registry(fixed: dict[str, bool]) -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task(max_attempts=2)
    async def thumbnail(image: str, width: int = 64) -> str:
        if not fixed["yes"]:
            raise ValueError(f"cannot decode {image}")
        return f"{image}@{width}"

    return registry


@pytest.mark.asyncio
async def test_a_dead_job_requeued_runs_again_and_its_result_comes_back(redis):
    fixed = {"yes": False}
    registry = _flaky_registry(fixed)
    queue = Queue(redis, registry=registry)
    handle = await queue.enqueue("thumbnail", "cat.png", width=32, job_id="t1")
    async with Worker(redis, registry, **FAST):
        with pytest.raises(JobFailed) as info:
            await handle.result(timeout_s=5)
    assert info.value.status is JobStatus.DEAD
    assert await handle.status() is JobStatus.DEAD
    [letter] = await queue.dead_letters()
    assert Job.decode(letter.job).attempt == 2

    report = await queue.requeue_dead()

    assert report == RequeueReport(requeued={letter.entry_id: "t1"}, refused={})
    assert report.ok
    # The record is queued again, with a fresh set of attempts and nothing of the last run.
    assert await handle.status() is JobStatus.QUEUED
    record = await handle.info()
    assert (record["attempt"], record["max_attempts"], record["task"]) == ("1", "2", "thumbnail")
    assert not {"error", "error_type", "traceback", "reason", "result", "finished_at"} & set(record)
    assert await redis.ttl(queue.keys.job("t1")) == -1  # a queued record does not expire
    assert await redis.exists(queue.keys.done("t1")) == 0
    # The same job is back in the stream at attempt 1; the dead letter is gone.
    [(entry_id, fields)] = await redis.xrange(queue.keys.stream)
    job = Job.decode(fields[b"job"])
    assert (job.id, job.task, job.args, job.kwargs) == ("t1", "thumbnail", ("cat.png",),
                                                        {"width": 32})
    assert (job.attempt, job.max_attempts) == (1, 2)
    assert record["entry"] == _text(entry_id)
    assert (await queue.counts()).dead == 0
    # result() waits for the new run: the dead outcome's token is gone.
    with pytest.raises(TimeoutError):
        await handle.result(timeout_s=0.2)

    fixed["yes"] = True  # the fix is deployed
    async with Worker(redis, registry, **FAST):
        assert await handle.result(timeout_s=5) == "cat.png@32"
    assert await handle.status() is JobStatus.DONE
    assert (await handle.info())["attempt"] == "1"


@pytest.mark.asyncio
async def test_requeueing_the_same_entry_twice_puts_it_back_once(redis):
    registry = _flaky_registry({"yes": False})
    queue = Queue(redis, registry=registry)
    for n in range(3):
        await queue.enqueue_job(queue.job("thumbnail", [f"{n}.png"], job_id=f"j{n}",
                                          max_attempts=1))
    async with Worker(redis, registry, **FAST):
        await _dead_letters_ready(queue, 3)
    # Dead in any order (they ran at once): by job id.
    letters = {Job.decode(letter.job).id: letter.entry_id for letter in await queue.dead_letters()}
    one, two, three = letters["j0"], letters["j1"], letters["j2"]

    first = await queue.requeue_dead([one])
    again = await queue.requeue_dead([one])
    assert first.requeued == {one: "j0"}
    assert again.requeued == {} and "not in the dead-letter stream" in again.refused[one]
    # Two requeues racing (two operators, or a retry after a lost reply): one wins.
    racing = await asyncio.gather(queue.requeue_dead([two]), queue.requeue_dead([two, two]))
    assert sorted(len(r.requeued) for r in racing) == [0, 1]
    # A job whose id is no longer dead (it was requeued from another letter) stays put.
    await redis.hset(queue.keys.job("j2"), "status", "running")
    late = await queue.requeue_dead([three])
    assert late.refused == {three: "its job id is running now, not dead"}
    assert (await queue.counts()).stream == 2
    assert [letter.entry_id for letter in await queue.dead_letters()] == [three]  # j2's


@pytest.mark.asyncio
async def test_entries_that_are_not_jobs_are_refused_and_stay_dead(redis):
    registry = TaskRegistry()

    @registry.task
    async def ok() -> str:
        return "fine"

    queue = Queue(redis)
    good = Job("ok", id="good").to_dict()
    bad = {
        "not JSON": {"job": b"{oops"},
        "missing field(s) 'attempt'": {"job": json.dumps({k: v for k, v in good.items()
                                                          if k != "attempt"})},
        "over the 524288 byte limit": {"job": json.dumps(good | {"args": ["x" * 600_000]})},
        "holds no 'job' field": {"payload": b"\x00\xff"},
    }
    for fields in bad.values():
        await redis.xadd(queue.keys.stream, fields)
    # A job for a task this worker does not know yet: dead now, fine once deployed.
    later = json.dumps(good | {"task": "later", "id": "later-1"})
    await redis.xadd(queue.keys.stream, {"job": later, "trace": b"abc"})
    async with Worker(redis, registry, **FAST):
        await _dead_letters_ready(queue, 5)
    letters = await queue.dead_letters()

    report = await queue.requeue_dead()

    [later_letter] = [letter.entry_id for letter in letters if b"later-1" in (letter.job or b"")]
    assert report.requeued == {later_letter: "later-1"}
    assert not report.ok and len(report.refused) == 4
    for reason in bad:
        assert sum(reason in why for why in report.refused.values()) == 1, reason
    assert {letter.entry_id for letter in await queue.dead_letters()} == set(report.refused)
    # The requeued entry keeps the original entry's other fields.
    [(_, fields)] = await redis.xrange(queue.keys.stream)
    assert fields[b"trace"] == b"abc" and Job.decode(fields[b"job"]).task == "later"
    # Ids that are no dead letters are refused too.
    missing = await queue.requeue_dead(["1-0", "nonsense", "123"])
    assert set(missing.refused) == {"1-0", "nonsense", "123"}
    assert "not in the dead-letter stream" in missing.refused["1-0"]
    assert "not a stream entry id" in missing.refused["nonsense"]
    assert "not a stream entry id" in missing.refused["123"]


@pytest.mark.asyncio
async def test_jobs_that_cannot_run_again_are_refused(redis):
    queue = Queue(redis)
    registry = TaskRegistry()

    @registry.task
    async def known() -> None: ...

    expired = Job("known", id="expired", deadline=time.time() - 1).encode()
    unknown = Job("gone", id="gone-1").encode()
    first = _text(await redis.xadd(queue.keys.dead, {"reason": "test", "job": expired}))
    second = _text(await redis.xadd(queue.keys.dead, {"reason": "test", "job": unknown}))

    report = await Queue(redis, registry=registry).requeue_dead()

    assert "deadline has passed" in report.refused[first]
    assert "unknown task 'gone'" in report.refused[second]
    assert report.requeued == {} and (await queue.counts()).dead == 2
