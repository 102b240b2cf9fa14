"""Jobs per second: the course worker against arq, SAQ, Celery and RQ, with the bare Streams loop.

    make bench-peers                 # makes .venv-peers/PEER (one venv per peer), then runs this
    python benchmarks/queue_peers.py [--quick] [--jobs 10000] [--io-jobs 1000] [--rounds 4]
        [--procs 1,2] [--only NAME,...] [--no-save] [--json PATH]
    python benchmarks/queue_peers.py --render [--json PATH]   # the .md again, from the JSON

Each consumer is run with one, then two worker processes (``--procs``), each started
from the library's own command line in its own venv (the peers' redis-py pins
conflict), on a redis-server of our own (loopback, free port, temp dir, no
persistence), and runs two workloads:

- ``noop``: N jobs that only count themselves (``INCR peers:done``);
- ``io``: N jobs that wait 10 ms, then count: ``asyncio.sleep(0.01)`` in the async
  workers (the course worker, arq, SAQ), ``time.sleep(0.01)`` in Celery and RQ, whose
  jobs are sync functions (a blocking call is what I/O is in a solo, prefork or
  thread pool; in an async worker it would block the loop).

Timing, the same for all: the worker processes are started and warmed up (each has
done a job), then benchmarks/peers/_drive.py, in the peer's venv, enqueues the N jobs
with the library's own client and watches the one counter every job increments; a
run lasts from the first enqueue to the counter reaching N. Each round runs every
consumer once at each process count, back to back (1 then 2, the next round 2 then 1),
consumers in rotated order, so a busy moment on this shared machine hits all alike.
A consumer too slow for the default counts (RQ) runs fewer jobs (``job_cap`` in
VARIANTS), said in the table and in the JSON's ``scaled``.

The ceiling is the bare loop of benchmarks/queue_throughput.py (imported, not
copied), in as many processes: XREADGROUP 100 + one pipeline per batch, no-op jobs
enqueued before it starts, timed from "go" to the last result. Ratios divide a
consumer's jobs/s by the bare loop's at the same process count in the same round, by
the course worker c=10's likewise, and by its own with one process. Also per job: CPU
of the workers' process groups (forked children included) and of redis-server.
Writes benchmarks/results/queue_peers.json and queue_peers.md unless ``--no-save``;
peers/_markdown.py writes the .md, which documents the JSON's fields.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

ROOT = Path(__file__).resolve().parent.parent
# The checkout's course_lib, as the workers get it through PYTHONPATH (the venv's
# editable install may point at another worktree: _git() records this one), and
# peers/_live.py, the live runner.
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks" / "peers")]

from _common import RESULTS, machine, save  # noqa: E402
from _live import PEERS_VENV, LiveRunner, missing_venvs, worker_command  # noqa: E402, F401
from _markdown import markdown  # noqa: E402
from queue_throughput import _git, _LocalServer  # noqa: E402

IO_S = 0.01  # peers/_jobs.py's IO_S
WORKLOADS = ("noop", "io")

# Every consumer: which venv, which job module, how many jobs at once, which command.
# "{py}"/"{bin}" are the venv's python and bin/, "{url}" the server, "{c}" concurrency,
# "{i}" the worker process's slot (Celery's node names must differ). "job_cap": fewer
# jobs per run than asked, and why (reported as "scaled", never silently).
VARIANTS: list[dict[str, Any]] = [
    {"name": "course worker c=10", "peer": "course", "module": "course_jobs", "concurrency": 10,
     "cmd": ["{py}", "-m", "course_lib.distributed", "worker", "--redis-url", "{url}",
             "--queue", "peers", "--app", "course_jobs:registry", "--concurrency", "{c}", "-q"]},
    {"name": "course worker c=100", "peer": "course", "module": "course_jobs", "concurrency": 100,
     "cmd": ["{py}", "-m", "course_lib.distributed", "worker", "--redis-url", "{url}",
             "--queue", "peers", "--app", "course_jobs:registry", "--concurrency", "{c}", "-q"]},
    {"name": "SAQ c=10", "peer": "saq", "module": "saq_jobs", "concurrency": 10,
     "cmd": ["{bin}/saq", "saq_jobs.settings"]},
    {"name": "arq max_jobs=10", "peer": "arq", "module": "arq_jobs", "concurrency": 10,
     "cmd": ["{bin}/arq", "arq_jobs.WorkerSettings"]},
    {"name": "arq max_jobs=100", "peer": "arq", "module": "arq_jobs", "concurrency": 100,
     "cmd": ["{bin}/arq", "arq_jobs.WorkerSettings"]},
    {"name": "Celery solo", "peer": "celery", "module": "celery_jobs", "concurrency": 1,
     "cmd": ["{bin}/celery", "-A", "celery_jobs", "worker", "--pool=solo", "-n", "peers{i}@%h",
             "--loglevel=WARNING"]},
    {"name": "Celery prefork -c 2", "peer": "celery", "module": "celery_jobs", "concurrency": 2,
     "cmd": ["{bin}/celery", "-A", "celery_jobs", "worker", "--pool=prefork", "-c", "{c}",
             "-n", "peers{i}@%h", "--loglevel=WARNING"]},
    {"name": "Celery threads -c 10", "peer": "celery", "module": "celery_jobs", "concurrency": 10,
     "cmd": ["{bin}/celery", "-A", "celery_jobs", "worker", "--pool=threads", "-c", "{c}",
             "-n", "peers{i}@%h", "--loglevel=WARNING"]},
    {"name": "RQ (fork per job)", "peer": "rq", "module": "rq_jobs", "concurrency": 1,
     "cmd": ["{bin}/rq", "worker", "peers", "--url", "{url}", "--path", "{peers}", "-q"],
     "job_cap": {"noop": 1000, "io": 200,
                  "why": "RQ forks a work horse per job, 30-110 jobs/s here: 10,000 jobs "
                         "would take 1.5-5 minutes a run"}},
]
BARE = "bare Streams loop"
# In the .md, what follows this line is written by hand about the run above: --render
# keeps it, a new measurement drops it (its figures would be stale).
NOTES = "\n<!-- notes on this run, by hand: --render keeps them -->\n"
REFERENCE = "course worker c=10"  # the course worker as a user gets it: the peers' yardstick


class Runner(Protocol):
    """What the rounds need from the machine; tests pass a fake one."""

    def versions(self, peer: str) -> dict[str, str | None]: ...
    def run_bare(self, jobs: int, procs: int) -> dict: ...
    def run_consumer(self, variant: dict, jobs: dict[str, int], procs: int
                     ) -> dict[str, dict]: ...


# --- rounds and tables: pure, so a fake runner can drive them ----------------------------


def summary(xs: list[float]) -> dict:
    med = statistics.median(xs)
    return {"median": med, "min": min(xs), "max": max(xs),
            "spread_pct": 100 * (max(xs) - min(xs)) / med if med else 0.0, "samples": xs}


def job_counts(variant: dict, jobs: int, io_jobs: int) -> dict[str, int]:
    """The jobs per run asked for, or fewer where the variant caps them (``job_cap``)."""
    cap = variant.get("job_cap", {})
    return {"noop": min(jobs, cap.get("noop", jobs)), "io": min(io_jobs, cap.get("io", io_jobs))}


def run_rounds(runner: Runner, variants: list[dict], *, rounds: int, jobs: int, io_jobs: int,
               procs: list[int], log: Callable[[str], None] = print) -> dict:
    """Every consumer once per round at each process count, back to back; rotated order.

    The bare loop takes its turn like the rest. Within a round a consumer runs with
    1 then 2 processes, the next round 2 then 1, so neither count always goes first.
    """
    order: list[dict | None] = [None, *variants]  # None: the bare loop
    bare_runs: dict[int, list[dict]] = {p: [] for p in procs}
    runs: dict[int, dict[str, dict[str, list[dict]]]] = {
        p: {v["name"]: {w: [] for w in WORKLOADS} for v in variants} for p in procs}
    for rnd in range(rounds):
        shift = rnd % len(order)
        counts = procs if rnd % 2 == 0 else procs[::-1]
        for v in order[shift:] + order[:shift]:
            for p in counts:
                if v is None:
                    run = runner.run_bare(jobs, p)
                    bare_runs[p].append(run)
                    log(f"  round {rnd + 1}  {BARE:24} x{p} noop {run['jobs_per_s']:9,.0f} "
                        "jobs/s")
                    continue
                out = runner.run_consumer(v, job_counts(v, jobs, io_jobs), p)
                for w in WORKLOADS:
                    runs[p][v["name"]][w].append(out[w])
                log(f"  round {rnd + 1}  {v['name']:24} x{p} noop "
                    f"{out['noop']['jobs_per_s']:9,.0f}  io {out['io']['jobs_per_s']:7,.0f} "
                    "jobs/s")
    return tabulate(variants, bare_runs, runs, jobs=jobs, io_jobs=io_jobs, procs=procs)


def _per_job_us(runs: list[dict], key: str, n: int) -> dict | None:
    xs = [r[key] for r in runs]
    return None if any(x is None for x in xs) else summary([1e6 * x / n for x in xs])


def tabulate(variants: list[dict], bare_runs: dict[int, list[dict]], runs: dict, *, jobs: int,
             io_jobs: int, procs: list[int]) -> dict:
    """``by_procs`` (a table per process count), ``consumers`` (the first) and ``scaled``."""
    by_procs: dict[str, dict[str, dict]] = {}
    for p in procs:
        bare_rates = [b["jobs_per_s"] for b in bare_runs[p]]
        consumers: dict[str, dict] = {
            BARE: {"peer": "course", "concurrency": 100, "procs": p, "noop": {
                "jobs": jobs, "jobs_per_s": summary(bare_rates),
                "ratio_to_bare": summary([1.0] * len(bare_rates)),
                "worker_cpu_us_per_job": _per_job_us(bare_runs[p], "worker_cpu_s", jobs),
                "redis_cpu_us_per_job": _per_job_us(bare_runs[p], "server_cpu_s", jobs),
                "enqueue_jobs_per_s": summary([jobs / b["enqueue_s"] for b in bare_runs[p]])}}}
        for v in variants:
            row: dict[str, Any] = {"peer": v["peer"], "concurrency": v["concurrency"],
                                   "procs": p}
            for w, n in job_counts(v, jobs, io_jobs).items():
                rs = runs[p][v["name"]][w]
                rates = [r["jobs_per_s"] for r in rs]
                row[w] = {"jobs": n, "jobs_per_s": summary(rates),
                          "ratio_to_bare": summary([x / b for x, b in
                                                    zip(rates, bare_rates, strict=True)]),
                          "worker_cpu_us_per_job": _per_job_us(rs, "worker_cpu_s", n),
                          "redis_cpu_us_per_job": _per_job_us(rs, "server_cpu_s", n),
                          "enqueue_jobs_per_s": summary([n / r["enqueue_s"] for r in rs]),
                          "timed_out": sum(bool(r.get("timed_out")) for r in rs)}
            # 10 ms jobs, c at once in each of p processes: none can beat p x c / 10 ms.
            row["io"]["ceiling_jobs_per_s"] = p * v["concurrency"] / IO_S
            consumers[v["name"]] = row
        add_reference_ratios(consumers)
        by_procs[str(p)] = consumers
    add_scaling(by_procs)
    scaled = {}
    for v in variants:
        counts = job_counts(v, jobs, io_jobs)
        if counts != {"noop": jobs, "io": io_jobs}:
            scaled[v["name"]] = {**counts, "why": v["job_cap"]["why"]}
    return {"procs": procs, "by_procs": by_procs, "consumers": by_procs[str(procs[0])],
            "scaled": scaled}


def add_reference_ratios(consumers: dict, reference: str = REFERENCE) -> None:
    """``ratio_to_<reference>``: jobs/s over the reference consumer's in the same round.

    The bare loop reads jobs enqueued before it starts, so it is a ceiling; the peers
    are compared with each other through the course worker at its default, timed alike.
    """
    if reference not in consumers:
        return
    key = "ratio_to_" + reference.replace(" ", "_")
    for row in consumers.values():
        for w in WORKLOADS:
            if w in row and w in consumers[reference]:
                ref = consumers[reference][w]["jobs_per_s"]["samples"]
                row[w][key] = summary([x / r for x, r in
                                       zip(row[w]["jobs_per_s"]["samples"], ref, strict=True)])


def add_scaling(by_procs: dict[str, dict]) -> None:
    """``ratio_to_1_proc``: jobs/s over the same consumer's with one process, same round."""
    if "1" not in by_procs:
        return
    for consumers in by_procs.values():
        for name, row in consumers.items():
            one = by_procs["1"].get(name)
            for w in WORKLOADS:
                if one is not None and w in row and w in one:
                    row[w]["ratio_to_1_proc"] = summary([
                        x / y for x, y in zip(row[w]["jobs_per_s"]["samples"],
                                              one[w]["jobs_per_s"]["samples"], strict=True)])


