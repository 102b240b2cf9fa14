"""course_lib.distributed.worker in batches: one START per read, one SETTLE per turn,
one heartbeat per worker, a read sent with a settle.

Every test takes the ``redis`` fixture (fakeredis, then a real server). What each
checks is that batching keeps the guarantees of one job at a time: a job already
ended is not run again, a settle sent twice settles once, a heartbeat covers every
running entry and tells a reclaimed one apart.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest
from _worker_support import LOG, eventually, fast_worker
from redis.exceptions import ConnectionError as RedisConnectionError

from course_lib.distributed import Job, JobStatus, Queue, TaskRegistry


async def _settled(redis, queue: Queue) -> bool:
    return await redis.xlen(queue.keys.stream) == 0 and (await queue.counts()).pending == 0


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.asyncio
async def test_one_read_with_a_job_that_ended_runs_the_others_and_acks_it(redis, caplog):
    caplog.set_level(logging.INFO, logger=LOG)
    registry = TaskRegistry()
    runs: Counter[str] = Counter()

    @registry.task
    async def work(name: str) -> str:
        runs[name] += 1
        return name.upper()

    queue = Queue(redis)
    ended = await queue.enqueue("work", "b", job_id="b")
    async with fast_worker(redis, registry, concurrency=1):
        assert await ended.result(timeout_s=5) == "B"
    # Three entries read in one batch: the middle one repeats the job that ended.
    await queue.enqueue("work", "a", job_id="a")
    await redis.xadd(queue.keys.stream, {"job": Job("work", ["b"], id="b").encode()})
    await queue.enqueue("work", "c", job_id="c")
    async with fast_worker(redis, registry, concurrency=3) as worker:
        await eventually(lambda: _settled(redis, queue))
        stats = await worker.stats()
    assert runs == {"a": 1, "b": 1, "c": 1}
    assert stats.processed == 2
    assert await queue.handle("a").result(timeout_s=1) == "A"
    assert (await ended.info())["result"] == '"B"'  # final, untouched
    assert await ended.status() is JobStatus.DONE
    assert await redis.llen(queue.keys.done("b")) == 1  # its waiters were woken once
    assert [r.getMessage() for r in caplog.records if "acked as a duplicate" in r.getMessage()]


@pytest.mark.asyncio
async def test_one_heartbeat_call_beats_every_running_entry_and_spots_a_reclaim(redis, caplog):
    registry = TaskRegistry()
    release = asyncio.Event()

    @registry.task
    async def long(n: int) -> int:
        await release.wait()
        return n

    queue = Queue(redis)
    handles = await queue.enqueue_many([("long", [n]) for n in range(3)])
    worker = fast_worker(redis, registry, concurrency=3, heartbeat_s=0.05)
    calls: list[list[str]] = []
    beat = worker._heartbeat.script

    async def counting(keys, args):
        calls.append([_text(a) for a in args[2:]])
        return await beat(keys=keys, args=args)

    worker._heartbeat.script = counting  # type: ignore[assignment]
    async with worker:
        await eventually(lambda: _all_running(handles))
        await eventually(lambda: _at_least(calls, 2))
        pending = await redis.xpending_range(queue.keys.stream, queue.keys.group, "-", "+", 10)
        ids = sorted(_text(p["message_id"]) for p in pending)
        assert sorted(calls[-1]) == ids  # one call, all three entries
        # Another worker takes one entry over (as if this one had looked dead).
        await redis.xclaim(queue.keys.stream, queue.keys.group, "thief", 0, [ids[1]])
        caplog.set_level(logging.WARNING, logger=LOG)
        await eventually(lambda: _logged(caplog, f"entry {ids[1]} was reclaimed"))
        seen = len(calls)
        await eventually(lambda: _at_least(calls, seen + 2))
        assert sorted(calls[-1]) == [ids[0], ids[2]]  # the lost one is not beaten again
        release.set()
        assert [await h.result(timeout_s=5) for h in handles] == [0, 1, 2]
    warnings = [r for r in caplog.records if "was reclaimed" in r.getMessage()]
    assert len(warnings) == 1


async def _all_running(handles) -> bool:
    return all([await h.status() is JobStatus.RUNNING for h in handles])


async def _at_least(calls: list, n: int) -> bool:
    return len(calls) >= n


async def _logged(caplog, text: str) -> bool:
    return any(text in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
@pytest.mark.parametrize("with_read", [False, True], ids=["settle", "settle+read"])
async def test_a_settle_whose_reply_is_lost_is_sent_again_and_settles_once(redis, with_read):
    """The batch ran in Redis, the connection dropped before the reply: sent again, each
    entry's XACK finds it acked, and nothing is written twice."""
    registry = TaskRegistry()
    runs: Counter[int] = Counter()

    async def parked() -> bool:
        return worker._slots.parked

    @registry.task
    async def work(n: int) -> int:
        runs[n] += 1
        if with_read:  # every slot held until the reader waits for one: the settle reads too
            await eventually(parked)
        return n * 10

    queue = Queue(redis)
    handles = await queue.enqueue_many([("work", [n]) for n in range(4)])
    # No reclaim due meanwhile (maintenance_s): a settle then reads nothing, even parked.
    # No read-ahead: the reader waits for a slot once the four run (the read-ahead
    # tests are in test_distributed_worker_read_ahead.py).
    worker = fast_worker(redis, registry, concurrency=4, maintenance_s=60, read_ahead=0)
    codes: list[list[int]] = []
    lost: list[int] = []
    settle = worker._settler.script

    async def recording(keys, args):
        reply = await settle(keys=keys, args=args)
        read_too = reply and isinstance(reply[0], list)  # [codes, entries read]
        codes.append([int(c) for c in (reply[0] if read_too else reply)])
        return reply

    recording.sha = settle.sha  # type: ignore[attr-defined]
    worker._settler.script = recording  # type: ignore[assignment]
    if with_read:
        settle_and_read = worker._reader.read_with_settle

        async def losing(script, keys, args, count):
            reply = await settle_and_read(script, keys, args, count)
            if not lost:
                lost.append(len(reply))
                raise RedisConnectionError("reply lost")
            return reply

        worker._reader.read_with_settle = losing  # type: ignore[method-assign]
    else:
        worker._reader.prefetch_count = lambda settling: 0  # type: ignore[method-assign]

        async def losing_plain(keys, args):
            reply = await recording(keys, args)
            if not lost:
                lost.append(len(reply))
                raise RedisConnectionError("reply lost")
            return reply

        worker._settler.script = losing_plain  # type: ignore[assignment]
    async with worker:
        assert [await h.result(timeout_s=5) for h in handles] == [0, 10, 20, 30]
        await eventually(lambda: _settled(redis, queue))
        stats = await worker.stats()
    assert lost and runs == Counter(range(4))
    assert stats.processed == 4
    if not with_read:
        # The batch went twice: settled (1) the first time, already settled (0) the second.
        first, second = codes[0], codes[1]
        assert set(first) == {1} and second == [0] * len(first)
    for h in handles:
        assert await redis.llen(queue.keys.done(h.id)) == 1  # one token, not two
        assert await h.status() is JobStatus.DONE


