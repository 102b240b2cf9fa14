"""The slow worker before and after its fix, and what profiling it costs.

    python benchmarks/perf_profile.py [--rounds 5] [--orders 200] [--quick]

course_lib.examples.ch06_slow_worker: orders fetched (2 ms), priced (CPU) and stored
(1 ms), 10 at a time. Variants, each on a fresh loop: the slow worker (the price
list parsed per order), the fixed one (parsed once), and the slow one under
``cProfile`` and under ``pyinstrument`` (async mode, 1 ms interval). Each round runs
every variant once, in rotated order; orders/s median and min-max, and each
variant's ratio to the slow worker in the same round. Writes
benchmarks/results/perf_profile.json (machine, load before and after).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import statistics
import time

from _common import save

from course_lib.examples.ch06_slow_worker import orders, process


def slow(batch: list[dict]) -> float:
    return asyncio.run(process(batch))


def fixed(batch: list[dict]) -> float:
    return asyncio.run(process(batch, fixed=True))


def under_cprofile(batch: list[dict]) -> float:
    async def main() -> float:
        with cProfile.Profile():
            return await process(batch)

    return asyncio.run(main())


def under_pyinstrument(batch: list[dict]) -> float:
    from pyinstrument import Profiler

    async def main() -> float:
        with Profiler(async_mode="enabled", interval=0.001):
            return await process(batch)

    return asyncio.run(main())


VARIANTS = {"slow worker": slow, "fixed worker": fixed, "slow, under cProfile": under_cprofile,
            "slow, under pyinstrument": under_pyinstrument}


def summary(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "samples": xs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="two rounds of 100 orders")
    args = parser.parse_args()
    rounds, n = (2, 100) if args.quick else (args.rounds, args.orders)
    batch = orders(n)
    names = list(VARIANTS)
    rates: dict[str, list[float]] = {k: [] for k in names}
    ratios: dict[str, list[float]] = {k: [] for k in names}
    load_before, started = os.getloadavg(), time.perf_counter()
    for r in range(rounds):
        got = {name: n / VARIANTS[name](batch) for name in names[r % 4:] + names[:r % 4]}
        for name in names:
            rates[name].append(got[name])
            ratios[name].append(got[name] / got["slow worker"])
    results = {name: {"orders_per_s": summary(rates[name]),
                      "ratio_to_slow": summary(ratios[name])} for name in names}
    for name, v in results.items():
        print(f"{name:>26}: {v['orders_per_s']['median']:7.0f} orders/s "
              f"x{v['ratio_to_slow']['median']:.2f} ({v['ratio_to_slow']['min']:.2f}-"
              f"{v['ratio_to_slow']['max']:.2f})")
    path = save("perf_profile_quick" if args.quick else "perf_profile", {
        "rounds": rounds, "orders": n, "concurrency": 10, "quick": args.quick,
        "load_before": load_before, "load_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1), "variants": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