def tables(payload: dict) -> dict[str, dict]:
    """``by_procs`` of a result, or of a JSON from before it had one (one process each)."""
    return payload.get("by_procs") or {"1": payload["consumers"]}


def report(result: dict) -> str:
    """The table, as printed and as put in the .md: each consumer with 1, then 2 processes."""
    ref = "ratio_to_" + REFERENCE.replace(" ", "_")
    lines = ["| consumer | procs | c | jobs (no-op / I/O) | no-op jobs/s (min-max) | x 1 proc | "
             "x bare | x course c=10 | worker CPU µs/job | redis CPU µs/job | "
             "10 ms I/O jobs/s (min-max) | x 1 proc | of ceiling | x course c=10 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def rate(s: dict) -> str:
        j = s["jobs_per_s"]
        return f"{j['median']:,.0f} ({j['min']:,.0f}-{j['max']:,.0f})"

    def cell(s: dict | None, fmt: str = ",.0f") -> str:
        return "-" if s is None else format(s["median"], fmt)

    by_procs = tables(result)
    scaled = result.get("scaled", {})
    names = list(dict.fromkeys(name for rows in by_procs.values() for name in rows))
    for name in names:
        for p, rows in by_procs.items():
            if name not in rows:
                continue
            row = rows[name]
            n, io = row["noop"], row.get("io")
            counts = f"{n['jobs']:,} / {io['jobs']:,}" if io else f"{n['jobs']:,} / -"
            if name in scaled:
                counts += " (fewer)"
            io_cells = "- | - | - | -"
            if io is not None:
                io_cells = (f"{rate(io)} | {cell(io.get('ratio_to_1_proc'), '.2f')} | "
                            f"{io['jobs_per_s']['median'] / io['ceiling_jobs_per_s']:.0%} | "
                            f"{cell(io.get(ref), '.2f')}")
            lines.append(f"| {name} | {row.get('procs', int(p))} | {row['concurrency']} | "
                         f"{counts} | {rate(n)} | {cell(n.get('ratio_to_1_proc'), '.2f')} | "
                         f"{n['ratio_to_bare']['median']:.2f} | {cell(n.get(ref), '.2f')} | "
                         f"{cell(n['worker_cpu_us_per_job'])} | "
                         f"{cell(n['redis_cpu_us_per_job'])} | {io_cells} |")
    for name, s in scaled.items():
        lines.append(f"\n{name}: {s['noop']:,} no-op and {s['io']:,} I/O jobs per run, fewer "
                     f"than the others' {result['jobs']:,} and {result['io_jobs']:,}: "
                     f"{s['why']}.")
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=None, help="no-op jobs per run (default 10000)")
    ap.add_argument("--io-jobs", type=int, default=None,
                    help="10 ms I/O jobs per run (default 1000: Celery solo and RQ take "
                         "10 s or more for those)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 4)")
    ap.add_argument("--procs", type=_procs, default=[1, 2],
                    help="worker processes per consumer, comma list (default 1,2); the "
                         "x 1 proc ratios need 1 in it")
    ap.add_argument("--quick", action="store_true",
                    help="1000 no-op and 200 I/O jobs, 2 rounds: a try-out")
    ap.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                    default=None, help="consumers whose name, or a word of it, starts with one "
                                       "of these, comma list (e.g. 'course,SAQ,Celery solo')")
    ap.add_argument("--no-save", action="store_true", help="do not write the JSON and .md")
    ap.add_argument("--json", type=Path, default=None,
                    help=f"write the JSON here instead of {RESULTS.name}/queue_peers.json")
    ap.add_argument("--render", action="store_true",
                    help="run nothing: rewrite the .md (and derived ratios) from the JSON")
    args = ap.parse_args(argv)
    args.jobs = args.jobs or (1000 if args.quick else 10_000)
    args.io_jobs = args.io_jobs or (200 if args.quick else 1000)
    args.rounds = args.rounds or (2 if args.quick else 4)
    args.variants = [v for v in VARIANTS if not args.only or _named(v["name"], args.only)]
    if not args.variants:
        ap.error(f"--only {','.join(args.only)} matches no consumer")
    return args


