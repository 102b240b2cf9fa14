"""Scaling the queue out: worker processes on one Redis, then one stream vs partitions on a cluster.

    python benchmarks/queue_scaling.py [--quick] [--rounds 3] [--jobs 10000] [--io-jobs 3000]
        [--no-save]

Jobs/s of course_lib's Worker on no-op jobs and on 10 ms I/O jobs (``asyncio.sleep``),
in these setups, side by side:

- one Redis (one redis-server, one stream), 1, 2 and 4 worker processes;
- a local Redis Cluster of three masters (started here, as tests/_redis_cluster.py
  does), the same queue: one stream, so one slot on one master; 2 and 4 processes;
- the same cluster, the queue partitioned over three streams whose hash tags put
  one on each master (``partitions.PartitionedQueue``); 2 and 4 processes.

Every process gets the same slot budget, 30 jobs at once, and reads 10 entries at a
time: one ``Worker(concurrency=30, batch_size=10)`` on one stream; on three partitions,
one ``Worker(concurrency=10)`` per partition (every process serves every partition, so
no stream is left with fewer consumers, and the jobs of every partition end together). Jobs are
enqueued before the workers start (``enqueue_many``, 100 a batch, routed by job id);
a run is timed from the go to the latest ``finished_at`` in the job records, across
processes. Each round runs every variant once, in rotated order; the tables give the
median jobs/s and its min-max spread over rounds, and per round the ratio to one
process on one Redis and, on the cluster, of partitions to one stream with as many
processes. CPU is measured from /proc for each redis-server (utime + stime, as % of
one core over the run) and from each worker process (``time.process_time``).

It starts its own servers (loopback, free ports, temp dirs, no persistence) and
skips, exit 0, without redis-server. Writes benchmarks/results/queue_scaling.json
unless ``--no-save``; ``--quick`` is a short smoke run (fewer jobs, one round).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's course_lib; the servers

from _common import save  # noqa: E402
from _redis_cluster import LocalCluster  # noqa: E402
from _redis_server import RedisServer  # noqa: E402

from course_lib.distributed import Job, TaskRegistry  # noqa: E402
from course_lib.distributed.partitions import (  # noqa: E402
    PartitionedQueue,
    PartitionedWorkers,
    partition_names,
)
from course_lib.redis import connect  # noqa: E402

QUEUE = "qscale"
PARTITIONS = 3
SLOTS_PER_PROCESS = 30
BATCH = 10  # entries per XREADGROUP, for every Worker: the default concurrency's batch
IO_JOB_S = 0.01
ENQUEUE_BATCH = 100
RUN_TIMEOUT_S = 300.0

# --- inside a worker process -------------------------------------------------------------

_progress: Any = None
_slot = 0


async def noop() -> None:
    _progress[_slot] += 1


async def io() -> None:
    await asyncio.sleep(IO_JOB_S)
    _progress[_slot] += 1


async def _child_run(conn: Any, spec: dict) -> dict:
    client = await connect(spec["url"])
    try:
        registry = TaskRegistry()
        registry.add(noop)
        registry.add(io)
        workers = PartitionedWorkers(client, registry, spec["names"], name=spec["name"],
                                     concurrency=spec["concurrency"], batch_size=BATCH)
        conn.send("ready")
        await asyncio.to_thread(conn.recv)  # go
        cpu0, first = time.process_time(), time.time()
        await workers.start()
        await asyncio.to_thread(conn.recv)  # stop: every job is settled
        cpu_s = time.process_time() - cpu0
        await workers.stop()
    finally:
        await client.aclose()
    return {"first": first, "cpu_s": cpu_s}


def _child_main(conn: Any, progress: Any, slot: int) -> None:
    global _progress, _slot
    _progress, _slot = progress, slot
    while (spec := conn.recv()) is not None:
        try:
            conn.send(asyncio.run(_child_run(conn, spec)))
        except BaseException as exc:
            conn.send({"error": repr(exc)})
            raise


class _Processes:
    """Worker processes, spawned once and reused, each with a progress counter."""

    def __init__(self, count: int) -> None:
        ctx = mp.get_context("spawn")
        self.progress = ctx.RawArray("q", count)
        self.conns, self.procs = [], []
        for slot in range(count):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_child_main, args=(child, self.progress, slot),
                               name=f"qscale-{slot}", daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def recv(self, slot: int) -> Any:
        if not self.conns[slot].poll(RUN_TIMEOUT_S):
            raise RuntimeError("a worker process did not answer")
        reply = self.conns[slot].recv()
        if isinstance(reply, dict) and "error" in reply:
            raise RuntimeError(f"worker process failed: {reply['error']}")
        return reply

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.terminate()


# --- the parent ----------------------------------------------------------------------------


def _cpu_s(pid: int) -> float:
    """utime + stime of ``pid`` so far, in seconds (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Setup:
    """Where a variant runs: a URL, the servers' pids, the queue's partition names."""

    def __init__(self, label: str, url: str, pids: list[int], names: list[str]) -> None:
        self.label, self.url, self.pids, self.names = label, url, pids, names


async def _one_run(procs: _Processes, setup: _Setup, variant: dict, jobs: int) -> dict:
    count, task = variant["procs"], variant["task"]
    r = await connect(setup.url)
    queue = PartitionedQueue(r, QUEUE, setup.names)
    try:
        await r.flushall()
        concurrency = SLOTS_PER_PROCESS // len(setup.names)
        for slot in range(count):
            procs.progress[slot] = 0
            procs.conns[slot].send({"url": setup.url, "names": setup.names,
                                    "name": f"qscale-{slot}", "concurrency": concurrency})
        for slot in range(count):
            procs.recv(slot)
        ids = [f"qs-{i}" for i in range(jobs)]
        for s in range(0, jobs, ENQUEUE_BATCH):
            await queue.enqueue_many([Job(task, id=i) for i in ids[s:s + ENQUEUE_BATCH]])
        server0 = [_cpu_s(pid) for pid in setup.pids]
        wall0 = time.time()
        for slot in range(count):
            procs.conns[slot].send("go")
        await _wait_done(queue, procs, count, jobs)
        wall_s = time.time() - wall0
        server_s = [_cpu_s(pid) - s0 for pid, s0 in zip(setup.pids, server0, strict=True)]
        for slot in range(count):
            procs.conns[slot].send("stop")
        outs = [procs.recv(slot) for slot in range(count)]
        last = await _last_finished(queue, ids)
        seconds = last - min(o["first"] for o in outs)
        return {"jobs_per_s": jobs / seconds, "seconds": seconds,
                "server_cpu_pct": [100 * s / wall_s for s in server_s],
                # The rate at which the busiest redis-server would use a whole core, at
                # this run's CPU per job: where this setup's Redis side would cap.
                "redis_ceiling_jobs_per_s": jobs / max(max(server_s), 1e-3),
                "worker_cpu_pct": 100 * sum(o["cpu_s"] for o in outs) / wall_s,
                "server_cpu_us_per_job": 1e6 * sum(server_s) / jobs,
                "worker_cpu_us_per_job": 1e6 * sum(o["cpu_s"] for o in outs) / jobs}
    finally:
        await queue.aclose()
        await r.flushall()
        await r.aclose()


async def _wait_done(queue: PartitionedQueue, procs: _Processes, count: int, jobs: int) -> None:
    start = time.monotonic()
    while True:
        if sum(procs.progress[:count]) >= jobs and (await queue.counts()).stream == 0:
            return  # every job ran, and every settle deleted its entry
        if time.monotonic() - start > RUN_TIMEOUT_S:
            raise RuntimeError(f"{sum(procs.progress[:count])} of {jobs} done after "
                               f"{RUN_TIMEOUT_S} s")
        await asyncio.sleep(0.005)


async def _last_finished(queue: PartitionedQueue, ids: list[str]) -> float:
    """The latest ``finished_at`` over the records; RuntimeError unless all are done."""
    latest, statuses = 0.0, set()
    for partition in queue.queues:
        mine = [i for i in ids if queue.partition(i) is partition]
        for s in range(0, len(mine), 1000):
            async with partition.redis.pipeline(transaction=False) as pipe:
                for i in mine[s:s + 1000]:
                    pipe.hmget(partition.keys.job(i), "status", "finished_at")
                for status, finished in await pipe.execute():
                    statuses.add(status)
                    latest = max(latest, float(finished or 0))
    if statuses != {b"done"}:
        raise RuntimeError(f"job statuses {statuses}, expected all done")
    return latest


def _variants() -> list[dict]:
    out = []
    for task in ("noop", "io"):
        for setup, counts in (("one Redis", (1, 2, 4)), ("cluster, one stream", (2, 4)),
                              ("cluster, 3 partitions", (2, 4))):
            for p in counts:
                out.append({"name": f"{setup}, {p} proc, {task}", "setup": setup, "procs": p,
                            "task": task})
    return out


def _summary(xs: list[float]) -> dict:
    med = statistics.median(xs)
    return {"median": med, "min": min(xs), "max": max(xs),
            "spread_pct": 100 * (max(xs) - min(xs)) / med if med else 0.0, "samples": xs}


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def _bench(setups: dict[str, _Setup], args: argparse.Namespace) -> dict:
    variants = _variants()
    runs: dict[str, list[dict]] = {v["name"]: [] for v in variants}
    procs = _Processes(4)
    try:
        for setup in setups.values():  # warm up: imports, connections, scripts
            await _one_run(procs, setup, {"procs": 1, "task": "noop"}, 500)
        for rnd in range(args.rounds):
            shift = rnd * 5 % len(variants)
            for v in variants[shift:] + variants[:shift]:
                jobs = args.jobs if v["task"] == "noop" else args.io_jobs
                run = await _one_run(procs, setups[v["setup"]], v, jobs)
                runs[v["name"]].append(run)
                print(f"  round {rnd + 1}  {v['name']:38} {run['jobs_per_s']:8,.0f} jobs/s  "
                      f"redis CPU {'/'.join(f'{c:.0f}' for c in run['server_cpu_pct'])} %  "
                      f"workers {run['worker_cpu_pct']:.0f} %", flush=True)
    finally:
        procs.close()
    return _tabulate(variants, runs, args.rounds)


def _tabulate(variants: list[dict], runs: dict[str, list[dict]], rounds: int) -> dict:
    rows = {}
    for v in variants:
        rs = runs[v["name"]]
        base = runs[f"one Redis, 1 proc, {v['task']}"]
        row = {**v, "jobs_per_s": _summary([x["jobs_per_s"] for x in rs]),
               "ratio_to_one_redis_1_proc": _summary(
                   [x["jobs_per_s"] / b["jobs_per_s"] for x, b in zip(rs, base, strict=True)]),
               "busiest_redis_cpu_pct": _summary([max(x["server_cpu_pct"]) for x in rs]),
               "redis_ceiling_jobs_per_s": _summary([x["redis_ceiling_jobs_per_s"] for x in rs]),
               "redis_cpu_pct_per_node": [statistics.median(c) for c in
                                          zip(*(x["server_cpu_pct"] for x in rs), strict=True)],
               "worker_cpu_pct": _summary([x["worker_cpu_pct"] for x in rs]),
               "server_cpu_us_per_job": _summary([x["server_cpu_us_per_job"] for x in rs]),
               "worker_cpu_us_per_job": _summary([x["worker_cpu_us_per_job"] for x in rs])}
        if v["setup"] == "cluster, 3 partitions":
            one = runs[f"cluster, one stream, {v['procs']} proc, {v['task']}"]
            row["ratio_to_one_stream"] = _summary(
                [x["jobs_per_s"] / o["jobs_per_s"] for x, o in zip(rs, one, strict=True)])
        rows[v["name"]] = row
    return {"variants": rows}


def _report(result: dict) -> None:
    print(f"\n{'variant':40} {'jobs/s':>8} {'min-max':>15} {'x 1 proc':>8} {'x 1 stream':>10}"
          f" {'redis CPU %':>13} {'workers CPU %':>13} {'redis cap':>9} {'µs/job w/r':>11}")
    for name, row in result["variants"].items():
        j = row["jobs_per_s"]
        lift = row.get("ratio_to_one_stream")
        lifted = f"{lift['median']:.2f}x" if lift else ""
        nodes = "/".join(f"{c:.0f}" for c in row["redis_cpu_pct_per_node"])
        print(f"  {name:38} {j['median']:8,.0f} {j['min']:7,.0f}-{j['max']:<7,.0f}"
              f" {row['ratio_to_one_redis_1_proc']['median']:7.2f}x"
              f" {lifted:>10}"
              f" {nodes:>13} {row['worker_cpu_pct']['median']:13.0f}"
              f" {row['redis_ceiling_jobs_per_s']['median']:9,.0f}"
              f" {row['worker_cpu_us_per_job']['median']:5.0f}/"
              f"{row['server_cpu_us_per_job']['median']:<5.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=None, help="no-op jobs per run (20000)")
    ap.add_argument("--io-jobs", type=int, default=None, help="10 ms jobs per run (6000)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5)")
    ap.add_argument("--quick", action="store_true", help="4000/1200 jobs, 1 round: a smoke run")
    ap.add_argument("--no-save", action="store_true", help="do not write the JSON result")
    args = ap.parse_args()
    args.jobs = args.jobs or (4000 if args.quick else 20_000)
    args.io_jobs = args.io_jobs or (1200 if args.quick else 6000)
    args.rounds = args.rounds or (1 if args.quick else 5)
    binary = shutil.which("redis-server")
    if binary is None:
        print("queue_scaling: skipped, no redis-server installed")
        return
    with tempfile.TemporaryDirectory(prefix="qscale-") as tmp:
        single = RedisServer(binary, Path(tmp) / "single")
        single.dir.mkdir()
        cluster = LocalCluster(binary, Path(tmp) / "cluster")
        try:
            single.start()
            cluster.start()
            names = partition_names(QUEUE, PARTITIONS)
            setups = {
                "one Redis": _Setup("one Redis", single.url, [single._proc.pid], [QUEUE]),
                "cluster, one stream": _Setup("cluster, one stream", cluster.url,
                                              [s._proc.pid for s in cluster.servers], [QUEUE]),
                "cluster, 3 partitions": _Setup("cluster, 3 partitions", cluster.url,
                                                [s._proc.pid for s in cluster.servers], names),
            }
            placement = asyncio.run(_placement(cluster.url, names))
            load_before, started = _load(), time.perf_counter()
            print(f"queue_scaling: {args.jobs} no-op / {args.io_jobs} I/O jobs per run, "
                  f"{args.rounds} rounds, load {load_before}; partitions {placement}", flush=True)
            result = asyncio.run(_bench(setups, args))
            took, load_after = time.perf_counter() - started, _load()
        finally:
            cluster.stop()
            single.stop()
    _report(result)
    print(f"\n{took:.0f} s; load average before {load_before}, after {load_after}")
    if not args.no_save:
        payload = {"jobs": args.jobs, "io_jobs": args.io_jobs, "io_job_s": IO_JOB_S,
                   "rounds": args.rounds, "quick": args.quick,
                   "slots_per_process": SLOTS_PER_PROCESS, "batch_size": BATCH,
                   "partitions": placement,
                   "enqueue_batch": ENQUEUE_BATCH, "redis_version": _redis_version(binary),
                   "git": _git(), "load_before": load_before, "load_after": load_after,
                   "seconds": round(took, 1), **result}
        print(f"saved {save('queue_scaling_quick' if args.quick else 'queue_scaling', payload)}")


async def _placement(url: str, names: list[str]) -> dict[str, str]:
    r = await connect(url)
    try:
        return PartitionedQueue(r, QUEUE, names).placement()
    finally:
        await r.aclose()


def _redis_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def _git() -> str | None:
    """The commit measured, with "+dirty" when course_lib or this file has changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "course_lib",
                                "benchmarks/queue_scaling.py"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
