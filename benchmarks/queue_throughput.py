"""Jobs per second through a real Redis: course_lib's Worker, the naive list worker, a bare loop.

    python benchmarks/queue_throughput.py [--url redis://127.0.0.1:6379/0] [--jobs 10000]
        [--rounds 5] [--quick] [--concurrency 10,100] [--procs 1,2] [--no-save] [--json PATH]
        [--no-latency] [--no-naive] [--baseline GIT_REF]
    python benchmarks/queue_throughput.py --profile [--jobs 20000]   # where the Worker's time goes

It measures the course_lib it imports: from a worktree, run it with ``PYTHONPATH=.``
(the venv's editable install points at the main checkout). ``--baseline REF`` also runs
the Worker of commit REF (its ``course_lib`` taken with ``git archive`` and imported as
``course_lib_base``) in every round, next to this one, and reports same-round ratios of
jobs/s and client CPU per job: a change measured side by side on a shared machine.

No-op jobs, enqueued before the consumers start, then consumed by 1 or 2 worker
processes (spawned once, reused for every run). Consumers, side by side:

- bare: the ceiling for one Python process. ``XREADGROUP COUNT 100 BLOCK 100``,
  then ONE pipeline per batch: ``XACK`` of the batch plus one ``SET result EX``
  per job. No status, no retry, no heartbeat.
- naive: ``NaiveListWorker`` (the article's design: LRANGE+LTRIM, one SET per job).
  With 2 processes it loses and duplicates jobs: the table counts them.
- worker(c): ``course_lib.distributed.Worker`` with every default guarantee on (start
  script, settle script, heartbeats, reclaim, maintenance), one per process, with
  ``concurrency=c`` and ``batch_size`` = c (its default): c=10 is the default a user
  gets, c=100 reads as many entries per XREADGROUP as the bare loop.

Also the enqueue rates seen while setting up: ``Queue.enqueue_many`` (one Lua
script per job, pipelined 100 at a time) against a bare pipelined ``XADD``.

And latency, on one worker process with the default concurrency (10), every round:
enqueue-to-start (the record's ``started_at - enqueued_at``: both the same machine's
clock) of jobs enqueued one at a time, p50 and p99, on an idle worker (each waits for
the one before to end) and on a busy one (while 50 ms jobs keep about 7 of its 10
slots taken); and, with a backlog (all slots taken, entries waiting; jobs of 10 to 20
ms, so slots free in different turns), how long a freed slot stays empty: each job's
start minus the end of the job whose slot it took (the tasks time themselves), which a
settle and a START round trip bound.

A run is timed from the first job taken (the moment its processes are told to go)
to the last one settled (the latest result write; for the Worker, the latest
``finished_at`` in the job records), across processes. Each round runs every
variant once, in rotated order, so a busy moment hits all alike; the table gives
the median jobs/s, the min-max spread, and the median over rounds of the ratio to
the bare loop with as many processes in the same round. Also the CPU time per job
of the consumer processes and of redis-server (INFO), which a busy machine blurs
less than wall time. All clients come from ``course_lib.redis.connect()``
(RESP2, ``socket_timeout=None``). Target: worker >= 0.5x bare.

Without ``--url``/``REDIS_URL`` it starts its own ``redis-server`` (loopback, free
port, temp dir, no persistence) and skips, exit 0, when there is none. On a
server of yours it touches only keys under ``qbench:``, ``cq:{qbench}:`` and
``cq:naive:result:qb-`` and deletes them after each run. Writes
benchmarks/results/queue_throughput.json unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib
import io
import json
import multiprocessing as mp
import os
import pstats
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import RESULTS, machine, save, unlink_matching

import course_lib
from course_lib.distributed import NaiveListWorker, Queue, TaskRegistry, Worker
from course_lib.distributed.job import Job
from course_lib.redis import connect, mask_url

QUEUE = "qbench"
BARE_STREAM = "qbench:bare:stream"
BARE_GROUP = "bare"
BARE_RESULT = "qbench:bare:result:"
NAIVE_LIST = "qbench:naive:list"
SCAN_PATTERNS = ("qbench:*", "cq:{qbench}:*", "cq:naive:result:qb-*")
ENQUEUE_BATCH = 100  # jobs per pipeline, for every kind of enqueue
BARE_BATCH = 100
RUN_TIMEOUT_S = 300.0
# The naive worker loses jobs with 2 processes, so "all done" never comes: a run ends
# when the list is empty and no result was written for this long (a busy machine can
# starve a process for a good fraction of a second).
NAIVE_STALL_S = 2.0


# --- the consumers, as they run inside a worker process ----------------------------

_progress: Any = None  # this process's slot in the shared counters: jobs done so far
_slot = 0


async def noop() -> None:
    """The task every Worker job runs: count it, return at once."""
    _progress[_slot] += 1


class _Bare:
    """XREADGROUP COUNT 100, then one pipeline: XACK the batch + SET one result per job."""

    def __init__(self, client: Any, name: str) -> None:
        self.client, self.name = client, name
        self.done = 0
        self.last = 0.0
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        r = self.client
        while not self._stop:
            reply = await r.xreadgroup(BARE_GROUP, self.name, {BARE_STREAM: ">"},
                                       count=BARE_BATCH, block=100)
            if not reply:
                continue
            entries = reply[0][1]
            pipe = r.pipeline(transaction=False)
            pipe.xack(BARE_STREAM, BARE_GROUP, *[entry_id for entry_id, _ in entries])
            for entry_id, fields in entries:
                job = json.loads(fields[b"job"])  # "run" the no-op job
                pipe.set(BARE_RESULT + entry_id.decode(),
                         json.dumps({"id": job["id"], "result": None}), ex=3600)
            acked = (await pipe.execute())[0]
            self.last = time.time()
            self.done += acked
            _progress[_slot] = self.done

    async def stop(self) -> dict:
        self._stop = True
        assert self._task is not None
        await self._task
        return {"done": self.done, "last": self.last}


class _CountingNaive(NaiveListWorker):
    """NaiveListWorker, unchanged, plus the time of its last result write."""

    last = 0.0
    done = 0

    async def process_one(self) -> None:
        await super().process_one()
        self.last = time.time()
        self.done += 1
        _progress[_slot] = self.done


class _Naive:
    def __init__(self, client: Any, name: str) -> None:
        self.worker = _CountingNaive(client, {"noop": noop_naive}, key=NAIVE_LIST)

    async def start(self) -> None:
        self.worker.start()

    async def stop(self) -> dict:
        lost_in_memory = await self.worker.stop()
        return {"done": self.worker.done, "last": self.worker.last,
                "fetched": self.worker.fetched, "lost_in_memory": lost_in_memory}


async def noop_naive() -> None:
    return None


async def nap(seconds: float) -> list[float]:
    """A job of the latency runs: sleep, return when it started and ended (epoch s)."""
    started = time.time()
    await asyncio.sleep(seconds)
    return [started, time.time()]


class _Worker:
    def __init__(self, client: Any, name: str, concurrency: int, src: str = "head") -> None:
        lib = importlib.import_module(BASE_PACKAGE + ".distributed") if src == "base" else None
        registry = (lib.TaskRegistry if lib else TaskRegistry)()
        registry.add(noop)
        registry.add(nap)
        self.worker = (lib.Worker if lib else Worker)(client, registry, queue=QUEUE, name=name,
                                                      concurrency=concurrency)

    async def start(self) -> None:
        await self.worker.start()

    async def stop(self) -> dict:
        await self.worker.stop()
        stats = await self.worker.stats()
        return {"done": stats.processed, "last": 0.0}  # last: from the records


def _make_consumer(kind: str, client: Any, name: str, concurrency: int, src: str) -> Any:
    if kind == "bare":
        return _Bare(client, name)
    if kind == "naive":
        return _Naive(client, name)
    return _Worker(client, name, concurrency, src)


async def _child_run(conn: Any, spec: dict) -> dict:
    client = await connect(spec["url"])
    try:
        consumer = _make_consumer(spec["kind"], client, spec["name"], spec["concurrency"],
                                  spec.get("src", "head"))
        conn.send("ready")
        await asyncio.to_thread(conn.recv)  # go
        cpu0, first = time.process_time(), time.time()
        await consumer.start()
        await asyncio.to_thread(conn.recv)  # stop: every job is settled
        cpu_s = time.process_time() - cpu0
        out = await consumer.stop()
    finally:
        await client.aclose()
    return {**out, "first": first, "cpu_s": cpu_s}


def _child_main(conn: Any, progress: Any, slot: int) -> None:
    """A worker process: run one consumer per request until told to quit (None)."""
    global _progress, _slot
    _progress, _slot = progress, slot
    while (spec := conn.recv()) is not None:
        try:
            conn.send(asyncio.run(_child_run(conn, spec)))
        except BaseException as exc:
            conn.send({"error": repr(exc)})
            raise


# --- the parent: server, processes, one run ----------------------------------------


class _LocalServer:
    """A redis-server of our own on a free loopback port, in a temp dir, no persistence."""

    def __init__(self, binary: str) -> None:
        self.dir = tempfile.mkdtemp(prefix="qbench-redis-")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
             "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--logfile", os.path.join(self.dir, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                client = await connect(self.url)
                await client.aclose()
                return
            except ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class _Processes:
    """Two spawned worker processes, each with a slot in a shared progress counter."""

    def __init__(self, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.progress = ctx.RawArray("q", count)
        self.conns, self.procs = [], []
        for slot in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child_main, args=(child, self.progress, slot),
                               name=f"qbench-{slot}", daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()


def _recv(conn: Any) -> Any:
    if not conn.poll(RUN_TIMEOUT_S):
        raise RuntimeError("a worker process did not answer")
    reply = conn.recv()
    if isinstance(reply, dict) and "error" in reply:
        raise RuntimeError(f"worker process failed: {reply['error']}")
    return reply


async def _cleanup(r: Any) -> None:
    await unlink_matching(r, *SCAN_PATTERNS)


async def _enqueue(r: Any, kind: str, jobs: int) -> tuple[float, list[str]]:
    """Put ``jobs`` no-op jobs where ``kind`` reads them; the seconds it took, the job ids."""
    ids = [f"qb-{i}" for i in range(jobs)]
    queue = Queue(r, QUEUE)
    if kind == "worker":
        chunks = [[Job("noop", id=i) for i in ids[s:s + ENQUEUE_BATCH]]
                  for s in range(0, jobs, ENQUEUE_BATCH)]
        start = time.perf_counter()
        for chunk in chunks:
            await queue.enqueue_many(chunk)
        return time.perf_counter() - start, ids
    start = time.perf_counter()
    for s in range(0, jobs, ENQUEUE_BATCH):
        pipe = r.pipeline(transaction=False)
        for i in ids[s:s + ENQUEUE_BATCH]:
            if kind == "bare":
                pipe.xadd(BARE_STREAM, {"job": Job("noop", id=i).encode()})
            else:
                pipe.rpush(NAIVE_LIST, json.dumps({"id": i, "task": "noop", "args": []}))
        await pipe.execute()
    elapsed = time.perf_counter() - start
    if kind == "bare":
        await r.xgroup_create(BARE_STREAM, BARE_GROUP, id="0")
    return elapsed, ids


async def _server_cpu_s(r: Any) -> float:
    info = await r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _wait_done(r: Any, procs: _Processes, kind: str, count: int, jobs: int) -> None:
    """Until every job is settled (naive: until progress stalls with the list empty)."""
    start = last_change = time.monotonic()
    seen = -1
    while True:
        done = sum(procs.progress[:count])
        now = time.monotonic()
        if done != seen:
            seen, last_change = done, now
        if done >= jobs:
            if kind != "worker":
                return
            if await r.xlen(f"cq:{{{QUEUE}}}:stream") == 0:  # settles XDEL their entry
                return
        elif kind == "naive" and now - last_change > NAIVE_STALL_S and not await r.llen(NAIVE_LIST):
            return  # the naive worker lost the rest
        if now - start > RUN_TIMEOUT_S:
            raise RuntimeError(f"{kind}: {done} of {jobs} jobs done after {RUN_TIMEOUT_S} s")
        await asyncio.sleep(0.005)


async def _finished_at(r: Any, ids: list[str]) -> tuple[float, Counter]:
    """The latest finished_at over the job records, and how many of each status."""
    latest, statuses = 0.0, Counter()
    for s in range(0, len(ids), 1000):
        async with r.pipeline(transaction=False) as pipe:
            for i in ids[s:s + 1000]:
                pipe.hmget(f"cq:{{{QUEUE}}}:job:{i}", "status", "finished_at")
            for status, finished in await pipe.execute():
                statuses[(status or b"none").decode()] += 1
                if finished:
                    latest = max(latest, float(finished))
    return latest, statuses


async def _one_run(r: Any, url: str, procs: _Processes, variant: dict, jobs: int) -> dict:
    kind, count = variant["kind"], variant["procs"]
    await _cleanup(r)
    for slot in range(count):
        procs.progress[slot] = 0
        procs.conns[slot].send({"url": url, "kind": kind, "name": f"qbench-{slot}",
                                "concurrency": variant.get("concurrency", 10),
                                "src": variant.get("src", "head")})
    for slot in range(count):
        _recv(procs.conns[slot])  # ready: connected, consumer built, idle
    enqueue_s, ids = await _enqueue(r, kind, jobs)
    server_cpu0 = await _server_cpu_s(r)
    for slot in range(count):
        procs.conns[slot].send("go")
    await _wait_done(r, procs, kind, count, jobs)
    server_cpu_s = await _server_cpu_s(r) - server_cpu0
    for slot in range(count):
        procs.conns[slot].send("stop")
    outs = [_recv(procs.conns[slot]) for slot in range(count)]
    first = min(o["first"] for o in outs)
    result: dict[str, Any] = {"enqueue_s": enqueue_s, "server_cpu_s": server_cpu_s,
                              "client_cpu_s": sum(o["cpu_s"] for o in outs)}
    if kind == "worker":
        last, statuses = await _finished_at(r, ids)
        if statuses != Counter(done=jobs):
            raise RuntimeError(f"worker: job records {dict(statuses)}, expected {jobs} done")
        settled = jobs
    elif kind == "bare":
        last = max(o["last"] for o in outs)
        settled = sum(o["done"] for o in outs)
        if settled != jobs:
            raise RuntimeError(f"bare: {settled} of {jobs} acked")
    else:
        last = max(o["last"] for o in outs)
        fetched = [i for o in outs for i in o["fetched"]]
        settled = len(set(fetched) & set(ids))
        result |= {"lost": jobs - settled, "duplicated": len(fetched) - settled}
    await _cleanup(r)
    seconds = last - first
    return result | {"seconds": seconds, "jobs_per_s": settled / seconds}


# --- latency: enqueue to start, idle and busy; a freed slot refilled ------------------

LATENCY_PROBES = 200  # jobs timed one at a time, idle and busy (each)
BUSY_JOB_S = 0.05  # the busy worker's background jobs...
BUSY_EVERY_S = BUSY_JOB_S / 7  # ...one enqueued this often: about 7 of 10 slots taken
BACKLOG_JOBS = 500  # 10-20 ms jobs enqueued at once: every slot taken, entries waiting;
BACKLOG_JOB_S = 0.01  # of five lengths, so that slots free in different turns


def _percentiles(xs: list[float]) -> dict:
    """p50 and p99 (nearest rank) of ``xs`` seconds, in ms, and the count."""
    xs = sorted(xs)
    rank = lambda q: xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))]  # noqa: E731
    return {"p50_ms": 1000 * rank(0.50), "p99_ms": 1000 * rank(0.99),
            "max_ms": 1000 * xs[-1], "n": len(xs)}


async def _picked_up_s(handles: list[Any]) -> list[float]:
    out = []
    for handle in handles:
        record = await handle.info()
        out.append(float(record["started_at"]) - float(record["enqueued_at"]))
    return out


async def _latency_run(r: Any, url: str, procs: _Processes, concurrency: int = 10) -> dict:
    """One worker process (``concurrency``): the three latency figures, in seconds."""
    await _cleanup(r)
    procs.progress[0] = 0
    procs.conns[0].send({"url": url, "kind": "worker", "name": "qbench-0",
                         "concurrency": concurrency})
    _recv(procs.conns[0])
    procs.conns[0].send("go")
    queue = Queue(r, QUEUE)
    try:
        await asyncio.sleep(0.2)  # the worker's first read is blocking
        idle = []
        for _ in range(LATENCY_PROBES):
            handle = await queue.enqueue("noop")
            await handle.result(timeout_s=30)  # idle again before the next
            idle.append(handle)
        idle_s = await _picked_up_s(idle)

        background: list[Any] = []

        async def keep_busy() -> None:
            while True:
                background.append(await queue.enqueue("nap", BUSY_JOB_S))
                await asyncio.sleep(BUSY_EVERY_S)

        loader = asyncio.create_task(keep_busy())
        try:
            await asyncio.sleep(2 * BUSY_JOB_S)  # up to speed
            busy = []
            for _ in range(LATENCY_PROBES):
                busy.append(await queue.enqueue("noop"))
                await asyncio.sleep(BUSY_EVERY_S * 1.37)  # out of step with the loader
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
        for handle in busy + background:
            await handle.result(timeout_s=30)
        busy_s = await _picked_up_s(busy)

        backlog = await queue.enqueue_many(
            [("nap", [BACKLOG_JOB_S * (1 + i % 5 / 4)]) for i in range(BACKLOG_JOBS)])
        times = [await handle.result(timeout_s=60) for handle in backlog]
        starts = sorted(start for start, _ in times)
        ends = sorted(end for _, end in times)
        # The i-th start past the first `concurrency` took the slot of the
        # (i - concurrency)-th end: the gap is how long that slot stayed empty.
        refill_s = [starts[i] - ends[i - concurrency] for i in range(concurrency, len(starts))]
    finally:
        await queue.aclose()
        procs.conns[0].send("stop")
        _recv(procs.conns[0])
        await _cleanup(r)
    return {"idle": idle_s, "busy": busy_s, "refill": refill_s}


# --- rounds, summary, report ---------------------------------------------------------


def _variants(concurrencies: list[int], proc_counts: list[int], baseline: str | None = None,
              naive: bool = True) -> list[dict]:
    out = []
    for p in proc_counts:
        out.append({"name": f"bare loop, {p} proc", "kind": "bare", "procs": p})
        if naive:
            out.append({"name": f"naive list worker, {p} proc", "kind": "naive", "procs": p})
        for c in concurrencies:
            out.append({"name": f"Worker(concurrency={c}), {p} proc", "kind": "worker",
                        "procs": p, "concurrency": c})
            if baseline is not None:  # the same Worker at the baseline commit
                out.append({"name": f"Worker@{baseline}(concurrency={c}), {p} proc",
                            "kind": "worker", "procs": p, "concurrency": c, "src": "base"})
    return out


def _summary(xs: list[float]) -> dict:
    med = statistics.median(xs)
    return {"median": med, "min": min(xs), "max": max(xs),
            "spread_pct": 100 * (max(xs) - min(xs)) / med if med else 0.0, "samples": xs}


def _load() -> str:
    """The 1, 5 and 15 minute load averages, as ``uptime`` prints them."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