def _procs(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of counts: {text!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"process counts are 1 or more: {text!r}")
    return counts


def _named(name: str, wanted: list[str]) -> bool:
    """``--only`` matches the start of the name or of one of its words ("rq" is not arq)."""
    name = name.lower()
    return any(name.startswith(w.lower()) or any(word.startswith(w.lower())
                                                 for word in name.split()) for w in wanted)


def _load() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def measure(args: argparse.Namespace, runner: Runner, log: Callable[[str], None] = print) -> dict:
    """The rounds and everything the JSON records about them."""
    load_before, started = _load(), time.perf_counter()
    versions = {peer: runner.versions(peer) for peer in dict.fromkeys(
        ["course", *(v["peer"] for v in args.variants)])}
    result = run_rounds(runner, args.variants, rounds=args.rounds, jobs=args.jobs,
                        io_jobs=args.io_jobs, procs=args.procs, log=log)
    return {"jobs": args.jobs, "io_jobs": args.io_jobs, "io_s": IO_S, "rounds": args.rounds,
            "quick": args.quick, "versions": versions,
            "commands": {v["name"]: v["cmd"] for v in args.variants},
            "load_before": load_before, "load_after": _load(),
            "seconds": round(time.perf_counter() - started, 1), **result}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        path = args.json or RESULTS / "queue_peers.json"
        payload = json.loads(path.read_text())
        for consumers in tables(payload).values():
            add_reference_ratios(consumers)
        if "by_procs" in payload:
            add_scaling(payload["by_procs"])
            payload["consumers"] = payload["by_procs"][str(payload["procs"][0])]
        path.write_text(json.dumps(payload, indent=2) + "\n")
        md = path.with_suffix(".md")
        notes = md.read_text().partition(NOTES)[2] if md.exists() else ""
        md.write_text(markdown(payload, report(payload)) + (NOTES + notes if notes else ""))
        print(f"rendered {md}")
        return 0
    # SIGTERM as SystemExit: the finally blocks stop the worker and the server we started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    missing = missing_venvs(args.variants)
    if missing:
        print(f"queue_peers: no venv for {', '.join(missing)} under {PEERS_VENV}: "
              "`make bench-peers` makes them")
        return 2
    binary = shutil.which("redis-server")
    if binary is None:
        print("queue_peers: skipped, no redis-server installed")
        return 0
    server = _LocalServer(binary)
    logdir = Path(tempfile.mkdtemp(prefix="queue-peers-logs-"))
    runner = None
    try:
        asyncio.run(server.wait_ready())
        runner = LiveRunner(server.url, logdir, max(args.procs))
        print(f"queue_peers: {len(args.variants)} consumers + the bare loop, {args.jobs} no-op "
              f"and {args.io_jobs} I/O jobs per run, with {' and '.join(map(str, args.procs))}"
              f" worker processes, {args.rounds} rounds, load {_load()}; "
              f"worker logs in {logdir}", flush=True)
        payload = measure(args, runner, log=lambda line: print(line, flush=True))
        payload["server"] = {"redis_version": runner.redis("INFO", "server")["redis_version"]}
    finally:
        if runner is not None:
            runner.close()
        server.stop()
    payload["git"] = _git()
    table = report(payload)
    print("\n" + table)
    print(f"\n{payload['seconds']:.0f} s; load average before {payload['load_before']}, "
          f"after {payload['load_after']}")
    if not args.no_save:
        if args.json is None:
            path = save("queue_peers", payload)
        else:
            path = args.json
            path.write_text(json.dumps({"benchmark": "queue_peers",
                                        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                        "machine": machine(), **payload}, indent=2) + "\n")
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text()), table))
        print(f"saved {path} and {path.with_suffix('.md').name}")
    shutil.rmtree(logdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
