"""JobHandle.result(): one listener per Queue wakes every waiter, on few connections.

Every test takes the ``redis`` fixture (fakeredis, then a real server), except the
one that kills a server of its own.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio
import redis.exceptions
from _worker_support import fast_worker
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from course_lib.distributed import JobStatus, Queue, QueueClosed, TaskRegistry
from course_lib.redis import connect

# Enough for the enqueue pipeline, the listener's pub/sub connection and its record
# reads; one waiter per connection (as before the listener) needs one per job.
SMALL_POOL = 4


@pytest_asyncio.fixture
async def other(redis_url):
    """A second client of the same server (the worker's, or another process's)."""
    client = await connect(redis_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture
async def small(redis_url, redis):
    """A client whose pool refuses a connection past SMALL_POOL in use at once."""
    client = await connect(redis_url, max_connections=SMALL_POOL)
    yield client
    await client.aclose()


async def _finish(redis, queue: Queue, job_id: str, **record: str) -> None:
    """What a worker's SETTLE does for a job that ended: record, token and publish, at once."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hset(queue.keys.job(job_id), mapping=record)
        pipe.lpush(queue.keys.done(job_id), "done")
        pipe.publish(queue.keys.done(job_id), "done")
        await pipe.execute()


def _others() -> set[asyncio.Task]:
    return asyncio.all_tasks() - {asyncio.current_task()}


async def _until_waiting(queue: Queue, n: int) -> None:
    """Until ``n`` waiters have read their job's record once and wait for it to end."""
    while queue._results.waiting() < n:  # noqa: ASYNC110 (a test may poll; it reads memory)
        await asyncio.sleep(0.01)


@pytest.mark.asyncio
async def test_five_thousand_waiters_get_their_results_on_a_few_connections(request, small,
                                                                           other):
    """5,000 waiters on a real server (1,000 on fakeredis, whose Python server is the slow
    part): every one gets its result through a pool of four connections."""
    n = 5000 if "real" in request.node.name else 1000
    registry = TaskRegistry()

    @registry.task
    async def echo(n: int) -> int:
        return n

    queue = Queue(small)
    handles = await queue.enqueue_many([("echo", [n]) for n in range(n)])
    peak = 0

    async def sample() -> None:  # connections the waiting client holds, while it waits
        nonlocal peak
        while True:
            peak = max(peak, len(small.connection_pool._in_use_connections))
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        waiters = [asyncio.create_task(h.result(timeout_s=100)) for h in handles]
        await asyncio.wait_for(_until_waiting(queue, n), 60)
        assert not any(w.done() for w in waiters)
        async with fast_worker(other, registry, concurrency=100):
            results = await asyncio.gather(*waiters)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    assert results == list(range(n))
    assert 1 <= peak <= SMALL_POOL - 1  # the listener's two; enqueue's was given back
    assert queue._results.waiting() == 0
    assert not _others()  # the listener stopped with its last waiter


@pytest.mark.asyncio
async def test_a_result_that_arrived_before_the_wait_is_not_missed(redis):
    queue = Queue(redis)
    await queue.enqueue("t", job_id="early")
    await queue.enqueue("t", job_id="later")
    await _finish(redis, queue, "early", status="done", result="1")
    assert await queue.handle("early").result(timeout_s=5) == 1  # no listener ran yet
    # And while the listener runs for another waiter: the first read finds it ended.
    waiting = asyncio.create_task(queue.handle("later").result(timeout_s=5))
    await _until_waiting(queue, 1)
    await queue.enqueue("t", job_id="early2")
    await _finish(redis, queue, "early2", status="done", result="2")
    assert await queue.handle("early2").result(timeout_s=5) == 2
    await _finish(redis, queue, "later", status="done", result="3")
    assert await waiting == 3
    assert not _others()


