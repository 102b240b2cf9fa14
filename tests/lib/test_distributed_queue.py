"""course_lib.distributed.queue: enqueue (idempotent, batched), results, the delayed-set mover.

Every test takes the ``redis`` fixture, so it runs on fakeredis and on a real server.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections import Counter

import pytest
import pytest_asyncio

from course_lib.distributed import (
    InvalidJob,
    Job,
    JobFailed,
    JobNotFound,
    JobStatus,
    Queue,
    QueueCounts,
    TaskRegistry,
)
from course_lib.redis import connect


@pytest_asyncio.fixture
async def other(redis_url):
    """A second client of the same server (another process, as far as Redis can tell)."""
    client = await connect(redis_url)
    yield client
    await client.aclose()


async def _entries(redis, queue: Queue) -> list[Job]:
    return [Job.decode(fields[b"job"]) for _, fields in await redis.xrange(queue.keys.stream)]


async def _finish(redis, queue: Queue, job_id: str, **record: str) -> None:
    """What a worker's settle does for a finished job: record, token and publish, atomically."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(queue.keys.job(job_id), mapping=record)
        pipe.lpush(queue.keys.done(job_id), "done")
        pipe.publish(queue.keys.done(job_id), "done")
        await pipe.execute()


# --- enqueue ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_enqueue_adds_one_json_entry_and_a_queued_record(redis):
    queue = Queue(redis, "images")
    handle = await queue.enqueue("resize", 42, width=640)
    assert handle.enqueued is True
    assert repr(handle) == f"<JobHandle resize id={handle.id!r} queue='images'>"
    [job] = await _entries(redis, queue)
    assert (job.id, job.task, job.args, job.kwargs, job.attempt) == (
        handle.id, "resize", (42,), {"width": 640}, 1)
    assert await handle.status() is JobStatus.QUEUED
    info = await handle.info()
    assert (info["status"], info["task"], info["attempt"], info["max_attempts"]) == (
        "queued", "resize", "1", "3")


@pytest.mark.asyncio
async def test_the_same_job_id_is_enqueued_once(redis):
    queue = Queue(redis)
    first = await queue.enqueue("send_invoice", 7, job_id="invoice-7")
    again = await queue.enqueue("send_invoice", 7, job_id="invoice-7")
    assert (first.enqueued, again.enqueued) == (True, False)
    assert first.id == again.id == "invoice-7"
    assert await redis.xlen(queue.keys.stream) == 1


@pytest.mark.asyncio
async def test_racing_enqueues_of_one_id_from_two_clients_add_it_once(redis, other):
    queues = [Queue(redis), Queue(other)]
    handles = await asyncio.gather(*(queues[i % 2].enqueue("t", i, job_id="once")
                                     for i in range(20)))
    assert sum(h.enqueued for h in handles) == 1
    assert await redis.xlen(queues[0].keys.stream) == 1


@pytest.mark.asyncio
async def test_arguments_that_are_not_json_are_refused_before_reaching_redis(redis):
    queue = Queue(redis)
    with pytest.raises(InvalidJob, match=r"resize args\[0\] is datetime, not JSON"):
        await queue.enqueue("resize", datetime.datetime.now())
    with pytest.raises(InvalidJob, match=r"over the 524288 byte limit"):
        await queue.enqueue("resize", "x" * 600_000)
    assert await redis.exists(queue.keys.stream) == 0


@pytest.mark.asyncio
async def test_a_registry_refuses_unknown_tasks_and_supplies_defaults(redis):
    registry = TaskRegistry()

    @registry.task(max_attempts=5, timeout_s=2.5)
    async def resize(image_id: int) -> None: ...

    queue = Queue(redis, registry=registry)
    # InvalidJob, as for any job refused before it reaches Redis (the docstrings say so).
    with pytest.raises(InvalidJob, match="no task 'rezise'"):
        await queue.enqueue("rezise", 1)
    with pytest.raises(InvalidJob, match="no task 'rezise'"):
        queue.job("rezise")
    with pytest.raises(InvalidJob, match="no task 'rezise'"):
        await queue.enqueue_many([("resize", [1]), ("rezise", [2])])
    assert await redis.xlen(queue.keys.stream) == 0
    await queue.enqueue("resize", 1)
    await queue.enqueue_job(queue.job("resize", [2], max_attempts=1, timeout_s=9,
                                      deadline=time.time() + 60, job_id="custom"))
    first, second = await _entries(redis, queue)
    assert (first.max_attempts, first.timeout_s) == (5, 2.5)
    assert (second.max_attempts, second.timeout_s, second.id) == (1, 9, "custom")
    assert second.deadline is not None