async def _bench(url: str, args: argparse.Namespace) -> dict:
    variants = _variants(args.concurrency, args.procs, args.baseline, not args.no_naive)
    runs: dict[str, list[dict]] = {v["name"]: [] for v in variants}
    latency: dict[str, list[float]] = {"idle": [], "busy": [], "refill": []}
    r = await connect(url)
    procs = _Processes(max(args.procs))
    try:
        for v in {(v["kind"], v.get("src")): v for v in variants if v["procs"] == 1}.values():
            await _one_run(r, url, procs, v, min(args.jobs, 1000))
        for rnd in range(args.rounds):
            shift = rnd % len(variants)
            for v in variants[shift:] + variants[:shift]:
                run = await _one_run(r, url, procs, v, args.jobs)
                runs[v["name"]].append(run)
                lost = f"  lost {run['lost']} dup {run['duplicated']}" if "lost" in run else ""
                print(f"  round {rnd + 1}  {v['name']:34} {run['jobs_per_s']:9,.0f} jobs/s{lost}",
                      flush=True)
            if not args.no_latency:
                lat = await _latency_run(r, url, procs)
                for key, xs in lat.items():
                    latency[key] += xs
                print(f"  round {rnd + 1}  latency, Worker(concurrency=10): "
                      + ", ".join(f"{k} p50 {p['p50_ms']:.1f} ms p99 {p['p99_ms']:.1f} ms"
                                  for k, p in ((k, _percentiles(xs)) for k, xs in lat.items())),
                      flush=True)
    finally:
        procs.close()
        await _cleanup(r)
        await r.aclose()
    result = _tabulate(variants, runs, args.jobs)
    if not args.no_latency:
        result["latency"] = {
            "worker": "Worker(concurrency=10), 1 proc",
            "enqueue_to_start_idle": _percentiles(latency["idle"]),
            "enqueue_to_start_busy": _percentiles(latency["busy"]),
            "slot_refill_with_backlog": _percentiles(latency["refill"]),
        }
    return result


