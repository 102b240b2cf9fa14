"""What asyncio debug mode (course_lib.monitor.debug_block) and VanishedTasks cost per task.

    python benchmarks/monitor_debug_cost.py [--tasks 10000] [--repeats 7]

Creates and awaits N tasks that each yield once, on a fresh loop: debug mode off,
inside ``debug_block()`` (debug mode on, origin tracking, slow-callback timing), and
inside ``VanishedTasks()`` (a task factory and a weak reference per task, debug mode
off). Only the tasks are timed, not entering or leaving the block (its gc.collect()).
Variants interleaved; median, spread and ratio printed; writes
benchmarks/results/monitor_debug_cost.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import compare, report, save

from course_lib.monitor.debug import debug_block
from course_lib.monitor.leaks import VanishedTasks


async def _step() -> None:
    await asyncio.sleep(0)


async def _timed(n: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(asyncio.create_task(_step()) for _ in range(n)))
    return time.perf_counter() - start


def _plain(n: int) -> float:
    return asyncio.run(_timed(n), debug=False)


def _debug_block(n: int) -> float:
    async def main() -> float:
        with debug_block(slow_callback_s=60):
            return await _timed(n)

    return asyncio.run(main(), debug=False)


def _vanished(n: int) -> float:
    async def main() -> float:
        with VanishedTasks():
            return await _timed(n)

    return asyncio.run(main(), debug=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    n = args.tasks
    results = compare(
        {
            "debug mode off": lambda: _plain(n),
            "inside debug_block()": lambda: _debug_block(n),
            "inside VanishedTasks()": lambda: _vanished(n),
        },
        repeats=args.repeats,
        baseline="debug mode off",
    )
    report(f"{n} tasks, {args.repeats} repeats", results, baseline="debug mode off",
           unit_count=n, unit="task")
    path = save("monitor_debug_cost", {"tasks": n, "repeats": args.repeats, "results": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