@pytest.mark.asyncio
async def test_enqueue_many_is_one_round_trip_in_order_with_ids_checked_each(redis):
    queue = Queue(redis)
    await queue.enqueue("t", job_id="old")
    handles = await queue.enqueue_many([
        ("t", [1]),
        ("t", [2], {"k": "v"}),
        Job("t", [3], id="old"),   # exists already
        Job("t", [4], id="new"),
        Job("t", [5], id="new"),   # twice in one batch
    ])  # fmt: skip
    assert [h.enqueued for h in handles] == [True, True, False, True, False]
    assert [j.args for j in await _entries(redis, queue)] == [(), (1,), (2,), (4,)]
    assert (await _entries(redis, queue))[2].kwargs == {"k": "v"}
    assert await queue.enqueue_many([]) == []


@pytest.mark.asyncio
async def test_enqueue_many_with_one_bad_job_adds_none(redis):
    queue = Queue(redis)
    with pytest.raises(InvalidJob, match=r"t args\[0\] is set"):
        await queue.enqueue_many([("t", [1]), ("t", [{1, 2}])])
    assert await redis.exists(queue.keys.stream) == 0


# --- status and result --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_unknown_job_has_no_status_and_no_result(redis):
    handle = Queue(redis).handle("never-enqueued")
    assert await handle.status() is None
    assert await handle.info() == {}
    with pytest.raises(JobNotFound, match="no job 'never-enqueued'"):
        await handle.result()


@pytest.mark.asyncio
async def test_result_times_out_while_the_job_is_not_finished(redis):
    handle = await Queue(redis).enqueue("t")
    with pytest.raises(TimeoutError, match=r"still queued after 0.1 s"):
        await handle.result(timeout_s=0.1)


@pytest.mark.asyncio
async def test_result_wakes_every_waiter_at_once_without_polling(redis, other, redis_url):
    queue = Queue(redis)
    handle = await queue.enqueue("t", job_id="j")
    # Each waiter on a client of its own, whose commands are counted: a polling
    # wait would send dozens in the 0.2 s the job takes; a blocking one sends 3.
    clients, calls = [], Counter()
    for n in range(3):
        client = await connect(redis_url)
        original = client.execute_command

        async def counted(*args, _n=n, _original=original, **kw):
            calls[_n] += 1
            return await _original(*args, **kw)

        client.execute_command = counted
        clients.append(client)
    try:
        waiters = [asyncio.create_task(Queue(c).handle("j").result(timeout_s=10))
                   for c in clients]
        await asyncio.sleep(0.2)
        assert not any(w.done() for w in waiters)
        finished = time.monotonic()
        await _finish(other, queue, "j", status="done", result=json.dumps({"w": 640}))
        results = await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
        assert time.monotonic() - finished < 1.0  # a correctness bound, not a speed claim
        assert results == [{"w": 640}] * 3
        assert all(count <= 4 for count in calls.values()), calls
        assert await handle.result() == {"w": 640}  # the token stays for later callers
    finally:
        for client in clients:
            await client.aclose()


@pytest.mark.asyncio
async def test_result_raises_job_failed_with_the_remote_error(redis):
    queue = Queue(redis)
    handle = await queue.enqueue("resize", job_id="j")
    await _finish(redis, queue, "j", status="dead", error_type="ValueError",
                  error="bad image", reason="gave up after 3 attempt(s)")
    with pytest.raises(JobFailed) as info:
        await handle.result(timeout_s=1)
    assert (info.value.status, info.value.error_type, info.value.error_message) == (
        JobStatus.DEAD, "ValueError", "bad image")
    assert info.value.task == "resize"


# --- the delayed set ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_movers_move_each_due_job_exactly_once(redis, other):
    queues = [Queue(redis), Queue(other)]
    keys = queues[0].keys
    now = time.time()
    due = {Job("t", [n], id=f"due-{n}").encode(): now - n for n in range(60)}
    later = {Job("t", [n], id=f"later-{n}").encode(): now + 3600 for n in range(5)}
    await redis.zadd(keys.delayed, due | later)

    async def mover(queue: Queue) -> int:
        moved = 0
        while n := await queue.move_due(now_s=now, limit=4):
            moved += n
            await asyncio.sleep(0)
        return moved

    counts = await asyncio.gather(*(mover(queues[i % 2]) for i in range(6)))
    assert sum(counts) == 60
    ids = Counter(job.id for job in await _entries(redis, queues[0]))
    assert ids == Counter({f"due-{n}": 1 for n in range(60)})
    assert await redis.zcard(keys.delayed) == 5  # not due: left alone


@pytest.mark.asyncio
async def test_counts_of_an_empty_and_a_busy_queue(redis):
    queue = Queue(redis)
    assert await queue.counts() == QueueCounts(0, 0, 0, 0, 0, 0)
    await redis.xgroup_create(queue.keys.stream, queue.keys.group, id="0", mkstream=True)
    await queue.enqueue_many([("t", [n]) for n in range(3)])
    await redis.xreadgroup(queue.keys.group, "c1", {queue.keys.stream: ">"}, count=1)
    counts = await queue.counts()
    assert (counts.stream, counts.pending, counts.lag, counts.consumers) == (3, 1, 2, 1)