def _tabulate(variants: list[dict], runs: dict[str, list[dict]], jobs: int) -> dict:
    consumers: dict[str, dict] = {}
    for v in variants:
        rs = runs[v["name"]]
        bare = runs[f"bare loop, {v['procs']} proc"]
        row = {**{k: v[k] for k in ("kind", "procs") if k in v},
               "jobs_per_s": _summary([x["jobs_per_s"] for x in rs]),
               "ratio_to_bare": _summary([x["jobs_per_s"] / b["jobs_per_s"]
                                          for x, b in zip(rs, bare, strict=True)]),
               "client_cpu_us_per_job": _summary([1e6 * x["client_cpu_s"] / jobs for x in rs]),
               "server_cpu_us_per_job": _summary([1e6 * x["server_cpu_s"] / jobs for x in rs])}
        if "concurrency" in v:
            row |= {"concurrency": v["concurrency"], "batch_size": v["concurrency"]}
        if v.get("src") == "base":
            row["src"] = "base"
        elif v["kind"] == "worker":
            base = [n for n in runs if n.startswith("Worker@") and n.endswith(
                f"(concurrency={v['concurrency']}), {v['procs']} proc")]
            if base:  # this commit against the baseline's, run for run (same round)
                row["ratio_to_base"] = _summary([x["jobs_per_s"] / b["jobs_per_s"] for x, b in
                                                 zip(rs, runs[base[0]], strict=True)])
                row["cpu_ratio_to_base"] = _summary(
                    [x["client_cpu_s"] / b["client_cpu_s"] for x, b in
                     zip(rs, runs[base[0]], strict=True)])
        if v["kind"] == "naive":
            row |= {"lost": [x["lost"] for x in rs], "duplicated": [x["duplicated"] for x in rs]}
        consumers[v["name"]] = row
    enqueue: dict[str, dict] = {}
    for label, kind in (("bare XADD pipeline", "bare"),
                        ("Queue.enqueue_many", "worker"),
                        ("naive RPUSH pipeline", "naive")):
        rates = [jobs / x["enqueue_s"] for v in variants if v["kind"] == kind
                 for x in runs[v["name"]]]
        if rates:  # none with --no-naive
            enqueue[label] = {"jobs_per_s": _summary(rates)}
    base = enqueue["bare XADD pipeline"]["jobs_per_s"]["median"]
    for row in enqueue.values():
        row["ratio_to_bare"] = row["jobs_per_s"]["median"] / base
    return {"consumers": consumers, "enqueue": enqueue}


