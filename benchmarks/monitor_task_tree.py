"""What a task-tree dump of 10,000 sleeping tasks costs (course_lib.monitor.tasks).

    python benchmarks/monitor_task_tree.py [--tasks 10000] [--repeats 11]

One loop (plain, not debug), N tasks each asleep in `await asyncio.sleep(60)` inside
a helper coroutine, so each has a two-frame chain. Measured side by side, interleaved:

- ``asyncio.all_tasks()``: listing the tasks, the floor any dump pays;
- the article's ``debug_coroutines``-style dump: ``task.get_stack()`` + ``repr()`` each;
- ``snapshot()``: state, frames, what each waits for, who awaits whom;
- ``snapshot().tree()`` and ``snapshot().table()`` rendered to text: the full dump.

Prints median and spread; writes benchmarks/results/monitor_task_tree.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from _common import compare, report, save

from course_lib.monitor.tasks import snapshot


async def _nap() -> None:
    await asyncio.sleep(60)


def _timed(loop: asyncio.AbstractEventLoop, work) -> float:
    async def run() -> float:
        start = time.perf_counter()
        work()
        return time.perf_counter() - start

    return loop.run_until_complete(run())


def _article_dump() -> None:
    for task in asyncio.all_tasks():
        repr(task)
        task.get_stack()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    n = args.tasks

    load_before = os.getloadavg()  # a shared box: say how busy it was
    loop = asyncio.new_event_loop()
    loop.set_debug(False)
    tasks = [loop.create_task(_nap(), name=f"sleeper-{i}") for i in range(n)]
    loop.run_until_complete(asyncio.sleep(0))  # every task now waits in its sleep
    sizes = {}

    def tree_and_table() -> None:
        snap = snapshot()
        sizes["tree_lines"] = snap.tree().count("\n") + 1
        sizes["table_lines"] = str(snap.table()).count("\n") + 1

    try:
        results = compare(
            {
                "asyncio.all_tasks()": lambda: _timed(loop, asyncio.all_tasks),
                "repr + get_stack each (article)": lambda: _timed(loop, _article_dump),
                "snapshot()": lambda: _timed(loop, snapshot),
                "snapshot() + tree + table": lambda: _timed(loop, tree_and_table),
            },
            repeats=args.repeats,
            baseline="snapshot()",
        )
    finally:
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.close()

    report(f"{n} sleeping tasks, {args.repeats} repeats", results, baseline="snapshot()",
           unit_count=n, unit="task")
    path = save("monitor_task_tree", {"tasks": n, "repeats": args.repeats,
                                      "rendered": sizes, "load_avg_1_5_15": {
                                          "before": load_before, "after": os.getloadavg()},
                                      "results": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
