"""CPU work in the event loop: on the loop, asyncio.to_thread, a process pool; loop lag measured.

    python benchmarks/perf_cpu.py [--rounds 3] [--jobs 6] [--quick]

Six jobs of about 50 ms of CPU each, started at once from coroutines, two kinds of
work (course_lib.examples.ch06_cpu): a pure-Python loop (holds the GIL) and
``hashlib.pbkdf2_hmac`` (releases it). Each run is watched by chapter 5's
``LoopWatchdog`` (a probe every 5 ms): the lag p99 and max say how long every other
task on the loop waited. The process pool (2 processes: this machine's cores, spawned
and warmed before timing) is created once. Each round runs every (kind, mode) once,
in rotated order; medians and min-max over rounds, and the wall time's ratio to "on
the loop" of the same kind and round. Writes benchmarks/results/perf_cpu.json
(machine, load average before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import statistics
import sys
import sysconfig
import time

from _common import save

from course_lib.examples.ch06_cpu import MODES, hash_work, py_work, run_jobs
from course_lib.monitor import LoopWatchdog

KINDS = {"pure Python": (py_work, 1_000_000), "hashlib (releases the GIL)": (hash_work, 200_000)}


async def one_run(kind: str, mode: str, jobs: int, pool: concurrent.futures.Executor) -> dict:
    work, size = KINDS[kind]
    async with LoopWatchdog(threshold_s=0.05, interval_s=0.005) as dog:
        wall_s = await run_jobs(mode, work, jobs, size, pool)
        await asyncio.sleep(0.02)  # let the last probe land
    report = dog.report()
    return {"wall_s": wall_s, "lag_p99_ms": (report.p99_s or 0) * 1e3,
            "lag_max_ms": (report.max_s or 0) * 1e3, "probes": report.samples}


def summary(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "samples": xs}


def single_job_ms(repeats: int = 3) -> dict:
    out = {}
    for kind, (work, size) in KINDS.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work(size)
            times.append(time.perf_counter() - start)
        out[kind] = statistics.median(times) * 1e3
    return out


async def bench(rounds: int, jobs: int) -> dict:
    ctx = multiprocessing.get_context("spawn")
    combos = [(k, m) for k in KINDS for m in MODES]
    runs: dict[tuple[str, str], list[dict]] = {c: [] for c in combos}
    ratios: dict[tuple[str, str], list[float]] = {c: [] for c in combos}
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(pool, py_work, 10) for _ in range(4)))
        for r in range(rounds):
            order = combos[r % len(combos):] + combos[:r % len(combos)]
            got = {c: await one_run(*c, jobs, pool) for c in order}
            for c in combos:
                runs[c].append(got[c])
                ratios[c].append(got[c]["wall_s"] / got[(c[0], "on the loop")]["wall_s"])
            print(f"  round {r + 1}/{rounds} done", flush=True)
    out: dict[str, dict] = {}
    for kind, mode in combos:
        rs = runs[(kind, mode)]
        out.setdefault(kind, {})[mode] = {
            **{key: summary([x[key] for x in rs]) for key in rs[0]},
            "ratio_to_on_the_loop": summary(ratios[(kind, mode)]),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="one round")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    load_before = os.getloadavg()
    started = time.perf_counter()
    single = single_job_ms()
    results = asyncio.run(bench(rounds, args.jobs))
    for kind, modes in results.items():
        print(f"{kind} ({args.jobs} jobs of {single[kind]:.0f} ms):")
        for mode, v in modes.items():
            print(f"  {mode:>13}: wall {v['wall_s']['median'] * 1e3:6.0f} ms "
                  f"x{v['ratio_to_on_the_loop']['median']:.2f}  lag p99 "
                  f"{v['lag_p99_ms']['median']:6.1f} ms  max {v['lag_max_ms']['median']:6.1f} ms")
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    path = save("perf_cpu_quick" if args.quick else "perf_cpu", {
        "rounds": rounds, "jobs": args.jobs, "single_job_ms": single, "quick": args.quick,
        "gil_enabled": gil,
        "free_threaded_build": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        "switch_interval_s": sys.getswitchinterval(), "pool_processes": 2,
        "load_before": load_before, "load_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1), "kinds": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