def _report(result: dict) -> None:
    print(f"\n{'consume (no-op jobs)':38} {'jobs/s':>9} {'min-max':>17} {'x bare':>7}"
          f" {'client':>7} {'server':>7}  (CPU µs/job)")
    for name, row in result["consumers"].items():
        j, ratio = row["jobs_per_s"], row["ratio_to_bare"]
        extra = ""
        if "lost" in row:
            extra = f"  lost {statistics.median(row['lost']):.0f}" \
                    f" dup {statistics.median(row['duplicated']):.0f} (median)"
        print(f"  {name:36} {j['median']:9,.0f} {j['min']:8,.0f}-{j['max']:<8,.0f}"
              f" {ratio['median']:6.2f}x {row['client_cpu_us_per_job']['median']:7.1f}"
              f" {row['server_cpu_us_per_job']['median']:7.1f}{extra}")
        if "ratio_to_base" in row:
            rb, cb = row["ratio_to_base"], row["cpu_ratio_to_base"]
            print(f"  {'':36} x baseline, same round: jobs/s {rb['median']:.2f}"
                  f" ({rb['min']:.2f}-{rb['max']:.2f}), client CPU/job {cb['median']:.2f}"
                  f" ({cb['min']:.2f}-{cb['max']:.2f})")
    print(f"\n{'enqueue (pipelined, 100 a batch)':38} {'jobs/s':>9} {'min-max':>17} {'x XADD':>7}")
    for name, row in result["enqueue"].items():
        j = row["jobs_per_s"]
        print(f"  {name:36} {j['median']:9,.0f} {j['min']:8,.0f}-{j['max']:<8,.0f}"
              f" {row['ratio_to_bare']:6.2f}x")
    if "latency" in result:
        lat = result["latency"]
        print(f"\n{'latency, ' + lat['worker']:38} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9}"
              f" {'n':>6}")
        for label, key in (("enqueue to start, idle worker", "enqueue_to_start_idle"),
                           ("enqueue to start, busy (7/10 slots)", "enqueue_to_start_busy"),
                           ("freed slot empty, with a backlog", "slot_refill_with_backlog")):
            p = lat[key]
            print(f"  {label:36} {p['p50_ms']:9.2f} {p['p99_ms']:9.2f} {p['max_ms']:9.2f}"
                  f" {p['n']:6}")


