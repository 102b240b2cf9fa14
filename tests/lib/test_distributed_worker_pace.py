"""The worker at its pace: read-ahead that follows the jobs' speed, settles that wait
for a call in flight.

- Read-ahead (``Slots``): up to ``read_ahead`` entries (default 100) may wait read and
  marked running, but the reader takes only as many as the worker starts in
  ``AHEAD_S`` (10 ms) at its recent pace, one batch at least, and drops back to one
  batch when the stream runs dry. Short jobs get the whole read-ahead; long jobs, one
  batch, so a busy worker does not hoard entries an idle one could run.
- Settles (``Settler``): at most ``IN_FLIGHT`` SETTLE calls at once; the jobs that end
  meanwhile go together in the next call, and a stop waits for that call too.

On fakeredis and a real server (``redis``).
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from _worker_support import eventually, fast_worker

from course_lib.distributed import JobStatus, Queue, TaskRegistry, Worker
from course_lib.distributed.control import AHEAD_S
from course_lib.distributed.settling import IN_FLIGHT


async def _watch_pending(queue: Queue, done: asyncio.Future, seen: list[int]) -> None:
    while not done.done():
        seen.append((await queue.counts()).pending)
        await asyncio.sleep(0.005)


async def _settled(redis, queue: Queue) -> bool:
    return await redis.xlen(queue.keys.stream) == 0 and (await queue.counts()).pending == 0


def _registry() -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task
    async def quick(n: int) -> int:
        return n

    @registry.task
    async def slow(n: int) -> int:
        await asyncio.sleep(0.02)
        return n

    return registry


# Concurrency 1 (one batch is one entry): more than one ahead needs a pace over 100
# jobs a second, which any machine gives no-op jobs, on fakeredis or a real server.


@pytest.mark.asyncio
async def test_short_jobs_get_more_read_ahead_than_one_batch_never_more_than_the_bound(redis):
    queue = Queue(redis)
    await queue.enqueue_many([("quick", [n]) for n in range(600)])
    worker = fast_worker(redis, _registry(), concurrency=1, read_ahead=40)
    pending: list[int] = []
    ahead: list[int] = []
    async with worker:
        done = asyncio.ensure_future(eventually(lambda: _settled(redis, queue), 30))
        watch = asyncio.ensure_future(_watch_pending(queue, done, pending))
        while not done.done():
            ahead.append(worker._slots.ahead)
            await asyncio.sleep(0.001)
        await done
        await watch
        assert (await worker.stats()).processed == 600
    assert max(pending) <= 1 + 40  # concurrency + read_ahead: the bound holds
    # One batch (1) at first; at the pace of no-op jobs, more is read ahead.
    assert max(ahead) > 1 and max(pending) > 1 + 1, (max(ahead), max(pending))


@pytest.mark.asyncio
async def test_long_jobs_after_a_burst_of_short_ones_get_one_batch_ahead(redis):
    """The pace of the burst does not carry over: the stream ran dry in between."""
    queue = Queue(redis)
    worker = fast_worker(redis, _registry(), concurrency=1, read_ahead=40)
    async with worker:
        await queue.enqueue_many([("quick", [n]) for n in range(300)])
        ahead: list[int] = []
        while not await _settled(redis, queue):
            ahead.append(worker._slots.ahead)
            await asyncio.sleep(0.001)
        assert max(ahead) > 1  # the burst's pace took more than a batch
        pending: list[int] = []
        handles = await queue.enqueue_many([("slow", [n]) for n in range(12)])
        results = asyncio.ensure_future(asyncio.gather(*(h.result(timeout_s=30)
                                                         for h in handles)))
        await _watch_pending(queue, results, pending)
        assert await results == list(range(12))
    # 1 running and one batch (1) ahead: the other 10 stay in the stream, for any worker.
    assert max(pending) <= 2, max(pending)



@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_read_ahead_is_what_the_worker_starts_in_about_10_ms(fake):
    """In virtual time: 1 ms jobs, two at a time, run 2,000 a second, so 20 are read
    ahead (of the 40 allowed); 5 ms jobs, 400 a second: 4."""
    registry = TaskRegistry()

    @registry.task
    async def work(run_s: float) -> None:
        await asyncio.sleep(run_s)

    queue = Queue(fake)
    worker = Worker(fake, registry, concurrency=2, read_ahead=40, block_s=0.1)
    usual: dict[float, int] = {}
    async with worker:
        for run_s in (0.001, 0.005):
            await queue.enqueue_many([("work", [run_s]) for _ in range(400)])
            seen: Counter[int] = Counter()
            while not await _settled(fake, queue):
                seen[worker._slots.ahead] += 1
                await asyncio.sleep(0.001)
            assert max(seen) <= 40
            # The value it held longest; one batch (2) before the first window of 50 ms,
            # and after the stream ran dry.
            usual[run_s] = max((ahead for ahead in seen if ahead > 2), key=seen.__getitem__)
    assert AHEAD_S == 0.010
    assert usual == {0.001: 20, 0.005: 4}, usual


@pytest.mark.asyncio
async def test_settles_wait_for_a_call_in_flight_then_go_together_and_stop_waits(redis):
    """Two SETTLE calls held in Redis's way: the eight jobs that end meanwhile go in one
    call when one returns. A stop that comes meanwhile waits for that call too."""
    registry = TaskRegistry()

    @registry.task
    async def work(n: int) -> int:
        await asyncio.sleep(0.01 * n)  # each ends in a turn of its own
        return n

    queue = Queue(redis)
    handles = await queue.enqueue_many([("work", [n]) for n in range(10)])
    worker = fast_worker(redis, registry, concurrency=10, read_ahead=0, grace_s=5)
    worker._reader.prefetch_count = lambda settling: 0  # type: ignore[method-assign]
    settle = worker._settler.script
    gate = asyncio.Event()
    sizes: list[int] = []

    async def held(keys, args):
        sizes.append((len(keys) - 3) // 2)  # 3 keys of the queue, then 2 per delivery
        if len(sizes) <= IN_FLIGHT:
            await gate.wait()
        else:  # the call they waited for: still in flight when the first two are done
            await asyncio.sleep(0.1)
        return await settle(keys=keys, args=args)

    held.sha = settle.sha  # type: ignore[attr-defined]
    worker._settler.script = held  # type: ignore[assignment]
    await worker.start()
    await eventually(lambda: _all_ran(handles), timeout_s=5)
    assert sizes == [1] * IN_FLIGHT  # the others wait: no call of their own
    close = worker._settler.close
    closing = asyncio.Event()

    async def noted_close() -> None:
        closing.set()
        await close()

    worker._settler.close = noted_close  # type: ignore[method-assign]
    stopping = asyncio.ensure_future(worker.stop())
    await asyncio.wait_for(closing.wait(), 5)  # the stop waits for the settles now
    await asyncio.sleep(0.01)
    gate.set()
    await stopping
    assert sizes == [1] * IN_FLIGHT + [10 - IN_FLIGHT]
    assert [await h.result(timeout_s=1) for h in handles] == list(range(10))
    assert await _settled(redis, queue)  # none left pending by the stop


async def _all_ran(handles) -> bool:
    # RUNNING until settled: all ten have started and (sleeping at most 0.09 s) ended
    # once the last has been running for a while; the sizes check proves they ended.
    statuses = [await h.status() for h in handles]
    if statuses != [JobStatus.RUNNING] * 10:
        return False
    await asyncio.sleep(0.15)
    return True


@pytest.mark.asyncio
async def test_a_stop_that_cancels_hung_settles_sends_nothing_after_it(redis, caplog):
    """Redis never answers the two calls in flight: the stop cancels them after
    ``cancel_timeout_s``, and the settles queued behind them are not sent by a cancelled
    call on its way out (they stay pending, reclaimed later)."""
    registry = TaskRegistry()

    @registry.task
    async def work(n: int) -> int:
        await asyncio.sleep(0.01 * n)
        return n

    queue = Queue(redis)
    await queue.enqueue_many([("work", [n]) for n in range(5)])
    worker = fast_worker(redis, registry, concurrency=5, read_ahead=0, grace_s=0.1,
                         cancel_timeout_s=0.2)
    worker._reader.prefetch_count = lambda settling: 0  # type: ignore[method-assign]
    calls: list[int] = []

    async def hung(keys, args):
        calls.append((len(keys) - 3) // 2)
        await asyncio.Event().wait()  # a frozen server

    hung.sha = worker._settler.script.sha  # type: ignore[attr-defined]
    worker._settler.script = hung  # type: ignore[assignment]
    await worker.start()
    await eventually(lambda: _ran_all(worker, 5))
    await worker.stop()
    assert calls == [1] * IN_FLIGHT
    await asyncio.sleep(0.1)
    assert calls == [1] * IN_FLIGHT  # nothing sent after the stop
    assert not [t for t in asyncio.all_tasks() if t.get_name().endswith(" settle")]
    assert (await queue.counts()).pending == 5  # left for reclaim, nothing lost


async def _ran_all(worker, n: int) -> bool:
    return (await worker.stats()).processed + len(worker._settler._settles) >= n
