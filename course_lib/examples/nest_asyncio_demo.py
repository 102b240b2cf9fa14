"""What nest_asyncio does to a process, shown in a process of its own.

Chapter 0 runs this script in a subprocess, so the global patch it applies
never reaches the notebook's kernel:

    python -m course_lib.examples.nest_asyncio_demo show
    python -m course_lib.examples.nest_asyncio_demo show --module nest_asyncio2
    python -m course_lib.examples.nest_asyncio_demo measure --patch
    python -m course_lib.examples.nest_asyncio_demo measure --no-patch

``show`` prints, line by line, what changes after ``nest_asyncio.apply()``
(``--module nest_asyncio2``: the maintained fork, which on Python 3.14+ keeps
the C Task); ``measure`` prints the median cost of creating and awaiting one
task, in microseconds, as JSON.
"""

from __future__ import annotations

__all__ = ["main"]

import argparse
import asyncio
import importlib
import json
import statistics
import sys
import time


async def _inner() -> str:
    await asyncio.sleep(0)
    return "ran"


def _try(label: str, call) -> None:
    coro = _inner()
    try:
        print(f"{label}: {call(coro)}")
    except (RuntimeError, ValueError) as exc:
        coro.close()  # it never ran; closing it avoids a "never awaited" warning
        print(f"{label}: {type(exc).__name__}: {exc}")


async def _show(module: str) -> None:
    nest_asyncio = importlib.import_module(module)

    def runner_run(coro):
        with asyncio.Runner() as runner:
            return runner.run(coro)

    print(f"{module} on Python {sys.version_info.major}.{sys.version_info.minor}")
    print(f"Task class before apply(): {asyncio.Task.__module__}.{asyncio.Task.__qualname__}")
    _try("asyncio.run() inside a running loop, before apply()", asyncio.run)
    nest_asyncio.apply()
    print(f"Task class after apply():  {asyncio.Task.__module__}.{asyncio.Task.__qualname__}")
    _try("asyncio.run() inside a running loop, after apply()", asyncio.run)
    _try("asyncio.Runner().run() after apply()", runner_run)
    try:
        import uvloop
    except ImportError:
        print("uvloop: not installed here")
    else:
        try:
            nest_asyncio.apply(uvloop.new_event_loop())
        except ValueError as exc:
            print(f"{module}.apply(uvloop loop): ValueError: {exc}")


async def _noop() -> None:
    pass


async def _measure(tasks: int, repeats: int) -> dict:
    per_task_us = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(tasks):
            await asyncio.create_task(_noop())
        per_task_us.append((time.perf_counter() - start) / tasks * 1e6)
    return {
        "task_class": f"{asyncio.Task.__module__}.{asyncio.Task.__qualname__}",
        "median_us": statistics.median(per_task_us),
        "spread_us": max(per_task_us) - min(per_task_us),
        "repeats": repeats,
        "tasks": tasks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print what apply() changes")
    show.add_argument("--module", choices=["nest_asyncio", "nest_asyncio2"], default="nest_asyncio")
    measure = sub.add_parser("measure", help="time task creation, print JSON")
    measure.add_argument("--patch", action=argparse.BooleanOptionalAction, default=False)
    measure.add_argument("--tasks", type=int, default=20_000)
    measure.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    if args.command == "show":
        asyncio.run(_show(args.module), debug=False)
        return 0
    if args.patch:
        import nest_asyncio

        nest_asyncio.apply()  # patches asyncio.Task and friends for the whole process
    # debug=False: PYTHONASYNCIODEBUG in the environment must not skew the numbers.
    print(json.dumps(asyncio.run(_measure(args.tasks, args.repeats), debug=False)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