# --- --profile: where the Worker's time and round trips go ---------------------------


async def _profile(url: str, jobs: int, concurrency: int) -> None:
    """Run the Worker in this process under cProfile; count round trips and tasks per job."""
    import redis.asyncio.client as rc

    global _progress
    _progress = [0]
    r = await connect(url)
    await _cleanup(r)
    await _enqueue(r, "worker", jobs)
    commands: Counter = Counter()
    plain_execute, pipe_execute = rc.Redis.execute_command, rc.Pipeline.execute

    async def counted_command(self: Any, *args: Any, **kw: Any) -> Any:
        name = args[0] if args[0] != "EVALSHA" else f"EVALSHA {len(args)}-args"
        commands[name] += 1
        return await plain_execute(self, *args, **kw)

    async def counted_pipeline(self: Any, *args: Any, **kw: Any) -> Any:
        commands["(pipeline)"] += 1
        for command in self.command_stack:
            name = command[0][0]
            commands[f"  {name} in a pipeline" if name != "EVALSHA"
                     else f"  EVALSHA {len(command[0])}-args in a pipeline"] += 1
        return await pipe_execute(self, *args, **kw)

    loop = asyncio.get_running_loop()
    tasks = 0

    def counting_factory(loop: Any, coro: Any, **kw: Any) -> asyncio.Task:
        nonlocal tasks
        tasks += 1
        return asyncio.Task(coro, loop=loop, **kw)

    client = await connect(url)
    registry = TaskRegistry()
    registry.add(noop)
    worker = Worker(client, registry, queue=QUEUE, concurrency=concurrency)
    rc.Redis.execute_command, rc.Pipeline.execute = counted_command, counted_pipeline
    loop.set_task_factory(counting_factory)
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    try:
        await worker.start()
        while True:  # until every job ran and every entry was settled (XDEL)
            if _progress[0] >= jobs and not await r.xlen(f"cq:{{{QUEUE}}}:stream"):
                break
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
        profiler.disable()
        await worker.stop()
    finally:
        rc.Redis.execute_command, rc.Pipeline.execute = plain_execute, pipe_execute
        loop.set_task_factory(None)
        await _cleanup(r)
        await client.aclose()
        await r.aclose()
    print(f"Worker(concurrency={concurrency}), {jobs} no-op jobs in one process, under "
          f"cProfile: {jobs / elapsed:,.0f} jobs/s (profiling slows it)")
    print(f"  tasks created per job: {tasks / jobs:.2f}")
    trips = sum(n for name, n in commands.items() if not name.startswith(" "))
    print(f"  Redis round trips per job: {trips / jobs:.3f} (this profiler's XLEN polls included)")
    for name, n in commands.most_common():
        print(f"    {name:34} {n / jobs:7.3f}")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue())