@pytest.mark.asyncio
async def test_a_cancelled_waiter_leaves_and_the_others_still_get_theirs(redis):
    queue = Queue(redis)
    for job_id in ("a", "b"):
        await queue.enqueue("t", job_id=job_id)
    same_job = [asyncio.create_task(queue.handle("a").result(timeout_s=10)) for _ in range(2)]
    other_job = asyncio.create_task(queue.handle("b").result())
    await _until_waiting(queue, 3)
    same_job[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await same_job[0]
    assert queue._results.waiting() == 2
    await _finish(redis, queue, "a", status="done", result=json.dumps("A"))
    await _finish(redis, queue, "b", status="done", result=json.dumps("B"))
    assert (await same_job[1], await other_job) == ("A", "B")
    assert not _others()


@pytest.mark.asyncio
async def test_a_timed_out_waiter_leaves_the_listener_to_the_others(redis):
    queue = Queue(redis)
    for job_id in ("slow", "fast"):
        await queue.enqueue("t", job_id=job_id)
    fast = asyncio.create_task(queue.handle("fast").result())
    await _until_waiting(queue, 1)  # on a busy machine its first read may take a while
    with pytest.raises(TimeoutError, match=r"job 'slow' still queued after 0.05 s"):
        await queue.handle("slow").result(timeout_s=0.05)
    assert queue._results.waiting() == 1
    await _finish(redis, queue, "fast", status="done", result="7")
    assert await fast == 7
    assert not _others()


@pytest.mark.asyncio
async def test_closing_the_queue_fails_its_waiters_and_later_waits(redis):
    queue = Queue(redis, "closing")
    await queue.enqueue("t", job_id="j")
    waiters = [asyncio.create_task(queue.handle("j").result()) for _ in range(3)]
    await _until_waiting(queue, 3)
    await queue.aclose()
    for waiter in waiters:
        with pytest.raises(QueueClosed, match=r"<Queue 'closing'> is closed.*'j'"):
            await waiter
    assert not _others()
    with pytest.raises(QueueClosed):
        await queue.handle("j").result()
    # The job goes on: another Queue still sees it, and closing twice is fine.
    assert await Queue(redis, "closing").handle("j").status() is JobStatus.QUEUED
    await queue.aclose()
    async with Queue(redis, "closing") as again:
        await _finish(redis, again, "j", status="done", result="5")
        assert await again.handle("j").result() == 5


@pytest.mark.asyncio
async def test_losing_redis_fails_every_waiter_with_a_connection_error(redis_server_factory):
    """A real server, killed: fakeredis cannot drop a pub/sub connection mid-read."""
    server = redis_server_factory()
    client = await connect(server.url)
    try:
        queue = Queue(client)
        for job_id in ("x", "y"):
            await queue.enqueue("t", job_id=job_id)
        waiters = [asyncio.create_task(queue.handle(j).result()) for j in ("x", "y", "x")]
        await _until_waiting(queue, 3)
        await asyncio.to_thread(server.kill)
        for waiter in waiters:
            with pytest.raises(redis.exceptions.ConnectionError, match=r"lost Redis while wait"):
                await waiter
        assert not _others()
        # A new wait starts a new listener, once Redis is back.
        await asyncio.to_thread(server.start)
        await queue.enqueue("t", job_id="z")
        await _finish(client, queue, "z", status="done", result="9")
        assert await queue.handle("z").result(timeout_s=5) == 9
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_a_client_that_retries_rides_through_a_restart_and_misses_no_result(
        redis_server_factory):
    """A real server, restarted: redis-py reconnects and resubscribes the listener.

    A job that ends while the listener is away publishes to nobody; the listener
    reads every waiter's record again when its subscription is confirmed again.
    """
    server = redis_server_factory(appendonly=True)
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), 50)
    client = await connect(server.url, retry=retry)
    helper = await connect(server.url, retry=retry)
    try:
        queue = Queue(client)
        await queue.enqueue("t", job_id="r")
        waiter = asyncio.create_task(queue.handle("r").result(timeout_s=30))  # hangs if missed
        await _until_waiting(queue, 1)
        await asyncio.to_thread(server.restart)
        await _finish(helper, queue, "r", status="done", result="42")  # maybe before it is back
        assert await waiter == 42
        assert not _others()
    finally:
        await client.aclose()
        await helper.aclose()
