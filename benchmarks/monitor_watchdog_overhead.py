"""What LoopWatchdog costs: chapter 3's scheduling benchmark with and without it.

    python benchmarks/monitor_watchdog_overhead.py [--jobs 100000] [--concurrency 10]
                                                   [--repeats 15] [--intervals 0.01 0.05 0.001]

Two workloads, both through ``PriorityTaskPool(10)`` with 100,000 no-op jobs:

- ``ch3``: scheduling_overhead.py's own, imported from it: every job submitted in one
  synchronous burst, then gathered. The burst blocks the loop for a few hundred ms
  (the watchdog reports it, stack and all), so only a handful of probes run.
- ``batched``: the same jobs submitted 1,000 at a time with ``await asyncio.sleep(0)``
  between batches: the loop stays responsive, a probe runs every interval, and this
  is where the watchdog's steady cost shows.

Intervals 10 and 50 ms are the real settings; 1 ms is an amplifier (10x the probes
of 10 ms): its extra cost divided by 10 estimates the 10 ms one above the noise.

Each variant runs on a fresh plain (non-debug) loop with ``asyncio.run``; the
watchdog variants wrap the workload in
``async with LoopWatchdog(threshold_s=0.1, interval_s=...)``, so the thread's start
and join are inside the timed region. Variants are interleaved round by round (a busy
moment on the machine hurts all alike); per variant: median and spread of wall time
and of process CPU time (the watchdog thread's CPU included), and two ratios to the
bare run: of the medians, and the median of the per-round ratios (each round's runs
are seconds apart, so that one is the steadier on a shared machine).

The target: under 2% (ratio < 1.02). Writes benchmarks/results/monitor_watchdog_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time

from _common import save
from scheduling_overhead import _noop, _pool

from course_lib.monitor.watchdog import LoopWatchdog
from course_lib.scheduling import PriorityTaskPool

THRESHOLD_S = 0.1


async def _pool_batched(jobs: int, concurrency: int, batch: int = 1000) -> None:
    async with PriorityTaskPool(concurrency) as pool:
        futures = []
        for start in range(0, jobs, batch):
            futures += [pool.submit(_noop()) for _ in range(min(batch, jobs - start))]
            await asyncio.sleep(0)  # let the workers (and a probe) run
        results = await asyncio.gather(*futures)
    assert len(results) == jobs


WORKLOADS = {"ch3": _pool, "batched": _pool_batched}


def _timed(workload, jobs: int, concurrency: int, interval_s: float | None) -> dict:
    # The previous run's 100,000 futures are garbage: collect them now, or a full
    # collection lands inside whichever run comes next and is billed to it.
    gc.collect()

    async def main() -> dict:
        wall, cpu = time.perf_counter(), time.process_time()
        if interval_s is None:
            await workload(jobs, concurrency)
            figures = {}
        else:
            async with LoopWatchdog(threshold_s=THRESHOLD_S, interval_s=interval_s) as dog:
                await workload(jobs, concurrency)
            report = dog.report()
            where = report.episodes[-1].where if report.episodes else None
            figures = {"probes": report.samples, "max_lag_s": report.max_s,
                       "p99_lag_s": report.p99_s, "episodes": report.episodes_total,
                       "blocked_at": None if where is None else where.function}
        return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
                **figures}

    return asyncio.run(main(), debug=False)


def _summary(runs: list[dict], base: list[dict]) -> dict:
    out: dict = {}
    for key in ("wall_s", "cpu_s"):
        xs = [r[key] for r in runs]
        med = statistics.median(xs)
        paired = [r[key] / b[key] for r, b in zip(runs, base, strict=True)]
        out[key] = {
            "median": med,
            "min": min(xs),
            "max": max(xs),
            "spread_pct": 100 * (max(xs) - min(xs)) / med,
            "ratio_of_medians": med / statistics.median(b[key] for b in base),
            # The fastest run is the one the rest of the machine disturbed least.
            "ratio_of_mins": min(xs) / min(b[key] for b in base),
            "median_paired_ratio": statistics.median(paired),
            "samples": xs,
        }
    if "probes" in runs[0]:
        out["probes_median"] = statistics.median(r["probes"] for r in runs)
        out["max_lag_s_median"] = statistics.median(r["max_lag_s"] for r in runs)
        out["p99_lag_s_median"] = statistics.median(r["p99_lag_s"] for r in runs)
        out["episodes_total"] = sum(r["episodes"] for r in runs)
        out["blocked_at"] = sorted({r["blocked_at"] for r in runs if r["blocked_at"]})
    return out


def _start_stop_cost(times: int = 200) -> dict:
    """The fixed cost of one watchdog: start, first probe, stop and join, on an idle loop."""
    async def main() -> list[float]:
        xs = []
        for _ in range(times):
            t = time.perf_counter()
            async with LoopWatchdog(threshold_s=THRESHOLD_S, interval_s=0.01):
                pass
            xs.append(time.perf_counter() - t)
        return xs

    xs = asyncio.run(main(), debug=False)
    return {"median_s": statistics.median(xs), "min_s": min(xs), "max_s": max(xs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--intervals", type=float, nargs="+", default=[0.01, 0.05, 0.001])
    args = parser.parse_args()
    n, c = args.jobs, args.concurrency
    base = "no watchdog"
    # The same run twice under two names: the gap between them is the noise floor.
    variants: dict[str, float | None] = {base: None, "no watchdog (again)": None}
    for interval_s in args.intervals:
        variants[f"watchdog {interval_s * 1e3:g} ms"] = interval_s
    runs = {(w, v): [] for w in WORKLOADS for v in variants}
    for workload in WORKLOADS.values():
        _timed(workload, min(n, 10_000), c, None)  # warm-up: imports, code caches
    order = list(variants.items())
    for round_ in range(args.repeats):
        # Rotate the order every round: no variant always follows the same one.
        turn = order[round_ % len(order):] + order[:round_ % len(order)]
        for w, workload in WORKLOADS.items():
            for v, interval_s in turn:
                runs[w, v].append(_timed(workload, n, c, interval_s))
    results = {w: {v: _summary(runs[w, v], runs[w, base]) for v in variants}
               for w in WORKLOADS}
    fixed = _start_stop_cost()
    # The figures quoted elsewhere (the notebook, the report): overhead in percent,
    # per workload and interval, beside the A/A control's (the noise floor).
    summary = {
        w: {v: {"wall_paired_pct": 100 * (r["wall_s"]["median_paired_ratio"] - 1),
                "cpu_paired_pct": 100 * (r["cpu_s"]["median_paired_ratio"] - 1),
                "wall_min_pct": 100 * (r["wall_s"]["ratio_of_mins"] - 1)}
            for v, r in by_variant.items() if v != base}
        for w, by_variant in results.items()
    }

    print(f"{n} no-op jobs through PriorityTaskPool({c}), {args.repeats} interleaved rounds, "
          f"watchdog threshold {THRESHOLD_S} s")
    for w, by_variant in results.items():
        print(f" {w}")
        for v, r in by_variant.items():
            wall, cpu = r["wall_s"], r["cpu_s"]
            line = (f"  {v:18} wall {wall['median'] * 1e3:7.1f} ms "
                    f"(spread {wall['spread_pct']:4.1f}%, x{wall['ratio_of_medians']:.3f}, "
                    f"paired x{wall['median_paired_ratio']:.3f}, min x{wall['ratio_of_mins']:.3f})"
                    f"  cpu x{cpu['ratio_of_medians']:.3f}, paired "
                    f"x{cpu['median_paired_ratio']:.3f}, min x{cpu['ratio_of_mins']:.3f}")
            if "probes_median" in r:
                line += (f"  {r['probes_median']:g} probes, max lag "
                         f"{r['max_lag_s_median'] * 1e3:.0f} ms, {r['episodes_total']} episodes")
            print(line)
    print(f" start + stop of one watchdog on an idle loop: median "
          f"{fixed['median_s'] * 1e6:.0f} µs, min {fixed['min_s'] * 1e6:.0f} µs")
    path = save("monitor_watchdog_overhead", {
        "jobs": n, "concurrency": c, "repeats": args.repeats, "threshold_s": THRESHOLD_S,
        "intervals_s": args.intervals, "target_ratio": 1.02, "baseline": base,
        "overhead_pct": summary, "start_stop_idle_loop": fixed, "results": results,
    })
    print(f"saved {path}")


if __name__ == "__main__":
    main()