# --- main ------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=os.environ.get("REDIS_URL") or None,
                    help="a real server you may write to (default: $REDIS_URL, else start one)")
    ap.add_argument("--jobs", type=int, default=None, help="jobs per run (default 10000)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    ap.add_argument("--quick", action="store_true", help="3000 jobs, 2 rounds: a smoke run")
    ap.add_argument("--concurrency", type=_ints, default=[10, 100],
                    help="Worker concurrency values, comma list (default 10,100: its default, "
                         "and the bare loop's batch)")
    ap.add_argument("--procs", type=_ints, default=[1, 2], help="process counts (default 1,2)")
    ap.add_argument("--no-save", action="store_true", help="do not write the JSON result")
    ap.add_argument("--no-latency", action="store_true",
                    help="skip the latency runs (enqueue to start, slot refill) of each round")
    ap.add_argument("--json", type=Path, default=None,
                    help=f"write the JSON here instead of {RESULTS.name}/queue_throughput.json")
    ap.add_argument("--baseline", default=None, metavar="GIT_REF",
                    help="also run the Worker of this commit (its course_lib, from git), "
                         "side by side in every round, with same-round ratios")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive list worker")
    ap.add_argument("--profile", action="store_true",
                    help="profile the Worker in-process instead (cProfile, round trips)")
    args = ap.parse_args()
    args.jobs = args.jobs or (3000 if args.quick else 10_000)
    args.rounds = args.rounds or (2 if args.quick else 5)

    server = None
    url = args.url
    if url is None:
        binary = shutil.which("redis-server")
        if binary is None:
            print("queue_throughput: skipped, no redis-server installed and no --url/REDIS_URL")
            return
        server = _LocalServer(binary)
    try:
        if server is not None:
            asyncio.run(server.wait_ready())
            url = server.url
        if args.profile:
            asyncio.run(_profile(url, args.jobs, args.concurrency[0]))
            return
        if args.baseline is not None:
            _extract_baseline(args.baseline)
        load_before = _load()
        started = time.perf_counter()
        print(f"queue_throughput: {mask_url(url)}, {args.jobs} jobs per run, {args.rounds} rounds,"
              f" load {load_before}", flush=True)
        result = asyncio.run(_bench(url, args))
        took = time.perf_counter() - started
        load_after = _load()
        _report(result)
        print(f"\n{took:.0f} s; load average before {load_before}, after {load_after}")
        if not args.no_save:
            payload = {"jobs": args.jobs, "rounds": args.rounds, "server": _server_facts(url),
                       "course_lib": str(Path(course_lib.__file__).parent), "git": _git(),
                       "enqueue_batch": ENQUEUE_BATCH, "bare_batch": BARE_BATCH,
                       "client_settings": {"protocol": 2, "socket_timeout": None},
                       "baseline": args.baseline and _rev(args.baseline),
                       "load_before": load_before, "load_after": load_after,
                       "seconds": round(took, 1), "target_ratio": 0.5, **result}
            if args.json is None:
                print(f"saved {save('queue_throughput', payload)}")
            else:
                payload = {"benchmark": "queue_throughput", "machine": machine(), **payload}
                args.json.write_text(json.dumps(payload, indent=2) + "\n")
                print(f"saved {args.json}")
    finally:
        if server is not None:
            server.stop()


BASE_PACKAGE = "course_lib_base"  # the baseline's course_lib, under another name
_ROOT = Path(__file__).resolve().parent.parent  # the checkout: git archive reads its history


def _extract_baseline(ref: str) -> None:
    """``course_lib`` at ``ref`` (``git archive``), importable as ``course_lib_base``.

    Its modules import each other relatively, so the copy under another name is the
    baseline's own code, side by side with this one in the same processes (spawned
    children get this sys.path).
    """
    where = Path(tempfile.mkdtemp(prefix="qbench-base-"))
    archive = subprocess.run(["git", "archive", ref, "course_lib"], cwd=_ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    (where / "course_lib").rename(where / BASE_PACKAGE)
    sys.path.insert(0, str(where))


def _rev(ref: str) -> str:
    return subprocess.run(["git", "-C", str(_ROOT), "rev-parse", "--short", ref],
                          capture_output=True, text=True, check=True).stdout.strip()


def _git() -> str | None:
    """The commit of the course_lib measured, with "+dirty" when it has uncommitted changes."""
    where = Path(course_lib.__file__).parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "."],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def _server_facts(url: str) -> dict:
    async def info() -> dict:
        r = await connect(url)
        try:
            server = await r.info("server")
        finally:
            await r.aclose()
        return {"redis_version": server.get("redis_version"), "url": mask_url(url)}

    return asyncio.run(info())


if __name__ == "__main__":
    sys.exit(main())
