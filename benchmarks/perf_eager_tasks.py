"""What a task costs, and what eager tasks (3.12+ asyncio.eager_task_factory) save.

    python benchmarks/perf_eager_tasks.py [--rounds 3] [--tasks 20000] [--quick]

For each CPython found (this one, and 3.12 and 3.13 under ~/.pyenv/versions or on
PATH as python3.12, python3.13), a child process (this script, ``--child``; standard
library only) times N coroutines run these ways, on a fresh loop each time:

- ``await coro`` one after another: no task at all (the floor);
- ``create_task`` for each, then ``gather``: the default task factory;
- the same with ``loop.set_task_factory(asyncio.eager_task_factory)`` (3.12+): a
  new task runs at once, inside ``create_task``, up to its first real suspension;
  one that finishes without suspending is never scheduled on the loop at all.

Each way twice: with a coroutine that returns without awaiting anything (a cache
hit), and with one that awaits ``asyncio.sleep(0)`` once (it must suspend). Inside
a child the variants are interleaved, ``--repeats`` times; rounds alternate the
interpreters. Medians and min-max of microseconds per coroutine over every sample,
and each variant's ratio to "create_task" of the same kind in the same repeat.
Writes benchmarks/results/perf_eager_tasks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


# --- the child: standard library only (it runs on bare pyenv interpreters) ----------


async def _cached() -> int:
    return 1


async def _suspends() -> int:
    await asyncio.sleep(0)
    return 1


async def _direct(coro_fn, n: int) -> None:
    for _ in range(n):
        await coro_fn()


async def _tasks(coro_fn, n: int, eager: bool) -> None:
    loop = asyncio.get_running_loop()
    if eager:
        loop.set_task_factory(asyncio.eager_task_factory)
    await asyncio.gather(*[loop.create_task(coro_fn()) for _ in range(n)])


def _timed(main, *args) -> float:
    async def timed() -> float:
        start = time.perf_counter()
        await main(*args)
        return time.perf_counter() - start

    return asyncio.run(timed())


def child(n: int, repeats: int) -> None:
    eager_ok = hasattr(asyncio, "eager_task_factory")
    variants = {}
    for kind, fn in (("returns at once", _cached), ("awaits sleep(0)", _suspends)):
        variants[(kind, "await directly")] = lambda fn=fn: _timed(_direct, fn, n)
        variants[(kind, "create_task")] = lambda fn=fn: _timed(_tasks, fn, n, False)
        if eager_ok:
            variants[(kind, "eager task")] = lambda fn=fn: _timed(_tasks, fn, n, True)
    samples: dict = {k: [] for k in variants}
    for _ in range(repeats):
        for key, run in variants.items():
            samples[key].append(run() / n * 1e6)
    print(json.dumps({"python": sys.version.split()[0], "eager_task_factory": eager_ok,
                      "samples_us": [[k[0], k[1], xs] for k, xs in samples.items()]}))


# --- the parent ----------------------------------------------------------------------


def interpreters() -> list[str]:
    found = [sys.executable]
    home = os.path.expanduser("~/.pyenv/versions")
    for minor in ("3.12", "3.13"):
        paths = sorted(glob.glob(f"{home}/{minor}.*/bin/python{minor}"))
        exe = paths[-1] if paths else shutil.which(f"python{minor}")
        if exe and exe not in found:
            found.append(exe)
    return found


def run_child(exe: str, n: int, repeats: int) -> dict:
    out = subprocess.run([exe, str(HERE), "--child", "--tasks", str(n), "--repeats",
                          str(repeats)], capture_output=True, text=True, timeout=600, check=False)
    if out.returncode:
        raise RuntimeError(f"{exe} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "samples": xs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one round, 5,000 tasks")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.tasks, args.repeats)
        return
    sys.path.insert(0, str(HERE.parent))
    from _common import save

    rounds, n = (1, 5_000) if args.quick else (args.rounds, args.tasks)
    exes = interpreters()
    load_before, started = os.getloadavg(), time.perf_counter()
    per: dict[str, dict] = {}
    for r in range(rounds):
        for exe in exes[r % len(exes):] + exes[:r % len(exes)]:
            got = run_child(exe, n, args.repeats)
            entry = per.setdefault(got["python"], {"eager_task_factory": got["eager_task_factory"],
                                                   "samples": {}, "ratios": {}})
            by = {(kind, way): xs for kind, way, xs in got["samples_us"]}
            for (kind, way), xs in by.items():
                entry["samples"].setdefault(kind, {}).setdefault(way, []).extend(xs)
                base = by[(kind, "create_task")]
                entry["ratios"].setdefault(kind, {}).setdefault(way, []).extend(
                    x / b for x, b in zip(xs, base, strict=True))
        print(f"  round {r + 1}/{rounds} done", flush=True)
    results = {}
    for version, entry in per.items():
        results[version] = {"eager_task_factory": entry["eager_task_factory"], "kinds": {
            kind: {way: {"us_per_coroutine": summary(xs),
                         "ratio_to_create_task": summary(entry["ratios"][kind][way])}
                   for way, xs in ways.items()}
            for kind, ways in entry["samples"].items()}}
    for version, res in results.items():
        print(f"Python {version}:")
        for kind, ways in res["kinds"].items():
            cells = [f"{way} {v['us_per_coroutine']['median']:.2f} µs "
                     f"(x{v['ratio_to_create_task']['median']:.2f})" for way, v in ways.items()]
            print(f"  {kind:>16}: " + ", ".join(cells))
    path = save("perf_eager_tasks_quick" if args.quick else "perf_eager_tasks", {
        "rounds": rounds, "tasks": n, "repeats": args.repeats, "quick": args.quick,
        "interpreters": exes, "load_before": load_before, "load_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1), "pythons": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