@pytest.mark.asyncio
async def test_a_settle_error_that_is_no_outage_is_retried_one_delivery_at_a_time(redis, caplog):
    """A key of the wrong type fails the batch's script mid-way: each delivery is then
    settled alone, so the ones after the bad one are not held back."""
    registry = TaskRegistry()
    gate = asyncio.Event()

    @registry.task
    async def work(n: int) -> int:
        await gate.wait()
        return n

    queue = Queue(redis)
    handles = await queue.enqueue_many([("work", [n]) for n in range(3)])
    worker = fast_worker(redis, registry, concurrency=3, visibility_timeout_s=30)
    worker._reader.prefetch_count = lambda settling: 0  # type: ignore[method-assign]
    async with worker:
        await eventually(lambda: _all_running(handles))
        # Break job 1's done list: LPUSH onto a string is a WRONGTYPE error in the script.
        # (The ack comes last in the script, so job 1's entry stays pending:
        # test_distributed_worker_edges.py checks that.)
        await redis.set(queue.keys.done(handles[1].id), "not a list")
        gate.set()
        assert await handles[0].result(timeout_s=5) == 0
        assert await handles[2].result(timeout_s=5) == 2
        await eventually(lambda: _settled(redis, queue))
    assert any("settling them one at a time" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_settles_go_on_after_the_server_forgets_its_scripts(redis):
    """SCRIPT FLUSH (or a restart) empties the script cache: the settle sent with a read
    gets NOSCRIPT back, and is sent again on its own, loading the script."""
    registry = TaskRegistry()
    gate = asyncio.Event()

    @registry.task
    async def work(n: int) -> int:
        await gate.wait()
        return n

    queue = Queue(redis)
    handles = await queue.enqueue_many([("work", [n]) for n in range(4)])
    # No read-ahead: two run, two wait in the stream for the settle's read.
    worker = fast_worker(redis, registry, concurrency=2, maintenance_s=30, read_ahead=0)
    reads: list[int] = []
    settle_and_read = worker._reader.read_with_settle

    async def counting(script, keys, args, count):
        reads.append(count)
        return await settle_and_read(script, keys, args, count)

    worker._reader.read_with_settle = counting  # type: ignore[method-assign]
    async with worker:
        await eventually(lambda: _count_running(handles, 2))
        await redis.script_flush()
        gate.set()
        assert [await h.result(timeout_s=5) for h in handles] == [0, 1, 2, 3]
        await eventually(lambda: _settled(redis, queue))
        assert (await worker.stats()).processed == 4
    assert reads and reads[0] == 2  # the first settle after the flush read two more


async def _count_running(handles, n: int) -> bool:
    return [await h.status() for h in handles].count(JobStatus.RUNNING) == n
