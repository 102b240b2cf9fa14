"""Concurrency that pays, and where it stops: requests/s and p99 latency against a real server.

    python benchmarks/perf_concurrency.py [--rounds 3] [--quick]

The server (course_lib.examples.ch06_server) runs in a subprocess on a free loopback
port; this process is the client (course_lib.examples.ch06_fetch), on kept-alive
connections. Two servers:

- **server-bound**: 20 ms per request, at most 16 at once (a backend with a pool of
  16): the most it can do is 800 requests/s, whatever the client does.
- **loop-bound**: 5 ms per request, no practical limit (capacity 10,000), but the
  client parses each reply (``json.loads`` of a 54 KB document, about 0.5 ms of CPU
  here): the client's event loop, one Python thread holding the GIL, runs out of CPU
  first, near 2,000 requests/s, however many requests are in flight.

For each, the strategies: one by one (``sequential``), ``bounded`` by a Semaphore at
1, 2, 4 ... 256 requests in flight, a ``pool`` of 16 and 64 worker tasks, and
``gather_all`` of 512 requests at once. A run sends max(32, 4 x limit) requests (more
for the fast server), so each run lasts a fraction of a second. Each round runs every
variant once, in rotated order; the table gives medians and min-max over the rounds,
and the ratio of each rate to the sequential rate of the same round. The client's CPU
time over wall time, and the server's (read from its STATS), say whose loop is saturated. Writes
benchmarks/results/perf_concurrency.json (machine, load average before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from _common import save

from course_lib.examples.ch06_fetch import Run, bounded, gather_all, measure, pool, sequential
from course_lib.examples.ch06_server import Client, fetch_stats, start_server

SERVERS = {
    "server-bound": {"latency_s": 0.020, "capacity": 16, "min_n": 32, "per_limit": 4},
    "loop-bound": {"latency_s": 0.005, "capacity": 10_000, "min_n": 50, "per_limit": 8,
                   "parse": True},
}
# The reply a loop-bound client parses: Python work holding the GIL, about 0.5 ms.
DOC = json.dumps([{"id": i, "name": f"item {i}", "tags": ["a", "b"], "price": i * 1.5}
                  for i in range(800)])
LIMITS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
POOLS = [16, 64]
GATHER_N = 512


def variants(limits: list[int], pools: list[int], gather_n: int) -> list[dict]:
    out = [{"name": "sequential", "strategy": "sequential", "limit": 1}]
    out += [{"name": f"bounded {c}", "strategy": "bounded", "limit": c} for c in limits]
    out += [{"name": f"pool {c}", "strategy": "pool", "limit": c} for c in pools]
    out.append({"name": f"gather {gather_n}", "strategy": "gather", "limit": gather_n})
    return out


async def one_run(client: Client, spec: dict, variant: dict) -> dict:
    server_cpu_s = (await fetch_stats(client.address))["cpu_s"]
    run = await _measure(client, spec, variant)
    server_cpu_s = (await fetch_stats(client.address))["cpu_s"] - server_cpu_s
    return {"rate_per_s": run.rate_per_s, "p50_ms": run.p50_s * 1e3, "p99_ms": run.p99_s * 1e3,
            "client_cpu_pct": 100 * run.cpu_s / run.wall_s,
            "server_cpu_pct": 100 * server_cpu_s / run.wall_s,
            "client_cpu_us_per_request": run.cpu_us_per_request, "n": run.n}


async def _measure(client: Client, spec: dict, variant: dict) -> Run:
    get = client.get
    if spec.get("parse"):
        async def get() -> float:
            start = time.perf_counter()
            await client.get()
            json.loads(DOC)
            return time.perf_counter() - start

    limit = variant["limit"]
    if variant["strategy"] == "gather":
        run = await measure(gather_all, get, limit)
    else:
        n = max(spec["min_n"], spec["per_limit"] * limit)
        if variant["strategy"] == "sequential":
            n = spec["min_n"]
            run = await measure(sequential, get, n)
        elif variant["strategy"] == "bounded":
            run = await measure(bounded, get, n, limit)
        else:
            run = await measure(pool, get, n, limit)
    return run


def summary(xs: list[float]) -> dict:
    med = statistics.median(xs)
    return {"median": med, "min": min(xs), "max": max(xs), "samples": xs}


async def bench_server(name: str, spec: dict, vs: list[dict], rounds: int) -> dict:
    runs: dict[str, list[dict]] = {v["name"]: [] for v in vs}
    ratios: dict[str, list[float]] = {v["name"]: [] for v in vs}
    with start_server(latency_s=spec["latency_s"], capacity=spec["capacity"]) as server:
        async with Client(server.address) as client:
            await measure(gather_all, client.get, 64)  # warm up: open connections, caches
            for r in range(rounds):
                order = vs[r % len(vs):] + vs[:r % len(vs)]
                got = {v["name"]: await one_run(client, spec, v) for v in order}
                for v in vs:
                    runs[v["name"]].append(got[v["name"]])
                    ratios[v["name"]].append(got[v["name"]]["rate_per_s"]
                                             / got["sequential"]["rate_per_s"])
                print(f"  {name}: round {r + 1}/{rounds} done", flush=True)
    table = {}
    for v in vs:
        rs = runs[v["name"]]
        table[v["name"]] = {
            "strategy": v["strategy"], "limit": v["limit"],
            **{key: summary([x[key] for x in rs]) for key in rs[0] if key != "n"},
            "n": rs[0]["n"], "ratio_to_sequential": summary(ratios[v["name"]]),
        }
    return {"latency_ms": spec["latency_s"] * 1e3, "capacity": spec["capacity"],
            "max_rate_per_s": spec["capacity"] / spec["latency_s"],
            "parse_ms": _parse_cpu_ms() if spec.get("parse") else 0.0, "variants": table}


def _parse_cpu_ms(times: int = 200) -> float:
    start = time.process_time()
    for _ in range(times):
        json.loads(DOC)
    return (time.process_time() - start) / times * 1e3


def report(results: dict) -> None:
    for name, res in results.items():
        print(f"{name}: {res['latency_ms']:g} ms per request, capacity {res['capacity']}, "
              f"parse {res['parse_ms']:.2f} ms CPU")
        for vname, v in res["variants"].items():
            print(f"  {vname:>14}: {v['rate_per_s']['median']:8.0f} req/s "
                  f"({v['rate_per_s']['min']:.0f}-{v['rate_per_s']['max']:.0f}) "
                  f"x{v['ratio_to_sequential']['median']:6.1f}  "
                  f"p99 {v['p99_ms']['median']:7.1f} ms  "
                  f"CPU client {v['client_cpu_pct']['median']:3.0f}% "
                  f"server {v['server_cpu_pct']['median']:3.0f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="one round, fewer levels (a few seconds)")
    args = parser.parse_args()
    limits, pools, rounds = LIMITS, POOLS, args.rounds
    if args.quick:
        limits, pools, rounds = [1, 4, 16, 64, 256], [16], 1
    vs = variants(limits, pools, GATHER_N)
    load_before = os.getloadavg()
    started = time.perf_counter()
    results = {name: asyncio.run(bench_server(name, spec, vs, rounds))
               for name, spec in SERVERS.items()}
    report(results)
    name = "perf_concurrency_quick" if args.quick else "perf_concurrency"
    path = save(name, {"rounds": rounds, "quick": args.quick,
                       "load_before": load_before, "load_after": os.getloadavg(),
                       "seconds": round(time.perf_counter() - started, 1), "servers": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
