"""course_lib.distributed.worker: running, retrying, burying, reclaiming, stopping.

Every test takes the ``redis`` fixture (fakeredis, then a real server). Times are
small and real (fakeredis expiry and idle times follow the wall clock); no test
asserts how fast anything is, only bounds that a correct worker meets by far.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter

import pytest
import pytest_asyncio
import redis.asyncio
from _worker_support import LOG, eventually, fast_worker

from course_lib.distributed import (
    Job,
    JobFailed,
    JobStatus,
    Queue,
    TaskRegistry,
    Worker,
)
from course_lib.distributed.worker import _describe
from course_lib.redis import connect, fake_server


@pytest_asyncio.fixture
async def other(redis_url):
    client = await connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def log(caplog):
    caplog.set_level(logging.INFO, logger=LOG)
    return caplog


def _lines(caplog, mark: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOG and mark in r.getMessage()]


# --- the happy path -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_job_runs_and_its_result_comes_back(redis, log):
    registry = TaskRegistry()

    @registry.task
    async def add(a: int, b: int) -> dict[str, int]:
        await asyncio.sleep(0.05)
        return {"sum": a + b}

    queue = Queue(redis, registry=registry)
    handle = await queue.enqueue("add", 2, 3, job_id="add-1")
    async with fast_worker(redis, registry) as worker:
        started = time.monotonic()
        assert await handle.result(timeout_s=5) == {"sum": 5}
        # The job takes 0.05 s: a result() that polled slowly, or missed the wake-up,
        # would take a second or more. A correctness bound, not a speed claim.
        assert time.monotonic() - started < 1.0
        stats = await worker.stats()
    assert await handle.status() is JobStatus.DONE
    assert (stats.processed, stats.failed, stats.retried, stats.dead) == (1, 0, 0, 0)
    assert (stats.pending, stats.lag) == (0, 0)
    assert await redis.xlen(queue.keys.stream) == 0  # settled entries are deleted
    info = await handle.info()
    assert (info["worker"], info["result"]) == (worker.name, '{"sum":5}')
    [start] = _lines(log, "→ add(id=add-1) 1/3")
    [end] = _lines(log, "← add(id=add-1) ok")
    assert start.strip().split()[0].endswith("s") and end.strip().split()[0].endswith("s")


@pytest.mark.asyncio
async def test_result_records_expire_after_result_ttl_s(redis):
    registry = TaskRegistry()

    @registry.task
    async def noop() -> None:
        return None

    queue = Queue(redis)
    handle = await queue.enqueue("noop", job_id="n")
    async with fast_worker(redis, registry, result_ttl_s=60):
        await handle.result(timeout_s=5)
    ttl_ms = await redis.pttl(queue.keys.job("n"))
    assert 0 < ttl_ms <= 60_000
    assert 0 < await redis.pttl(queue.keys.done("n")) <= 60_000
    # Once it expires, the id is free again.
    await redis.delete(queue.keys.job("n"))
    assert (await queue.enqueue("noop", job_id="n")).enqueued


@pytest.mark.asyncio
async def test_status_goes_queued_running_done(redis):
    registry = TaskRegistry()
    release = asyncio.Event()

    @registry.task
    async def wait() -> str:
        await release.wait()
        return "ok"

    handle = await Queue(redis).enqueue("wait")
    assert await handle.status() is JobStatus.QUEUED
    async with fast_worker(redis, registry):
        await eventually(lambda: _is(handle, JobStatus.RUNNING))
        release.set()
        assert await handle.result(timeout_s=5) == "ok"
    assert await handle.status() is JobStatus.DONE


async def _is(handle, status: JobStatus) -> bool:
    return await handle.status() is status


@pytest.mark.asyncio
async def test_an_idempotent_job_id_runs_once(redis):
    registry = TaskRegistry()
    runs = Counter()

    @registry.task
    async def charge(order: int) -> None:
        runs[order] += 1

    queue = Queue(redis)
    handles = [await queue.enqueue("charge", 7, job_id="charge-7") for _ in range(3)]
    async with fast_worker(redis, registry):
        await handles[0].result(timeout_s=5)
        # Even an entry forged with the id of the finished job does not run it again.
        await redis.xadd(queue.keys.stream, {"job": Job("charge", [7], id="charge-7").encode()})
        await eventually(lambda: _stream_empty(redis, queue))
    assert runs == {7: 1}
    assert [h.enqueued for h in handles] == [True, False, False]


async def _stream_empty(redis, queue) -> bool:
    return await redis.xlen(queue.keys.stream) == 0 and (await queue.counts()).pending == 0


@pytest.mark.asyncio
async def test_a_client_that_decodes_responses_works_the_same(redis, redis_url):
    registry = TaskRegistry()

    @registry.task
    async def echo(text: str) -> str:
        return text

    client = await connect(redis_url, decode_responses=True)
    try:
        queue = Queue(client)
        await client.xadd(queue.keys.stream, {"job": "{not json"})
        handle = await queue.enqueue("echo", "héllo")
        async with fast_worker(client, registry) as worker:
            assert await handle.result(timeout_s=5) == "héllo"
            await eventually(lambda: _stream_empty(client, queue))
            assert (await worker.stats()).dead_letters == 1
        [letter] = await queue.dead_letters()
        assert letter.job == b"{not json" and "not JSON" in letter.reason
    finally:
        await client.aclose()


# --- failures -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_failures_retry_with_backoff_then_succeed(redis, log):
    registry = TaskRegistry()
    attempts: list[float] = []

    @registry.task(max_attempts=4)
    async def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise ConnectionError(f"try {len(attempts)}")
        return "finally"

    handle = await Queue(redis, registry=registry).enqueue("flaky", job_id="f")
    async with fast_worker(redis, registry, retry_base_s=0.1, retry_max_s=1.0,
                           retry_jitter="none") as worker:
        await eventually(lambda: _is(handle, JobStatus.RETRYING))
        assert await handle.result(timeout_s=5) == "finally"
        stats = await worker.stats()
    assert (stats.processed, stats.retried, stats.dead) == (1, 2, 0)
    # Exponential backoff, no jitter: 0.1 s, then 0.2 s (never sooner).
    assert attempts[1] - attempts[0] >= 0.1 and attempts[2] - attempts[1] >= 0.2
    retries = _lines(log, "↻ flaky(id=f)")
    assert [line.split("↻ ")[1] for line in retries] == [
        "flaky(id=f) retry 2/4 in 0.10s: ConnectionError",
        "flaky(id=f) retry 3/4 in 0.20s: ConnectionError",
    ]
    info = await handle.info()
    assert (info["attempt"], info["error_type"], info["error"]) == ("3", "ConnectionError",
                                                                    "try 2")


@pytest.mark.asyncio
async def test_a_poison_job_ends_in_the_dead_letter_stream_after_its_attempts(redis, log):
    registry = TaskRegistry()
    calls = []

    @registry.task(max_attempts=3)
    async def poison(image: str) -> None:
        calls.append(image)
        raise ValueError(f"cannot decode {image}")

    queue = Queue(redis, registry=registry)
    handle = await queue.enqueue("poison", "cat.png", job_id="p")
    async with fast_worker(redis, registry) as worker:
        with pytest.raises(JobFailed) as info:
            await handle.result(timeout_s=5)
        stats = await worker.stats()
    assert calls == ["cat.png"] * 3
    assert (info.value.status, info.value.error_type, info.value.error_message) == (
        JobStatus.DEAD, "ValueError", "cannot decode cat.png")
    assert info.value.reason == "gave up after 3 attempt(s)"
    assert (stats.retried, stats.dead, stats.dead_letters, stats.delayed) == (2, 1, 1, 0)
    [letter] = await queue.dead_letters()
    assert (letter.reason, letter.error_type, letter.error) == (
        "gave up after 3 attempt(s)", "ValueError", "cannot decode cat.png")
    assert Job.decode(letter.job).attempt == 3 and letter.worker == worker.name
    assert "Traceback" in (await handle.info())["traceback"]
    assert len(_lines(log, "✗ poison(id=p) dead: gave up after 3 attempt(s)")) == 1
    assert "cat.png" not in " ".join(r.getMessage() for r in log.records)  # no arguments


@pytest.mark.asyncio
async def test_an_error_outside_retry_on_fails_at_once_without_a_dead_letter(redis):
    registry = TaskRegistry()

    @registry.task(retry_on=(ConnectionError,))
    async def strict() -> None:
        raise KeyError("missing")

    queue = Queue(redis, registry=registry)
    handle = await queue.enqueue("strict")
    async with fast_worker(redis, registry) as worker:
        with pytest.raises(JobFailed, match="failed: KeyError is not retried") as info:
            await handle.result(timeout_s=5)
        stats = await worker.stats()
    assert info.value.status is JobStatus.FAILED and info.value.error_type == "KeyError"
    assert (stats.failed, stats.retried, stats.dead_letters) == (1, 0, 0)


@pytest.mark.asyncio
async def test_a_job_over_its_timeout_is_cut_and_retried_then_buried(redis):
    registry = TaskRegistry()
    cancelled = []

    @registry.task(max_attempts=2, timeout_s=0.05)
    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    @registry.task(max_attempts=1)
    async def own_timeout() -> None:
        raise TimeoutError("the upstream API timed out")

    queue = Queue(redis, registry=registry)
    slow_job, own = await queue.enqueue("slow"), await queue.enqueue("own_timeout")
    async with fast_worker(redis, registry):
        with pytest.raises(JobFailed) as info:
            await slow_job.result(timeout_s=5)
        with pytest.raises(JobFailed) as own_info:
            await own.result(timeout_s=5)
    assert cancelled == [True, True]
    assert info.value.reason == "gave up after 2 attempt(s), timed out after 0.05 s"
    assert info.value.error_type == "TimeoutError"
    # A TimeoutError the task raises itself is an ordinary error, not our timeout.
    assert own_info.value.reason == "gave up after 1 attempt(s)"


@pytest.mark.asyncio
async def test_deadlines_stop_late_jobs_and_bound_running_ones(redis):
    registry = TaskRegistry()
    calls = []

    @registry.task(max_attempts=5)
    async def report(n: int) -> None:
        calls.append(n)
        await asyncio.sleep(10)

    queue = Queue(redis, registry=registry)
    late = await queue.enqueue_job(queue.job("report", [1], deadline=time.time() - 1))
    bounded = await queue.enqueue_job(queue.job("report", [2], deadline=time.time() + 0.6))
    async with fast_worker(redis, registry):
        with pytest.raises(JobFailed, match="its deadline passed before it could start"):
            await late.result(timeout_s=5)
        with pytest.raises(JobFailed, match="deadline passes before the next attempt"):
            await bounded.result(timeout_s=5)
    assert calls == [2]


@pytest.mark.asyncio
async def test_a_result_that_is_not_json_fails_the_job(redis):
    registry = TaskRegistry()

    @registry.task
    async def odd() -> object:
        return object()

    handle = await Queue(redis).enqueue("odd")
    async with fast_worker(redis, registry):
        with pytest.raises(JobFailed, match="its result cannot be stored: the result of odd "
                                            "is object, not JSON") as info:
            await handle.result(timeout_s=5)
    assert info.value.status is JobStatus.FAILED


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_malformed_entries_reach_the_dead_letter_stream_and_the_worker_goes_on(redis):
    registry = TaskRegistry()

    @registry.task
    async def ok() -> str:
        return "still working"

    queue = Queue(redis)
    good = Job("ok", id="good").to_dict()
    bad = {  # the reason each one must be given: the fields XADDed straight into the stream
        "not JSON": {"job": b"{oops"},
        "not UTF-8": {"job": b"\x80\x81"},
        "field 'attempt' must be an integer >= 1": {"job": json.dumps(good | {"attempt": "1"})},
        "unknown field(s) 'priority'": {"job": json.dumps(good | {"priority": 9})},
        "over the 524288 byte limit": {"job": json.dumps(good | {"args": ["x" * 600_000]})},
        "the entry has no 'job' field": {"payload": b"\x00\xff"},
        "unknown task 'rm_rf': not registered": {
            "job": json.dumps(good | {"task": "rm_rf", "id": "evil"})},
    }
    origin = {}
    for reason, fields in bad.items():
        origin[_text(await redis.xadd(queue.keys.stream, fields))] = reason
    handle = await queue.enqueue("ok")
    async with fast_worker(redis, registry) as worker:
        assert await handle.result(timeout_s=5) == "still working"
        await eventually(lambda: _stream_empty(redis, queue))
        stats = await worker.stats()
    assert (stats.dead, stats.dead_letters, stats.pending, stats.processed) == (7, 7, 0, 1)
    letters = {letter.origin_id: letter for letter in await queue.dead_letters()}
    assert letters.keys() == origin.keys()
    for origin_id, reason in origin.items():
        assert reason in letters[origin_id].reason
        # Each entry is kept whole: its raw job field, or whatever fields it had.
        fields = bad[reason]
        assert letters[origin_id].job == _bytes(fields.get("job"))
        assert letters[origin_id].extra == {k: _bytes(v) for k, v in fields.items() if k != "job"}
    # The job that named an unknown task is dead, and says why.
    assert await queue.handle("evil").status() is JobStatus.DEAD


def _bytes(value) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


@pytest.mark.asyncio
async def test_an_entry_delivered_too_often_is_buried_as_poison(redis):
    registry = TaskRegistry()
    runs = []

    @registry.task
    async def crashes_workers() -> None:
        runs.append(1)

    queue = Queue(redis)
    await redis.xgroup_create(queue.keys.stream, queue.keys.group, id="0", mkstream=True)
    await queue.enqueue("crashes_workers", job_id="c")
    # Three workers took it and died on it: delivered three times, never settled.
    [[_, [(entry_id, _)]]] = await redis.xreadgroup(queue.keys.group, "dead-1",
                                                    {queue.keys.stream: ">"})
    for consumer in ("dead-2", "dead-3"):
        await redis.xclaim(queue.keys.stream, queue.keys.group, consumer, 0, [entry_id])
    await asyncio.sleep(0.25)
    async with fast_worker(redis, registry, visibility_timeout_s=0.2, max_deliveries=3):
        with pytest.raises(JobFailed, match="delivered 4 times, never settled"):
            await queue.handle("c").result(timeout_s=5)
    assert runs == []


# --- concurrency and sharing ------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("read_ahead", [0, None], ids=["no read-ahead", "default read-ahead"])
async def test_concurrency_is_bounded_and_no_more_is_read_than_can_run(redis, read_ahead):
    """At most ``concurrency`` jobs run; at most ``concurrency + read_ahead`` entries are
    held (read ahead: one batch for these 150 ms jobs, by default), ``concurrency`` with no
    read-ahead."""
    registry = TaskRegistry()
    running, peak = 0, 0

    @registry.task
    async def work(n: int) -> int:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.15)
        running -= 1
        return n

    queue = Queue(redis)
    handles = await queue.enqueue_many([("work", [n]) for n in range(9)])
    most_pending = 0
    async with fast_worker(redis, registry, concurrency=3, read_ahead=read_ahead):
        results = asyncio.gather(*(h.result(timeout_s=10) for h in handles))
        while not results.done():
            most_pending = max(most_pending, (await queue.counts()).pending)
            await asyncio.sleep(0.005)
        assert await results == list(range(9))
    assert peak == 3
    # No read-ahead: read only into free slots, nothing waits in memory. By default one
    # batch (3) more is read and marked running ahead, beaten, handed back at stop.
    assert most_pending <= (3 if read_ahead == 0 else 6)


@pytest.mark.asyncio
async def test_two_workers_share_a_stream_and_each_job_runs_once(redis, other):
    registry = TaskRegistry()
    runs: Counter[int] = Counter()
    by_worker: Counter[str] = Counter()

    @registry.task
    async def work(n: int) -> None:
        runs[n] += 1
        await asyncio.sleep(0.01)

    queue = Queue(redis)
    async with fast_worker(redis, registry, concurrency=2, name="w1") as w1, \
            fast_worker(other, registry, concurrency=2, name="w2") as w2:
        handles = await queue.enqueue_many([("work", [n]) for n in range(20)])
        await asyncio.gather(*(h.result(timeout_s=10) for h in handles))
        for worker in (w1, w2):
            by_worker[worker.name] = (await worker.stats()).processed
    assert runs == Counter(range(20))
    assert sum(by_worker.values()) == 20 and min(by_worker.values()) > 0, by_worker


# --- dead workers, heartbeats -------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_crashed_consumers_job_is_reclaimed_after_the_visibility_timeout(redis, log):
    registry = TaskRegistry()

    @registry.task
    async def job() -> str:
        return "rescued"

    queue = Queue(redis)
    await redis.xgroup_create(queue.keys.stream, queue.keys.group, id="0", mkstream=True)
    handle = await queue.enqueue("job")
    # A consumer reads the entry and dies: it sits in that consumer's PEL, unacked.
    await redis.xreadgroup(queue.keys.group, "crashed", {queue.keys.stream: ">"})
    async with fast_worker(redis, registry, visibility_timeout_s=0.2) as worker:
        assert await handle.result(timeout_s=5) == "rescued"
        assert (await worker.stats()).reclaimed == 1
    assert _lines(log, "reclaimed entry")


@pytest.mark.asyncio
async def test_an_aborted_worker_hands_nothing_back_and_another_reclaims_its_job(redis, other):
    registry = TaskRegistry()
    calls = []
    release = asyncio.Event()

    @registry.task
    async def long() -> str:
        calls.append(1)
        await release.wait()
        return "done by the survivor"

    queue = Queue(redis)
    handle = await queue.enqueue("long")
    crashing = fast_worker(redis, registry, visibility_timeout_s=0.3, name="crashing")
    await crashing.start()
    await eventually(lambda: _is(handle, JobStatus.RUNNING))
    # Marked running comes just before the task's first step: wait for that step too.
    await eventually(lambda: _count(calls, 1))
    await crashing.abort()
    pending = await redis.xpending_range(queue.keys.stream, queue.keys.group, "-", "+", 10)
    assert [_text(p["consumer"]) for p in pending] == ["crashing"]
    release.set()
    async with fast_worker(other, registry, visibility_timeout_s=0.3, name="survivor"):
        assert await handle.result(timeout_s=5) == "done by the survivor"
    assert len(calls) == 2
    assert (await handle.info())["worker"] == "survivor"


@pytest.mark.asyncio
async def test_a_heartbeat_keeps_a_long_job_from_being_reclaimed(redis, other):
    registry = TaskRegistry()
    calls = []

    @registry.task
    async def long() -> str:
        calls.append(1)
        await asyncio.sleep(0.8)  # twice the visibility timeout
        return "once"

    queue = Queue(redis)
    handle = await queue.enqueue("long")
    opts = dict(visibility_timeout_s=0.4, heartbeat_s=0.05)
    async with fast_worker(redis, registry, name="a", **opts) as a:
        await eventually(lambda: _is(handle, JobStatus.RUNNING))
        async with fast_worker(other, registry, name="b", **opts) as b:
            assert await handle.result(timeout_s=5) == "once"
            assert (await b.stats()).reclaimed == 0
        assert (await a.stats()).processed == 1
    assert calls == [1]


@pytest.mark.asyncio
async def test_without_heartbeats_a_long_job_is_stolen_and_runs_twice(redis, other, log):
    """The control experiment: what the heartbeat prevents."""
    registry = TaskRegistry()
    calls = []

    @registry.task
    async def long() -> str:
        calls.append(1)
        await asyncio.sleep(0.5)
        return "twice"

    queue = Queue(redis)
    handle = await queue.enqueue("long")
    opts = dict(visibility_timeout_s=0.2, heartbeat_s=0.19)
    # Worker a neither beats nor reclaims: an XAUTOCLAIM of its own would also
    # reset the idle time of the entry it runs.
    a = fast_worker(redis, registry, name="a", **opts | {"maintenance_s": 3600})

    async def no_heartbeat() -> None:
        pass

    a._heartbeat.beat = no_heartbeat  # type: ignore[method-assign]
    async with a:
        await eventually(lambda: _is(handle, JobStatus.RUNNING))
        async with fast_worker(other, registry, name="b", **opts) as b:
            assert await handle.result(timeout_s=5) == "twice"
            await eventually(lambda: _count(calls, 2))
            await eventually(lambda: _stream_empty(redis, queue))
            assert (await b.stats()).reclaimed == 1
    assert len(calls) == 2
    # Settled once all the same: the second settle found the entry acked already.
    assert (await queue.counts()).pending == 0


async def _count(calls: list[int], n: int) -> bool:
    return len(calls) == n


# --- stopping -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stop_finishes_what_it_can_and_hands_back_the_rest(redis, other, log):
    registry = TaskRegistry()
    release = asyncio.Event()
    calls: Counter[str] = Counter()

    @registry.task
    async def quick() -> str:
        calls["quick"] += 1
        await asyncio.sleep(0.05)
        return "quick"

    @registry.task
    async def stuck() -> str:
        calls["stuck"] += 1
        await release.wait()
        return "finished elsewhere"

    queue = Queue(redis)
    q, s = await queue.enqueue("quick"), await queue.enqueue("stuck", job_id="s")
    worker = fast_worker(redis, registry, name="first")
    await worker.start()
    await eventually(lambda: _is(s, JobStatus.RUNNING))
    report = await worker.stop(grace_s=0.3)
    # The quick job ends within the grace period (if not before stop() even began).
    assert (len(report.finished) <= 1, len(report.cancelled), report.clean) == (True, 1, True)
    assert await q.result(timeout_s=1) == "quick"
    # Handed back: re-added to the stream and acked, in one step; same attempt.
    assert await s.status() is JobStatus.QUEUED
    assert (await queue.counts()).pending == 0 and await redis.xlen(queue.keys.stream) == 1
    assert _lines(log, "⇠ stuck(id=s) handed back")
    assert (await worker.stats()).handed_back == 1
    release.set()
    async with fast_worker(other, registry, name="second"):
        assert await s.result(timeout_s=5) == "finished elsewhere"
    assert calls == {"quick": 1, "stuck": 2}
    assert (await s.info())["attempt"] == "1"


@pytest.mark.asyncio
async def test_stop_is_idempotent_and_a_stopped_worker_cannot_restart(redis):
    worker = fast_worker(redis, TaskRegistry())
    await worker.start()
    first = await worker.stop()
    assert await worker.stop() is first
    assert "stopped" in repr(worker)
    with pytest.raises(RuntimeError, match="cannot be started again"):
        await worker.start()
    # The consumer left the group: it held nothing.
    groups = await redis.xinfo_groups(worker.keys.stream)
    assert groups[0]["consumers"] == 0


@pytest.mark.asyncio
async def test_concurrent_stops_share_one_report(redis):
    registry = TaskRegistry()

    @registry.task
    async def brief() -> None:
        await asyncio.sleep(0.1)

    handle = await Queue(redis).enqueue("brief")
    worker = fast_worker(redis, registry)
    await worker.start()
    await eventually(lambda: _is(handle, JobStatus.RUNNING))
    first, second = await asyncio.gather(worker.stop(grace_s=2), worker.stop(grace_s=0))
    assert first is second and first.clean  # the second waited: grace_s=0 cut nothing
    assert await handle.status() is JobStatus.DONE


@pytest.mark.asyncio
async def test_a_worker_never_started_stops_at_once(redis):
    report = await fast_worker(redis, TaskRegistry()).stop()
    assert report.clean and not report.finished


# --- Redis going away -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_worker_rides_out_a_redis_outage(redis, redis_url, request, log):
    registry = TaskRegistry()

    @registry.task
    async def ping(n: int) -> int:
        return n

    async with fast_worker(redis, registry) as worker:
        handle = await Queue(redis).enqueue("ping", 1)
        assert await handle.result(timeout_s=5) == 1
        if redis_url is None:
            fake_server().connected = False
            try:
                await asyncio.sleep(0.3)
            finally:
                fake_server().connected = True
        else:  # a restart without persistence: the stream and its group are gone too
            server = request.getfixturevalue("redis_server")
            await asyncio.to_thread(server.restart)
        client = await connect(redis_url)
        try:
            handle = await Queue(client).enqueue("ping", 2)
            assert await handle.result(timeout_s=5) == 2
        finally:
            await client.aclose()
        assert (await worker.stats()).processed == 2
    assert _lines(log, "Redis unreachable at") or _lines(log, "consumer group missing")


async def _job_ending_during_an_outage(redis, outage, **worker_options) -> None:
    registry = TaskRegistry()
    release = asyncio.Event()

    @registry.task
    async def slow() -> str:
        await release.wait()
        return "kept"

    handle = await Queue(redis).enqueue("slow")
    async with fast_worker(redis, registry, **worker_options) as worker:
        await eventually(lambda: _is(handle, JobStatus.RUNNING))
        await outage(release)
        assert await handle.result(timeout_s=10) == "kept"
        assert (await worker.stats()).processed == 1


@pytest.mark.asyncio
async def test_a_job_that_ends_during_an_outage_is_settled_when_redis_is_back(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)

    async def outage(release: asyncio.Event) -> None:
        fake_server().connected = False
        try:
            release.set()
            await asyncio.sleep(0.3)  # the settle fails and backs off meanwhile
        finally:
            fake_server().connected = True

    redis = await connect(None)
    try:
        await redis.flushall()
        await _job_ending_during_an_outage(redis, outage)
    finally:
        await redis.aclose()


@pytest.mark.asyncio
async def test_a_job_that_ends_while_redis_restarts_is_settled_after(redis_server_factory):
    server = redis_server_factory(appendonly=True)  # the restart keeps the data

    async def outage(release: asyncio.Event) -> None:
        await asyncio.to_thread(server.stop)
        release.set()
        await asyncio.sleep(0.3)
        await asyncio.to_thread(server.start)

    redis = await connect(server.url)
    try:
        await _job_ending_during_an_outage(redis, outage, visibility_timeout_s=10)
    finally:
        await redis.aclose()


# --- logging -------------------------------------------------------------------------------


def test_the_server_is_described_without_its_password():
    client = redis.asyncio.Redis.from_url("redis://user:s3cret@db.example:6380/2")
    assert _describe(client) == "redis://db.example:6380/2"
    assert _describe(redis.asyncio.Redis.from_url("unix:///run/r.sock?password=s3cret")) == (
        "unix:///run/r.sock?db=0")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="concurrency must be >= 1"):
        Worker(None, TaskRegistry(), concurrency=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block_s must be > 0"):
        Worker(None, TaskRegistry(), block_s=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heartbeat_s must be > 0 and below"):
        Worker(None, TaskRegistry(), visibility_timeout_s=3, heartbeat_s=5)  # type: ignore[arg-type]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
