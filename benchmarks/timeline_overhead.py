"""What recording with course_lib.timeline.Timeline costs per task.

    python benchmarks/timeline_overhead.py [--tasks 10000] [--repeats 7]

Creates and awaits N tasks that each yield once, with and without a Timeline
around them, interleaved, on a plain (non-debug) loop. Prints median, spread
and the ratio; writes benchmarks/results/timeline_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import compare, report, save

from course_lib.timeline import Timeline


async def _step() -> None:
    await asyncio.sleep(0)


async def _tasks(n: int) -> None:
    await asyncio.gather(*(asyncio.create_task(_step()) for _ in range(n)))


def _plain(n: int) -> float:
    async def main() -> float:
        start = time.perf_counter()
        await _tasks(n)
        return time.perf_counter() - start

    return asyncio.run(main(), debug=False)


def _recorded(n: int) -> float:
    async def main() -> float:
        start = time.perf_counter()
        async with Timeline():
            await _tasks(n)
        return time.perf_counter() - start

    return asyncio.run(main(), debug=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    n = args.tasks
    results = compare(
        {"plain tasks": lambda: _plain(n), "inside a Timeline": lambda: _recorded(n)},
        repeats=args.repeats,
        baseline="plain tasks",
    )
    report(f"{n} tasks, {args.repeats} repeats", results, baseline="plain tasks",
           unit_count=n, unit="task")
    path = save("timeline_overhead", {"tasks": n, "repeats": args.repeats, "results": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
