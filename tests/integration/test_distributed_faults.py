"""The job queue under real faults: worker processes SIGKILLed, the Redis server restarted,
garbage written straight into the stream. Each test has a redis-server of its own
(``redis_server_factory``) and runs workers as separate processes through the
command line (``python -m course_lib.distributed worker --app
tests.integration._fault_app:registry``), each logging to a file in the test's
temporary folder; the last lines of every log are printed when a test ends,
so a failure shows them.

Bounded in time: every wait has a deadline and each test a pytest timeout. Worker
processes stay in pytest's process group (a Ctrl-C or a CI kill of the group takes
them along) and are SIGKILLed by pid when the test ends, whatever happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from course_lib.distributed import MAX_JOB_BYTES, Job, JobStatus, Queue
from course_lib.redis import connect

pytestmark = pytest.mark.real_redis

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.integration._fault_app:registry"
RUNS = "faults:runs"  # _fault_app.RUNS: one key per execution of `work`
READY_TIMEOUT_S = 30.0  # a Python process importing course_lib, on a busy 2-core machine


# --- worker processes -------------------------------------------------------------------


def _worker_command(url: str, name: str, *, concurrency: int, visibility_timeout_s: float,
                    block_s: float = 0.2, grace_s: float = 5.0) -> list[str]:
    options = ["--app", APP, "--name", name, "--concurrency", str(concurrency),
               "--visibility-timeout", str(visibility_timeout_s), "--block", str(block_s),
               "--grace", str(grace_s)]  # fmt: skip
    # -q: warnings only (reclaims, outages, dead letters); a line per job costs CPU
    # that this 2-core machine shares with the test and the other workers.
    return [sys.executable, "-m", "course_lib.distributed", "--redis-url", url, "-q", "worker",
            *options]


class Workers:
    """The worker processes of one test, by name; ``close()`` SIGKILLs what still runs.

        workers.start(url, "w1", concurrency=4, visibility_timeout_s=2)
        await workers.wait_ready("w1")
        workers.kill("w1")              # SIGKILL: a crash
        workers.stop_all()              # SIGTERM: {"w1": exit code, ...}
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, url: str, name: str, **options: float) -> subprocess.Popen[bytes]:
        assert name not in self.procs, f"worker name {name!r} used twice"
        with (self.folder / f"{name}.log").open("wb") as log:  # the child keeps its own copy
            proc = subprocess.Popen(
                _worker_command(url, name, **options),  # type: ignore[arg-type]
                cwd=ROOT, env={**os.environ, "REDIS_URL": url},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def tail(self, name: str, lines: int = 15) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    def ready(self, name: str) -> bool:
        return f"worker {name} ready" in self.log(name)

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    async def wait_ready(self, *names: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        for name in names:
            while not self.ready(name):
                code = self.procs[name].poll()
                if code is not None:
                    raise AssertionError(f"worker {name} exited ({code}) before it was ready:\n"
                                         f"{self.tail(name)}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker {name} not ready after {timeout_s} s:\n"
                                         f"{self.tail(name)}")
                await asyncio.sleep(0.05)

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self, timeout_s: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every running worker; their exit codes (None: still running at the end)."""
        running = {n: p for n, p in self.procs.items() if p.poll() is None}
        for proc in running.values():
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: dict[str, int | None] = {}
        for name, proc in running.items():
            try:
                codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                codes[name] = None
        return codes

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        for name in self.procs:
            print(f"--- worker {name}, last lines:\n{self.tail(name)}")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    made = Workers(tmp_path)
    try:
        yield made
    finally:
        made.close()


async def _until(predicate: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout_s} s waiting until {what}")
        await asyncio.sleep(0.02)


async def _each(r: redis.asyncio.Redis, command: str, keys: list[str], *args: object) -> list:
    """``command key *args`` for every key, in one round trip."""
    async with r.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.execute_command(command, key, *args)
        return await pipe.execute()


async def _check_settled_once(r: redis.asyncio.Redis, queue: Queue, ids: list[str]) -> None:
    """Every job ran one attempt and was settled exactly once.

    The settle script pushes the job's done token in the same step as the final
    status, and does nothing when its XACK acks nothing. A job settled twice (a
    double ack) would hold two tokens; one retried (attempt 2) was failed once.
    """
    tokens = await _each(r, "LLEN", [queue.keys.done(i) for i in ids])
    assert {i: n for i, n in zip(ids, tokens, strict=True) if n != 1} == {}
    attempts = await _each(r, "HGET", [queue.keys.job(i) for i in ids], "attempt")
    assert {i: a for i, a in zip(ids, attempts, strict=True) if a != b"1"} == {}


async def _check_queue_empty(queue: Queue, dead: int = 0) -> None:
    """Nothing queued, pending or delayed; ``dead`` dead letters."""
    counts = await queue.counts()
    assert (counts.stream, counts.pending, counts.delayed, counts.dead) == (0, 0, 0, dead), counts


# --- SIGKILLed workers ----------------------------------------------------------------------

JOBS = 2_000
SLOTS = 3  # worker processes at a time
KILLS = 6
VISIBILITY_S = 2.0
# A dead consumer's entry is reclaimed once idle VISIBILITY_S; its idle time was
# reset at worst one heartbeat (VISIBILITY_S / 3, the default) before the kill.
RECLAIM_NOT_BEFORE_S = VISIBILITY_S * 2 / 3


async def _jobs_held_by(r: redis.asyncio.Redis, queue: Queue, consumer: str) -> set[str]:
    """The ids of the jobs in ``consumer``'s pending list: delivered to it, not settled."""
    pending = await r.xpending_range(queue.keys.stream, queue.keys.group, "-", "+", 10_000,
                                     consumername=consumer)
    async with r.pipeline(transaction=False) as pipe:
        for p in pending:
            pipe.xrange(queue.keys.stream, p["message_id"], p["message_id"], count=1)
        replies = await pipe.execute()
    # An unsettled entry is still in the stream (a settle XACKs and XDELs in one step).
    return {json.loads(fields[b"job"])["id"] for reply in replies for _, fields in reply}


@pytest.mark.timeout(120)
@pytest.mark.asyncio
async def test_sigkilled_workers_lose_no_job_and_rerun_only_what_they_held(
    redis_server_factory, workers
):
    """2,000 jobs, 3 worker processes, one SIGKILLed about every 0.6 s and replaced.

    What was in flight at a kill is read from Redis itself: right after the
    SIGKILL (the process is reaped: it sends nothing more), XPENDING for the
    killed consumer lists every entry it had read and not settled, and each such
    entry is still in the stream, so its job id can be read. No other worker can
    have taken these entries yet: they are reclaimed only once idle for the
    visibility timeout (2 s), and each was delivered, or had its idle time reset
    by a heartbeat, at most one heartbeat (2/3 s) before the kill (the jobs take
    15-35 ms); the test checks that it read them within the 4/3 s left.
    (Replacements get fresh consumer names, so a PEL never mixes two processes.)
    A job that ran twice must have run on a worker that was then killed while
    holding it: its id must be among those read at some kill.
    """
    server = redis_server_factory()
    r = await connect(server.url)
    try:
        queue = Queue(r)
        rng = random.Random(20240611)
        ids = [f"j{i}" for i in range(JOBS)]
        # 15-35 ms each: with 3 x 4 slots the run lasts over 4 s on any machine,
        # long enough for every kill to land mid-job.
        handles = await queue.enqueue_many(
            [queue.job("work", [job_id, i, rng.randint(15, 35)], job_id=job_id)
             for i, job_id in enumerate(ids)])  # fmt: skip
        assert all(h.enqueued for h in handles)

        def launch(slot: int, generation: int) -> str:
            name = f"w{slot}.{generation}"
            workers.start(server.url, name, concurrency=4, visibility_timeout_s=VISIBILITY_S)
            return name

        current = {slot: launch(slot, 0) for slot in range(SLOTS)}
        await workers.wait_ready(*current.values())

        in_flight: set[str] = set()
        kills: list[tuple[str, int]] = []
        while len(kills) < KILLS and await r.xlen(queue.keys.stream) > 0:
            await asyncio.sleep(rng.uniform(0.4, 0.8))
            ready = [slot for slot, name in current.items() if workers.ready(name)]
            if not ready:
                continue
            slot = rng.choice(ready)
            victim = current[slot]
            killed_at = time.monotonic()
            workers.kill(victim)
            held = await _jobs_held_by(r, queue, victim)
            read_s = time.monotonic() - killed_at
            assert read_s < RECLAIM_NOT_BEFORE_S, (
                f"read {victim}'s pending list {read_s:.2f} s after the kill: too late to be "
                "sure nothing was reclaimed yet")  # fmt: skip
            in_flight |= held
            kills.append((victim, len(held)))
            current[slot] = launch(slot, len(kills))

        deadline = time.monotonic() + 60
        for i, (job_id, handle) in enumerate(zip(ids, handles, strict=True)):
            left_s = max(0.1, deadline - time.monotonic())
            assert await handle.result(timeout_s=left_s) == 2 * i, job_id

        assert len(kills) >= 4, f"only {len(kills)} kills landed before the jobs ran out"
        assert in_flight, f"no kill landed while a job was in flight: {kills}"
        runs = Counter(key.decode() for key in await r.lrange(RUNS, 0, -1))
        assert set(runs) == set(ids)  # every job ran; nothing else did
        twice = {job_id for job_id, n in runs.items() if n > 1}
        assert twice <= in_flight, (
            f"ran more than once without being in flight at a kill: {sorted(twice - in_flight)}")
        await _check_settled_once(r, queue, ids)
        await _check_queue_empty(queue)
        assert all(workers.alive(name) for name in current.values())
        assert await asyncio.to_thread(workers.stop_all) == dict.fromkeys(current.values(), 0)
        print(f"kills (worker, jobs held): {kills}; {len(twice)} jobs ran twice or more, "
              f"{sum(runs.values()) - JOBS} extra runs")
    finally:
        await r.aclose()


# --- the Redis server restarted ---------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
@pytest.mark.asyncio
async def test_workers_reconnect_after_a_redis_restart_and_settle_each_job_once(
    redis_server_factory, workers, how
):
    """AOF on, fsync on every write; the server stops mid-run and starts again.

    SIGTERM lets Redis finish its AOF; SIGKILL does not, but with ``appendfsync
    always`` every write it acknowledged is on disk. Jobs running during the
    outage finish, and their settle fails and is retried until the server is
    back. A settle whose script ran but whose reply was lost is retried too: the
    script then acks nothing and writes nothing, so no job is settled twice
    (``_check_settled_once``). The same two worker processes must then take new
    jobs: they reconnected, nobody restarted them.

    A read can be lost too: XREADGROUP ran (the entries are in the worker's PEL, and
    in the AOF) but the connection died before its reply arrived. Those entries wait
    for reclaim, hence the short visibility timeout: longer than the outage (a
    settle is retried that long), short enough to keep the test quick.
    """
    server = redis_server_factory(appendonly=True, extra_args=["--appendfsync", "always"])
    names = ["r0", "r1"]
    for name in names:
        workers.start(server.url, name, concurrency=4, visibility_timeout_s=3)
    r = await connect(server.url)
    rng = random.Random(7)
    try:
        await workers.wait_ready(*names)
        queue = Queue(r)
        before = [f"a{i}" for i in range(300)]
        handles = await queue.enqueue_many(
            [queue.job("double", [i, rng.randint(5, 15)], job_id=job_id)
             for i, job_id in enumerate(before)])  # fmt: skip
        assert all(h.enqueued for h in handles)

        async def some_done() -> bool:
            return await r.xlen(queue.keys.stream) <= 240

        await _until(some_done, 20, "60 jobs are done")
        left_at_outage = await r.xlen(queue.keys.stream)
        await asyncio.to_thread(server.stop if how == "sigterm" else server.kill)
        await asyncio.sleep(1.0)  # the workers find it gone, and back off
        await asyncio.to_thread(server.start)
    finally:
        await r.aclose()  # its connection died with the server

    r = await connect(server.url)
    try:
        queue = Queue(r)
        assert left_at_outage > 100  # the restart landed mid-run
        # New jobs until each worker has run one after the restart.
        after: list[str] = []
        took: set[str] = set()
        deadline = time.monotonic() + 30
        while took != set(names):
            assert time.monotonic() < deadline, f"only {took} took jobs after the restart"
            batch = [f"b{len(after) + k}" for k in range(8)]
            news = await queue.enqueue_many([queue.job("double", [k, 20], job_id=job_id)
                                             for k, job_id in enumerate(batch)])
            for k, handle in enumerate(news):
                assert await handle.result(timeout_s=20) == 2 * k
                took.add((await handle.info())["worker"])
            after += batch

        for i, handle in enumerate(handles):
            handle = queue.handle(handle.id)  # on the new client
            assert await handle.result(timeout_s=30) == 2 * i
        await _check_settled_once(r, queue, before + after)
        await _check_queue_empty(queue)
        assert all(workers.alive(name) for name in names)
        assert any("Redis unreachable" in workers.log(name) for name in names)
        assert await asyncio.to_thread(workers.stop_all) == dict.fromkeys(names, 0)
    finally:
        await r.aclose()


# --- malformed entries ------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.asyncio
async def test_malformed_entries_are_dead_lettered_with_their_reason_and_the_worker_goes_on(
    redis_server_factory, workers
):
    """Entries XADDed straight into the stream, each broken in its own way.

    One worker process, one slot: it reads the entries in stream order, so when
    the valid job enqueued after them is done, every bad one has been handled.
    Each must be in the dead-letter stream, kept whole, with a reason naming its
    problem, and the same process must still be running.
    """
    server = redis_server_factory()
    workers.start(server.url, "m0", concurrency=1, visibility_timeout_s=5)
    r = await connect(server.url)
    try:
        await workers.wait_ready("m0")
        queue = Queue(r)
        assert await (await queue.enqueue("echo", "before")).result(timeout_s=20) == "before"

        good = Job("echo", ["hi"], id="good").to_dict()
        no_args = {k: v for k, v in good.items() if k != "args"}
        bad = {  # the reason each must be given: the fields XADDed into the stream
            "not JSON": {"job": b"{oops"},
            "not UTF-8": {"job": b"\x80\x81"},
            "expected a JSON object, got a list": {"job": b"[1, 2]"},
            "missing field(s) 'args'": {"job": json.dumps(no_args)},
            "field 'attempt' must be an integer >= 1": {"job": json.dumps(good | {"attempt": "1"})},
            "field 'args' must be a list": {"job": json.dumps(good | {"args": {"a": 1}})},
            "unknown field(s) 'priority'": {"job": json.dumps(good | {"priority": 9})},
            f"over the {MAX_JOB_BYTES} byte limit": {
                "job": json.dumps(good | {"args": ["x" * (MAX_JOB_BYTES + 1)]})},
            "the entry has no 'job' field": {"payload": b"\x00\xff", "task": "echo"},
            "unknown task 'rm_rf': not registered": {
                "job": json.dumps(good | {"task": "rm_rf", "id": "evil"})},
        }
        origin = {}
        for reason, fields in bad.items():
            origin[(await r.xadd(queue.keys.stream, fields)).decode()] = reason
        handle = await queue.enqueue("echo", "after")
        assert await handle.result(timeout_s=20) == "after"

        letters = {letter.origin_id: letter for letter in await queue.dead_letters()}
        assert letters.keys() == origin.keys()
        for origin_id, reason in origin.items():
            letter = letters[origin_id]
            assert reason in letter.reason, (reason, letter.reason)
            assert letter.worker == "m0"
            fields = {k: v.encode() if isinstance(v, str) else v for k, v in bad[reason].items()}
            assert (letter.job, letter.extra) == (fields.pop("job", None), fields)
        assert await queue.handle("evil").status() is JobStatus.DEAD
        assert (await handle.info())["worker"] == "m0"
        await _check_queue_empty(queue, dead=len(bad))
        assert workers.alive("m0")
        assert await asyncio.to_thread(workers.stop_all) == {"m0": 0}
    finally:
        await r.aclose()
