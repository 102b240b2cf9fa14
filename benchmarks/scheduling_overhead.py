"""What PriorityTaskPool costs per job, against a bare asyncio.Queue with N workers.

    python benchmarks/scheduling_overhead.py [--jobs 100000] [--concurrency 10] [--repeats 7]

A no-op job is a coroutine that returns at once, created by the submitter. Both
variants get the same N workers and deliver a result per job to the submitter on a
future, awaited with one gather():

- bare: the submitter puts (coroutine, future) on an asyncio.Queue; N worker tasks
  take them, await the coroutine, and set the future's result (or exception).
- pool: ``PriorityTaskPool(N).submit(coroutine)`` returns the future; the pool's N
  workers do the rest (heap by priority, cancellable futures, join, close).

Interleaved runs on a plain (non-debug) loop; prints median, spread and the ratio;
writes benchmarks/results/scheduling_overhead.json. The target: at most 1.5x bare.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _common import compare, report, save

from course_lib.scheduling import PriorityTaskPool


async def _noop() -> int:
    return 1


async def _bare_queue(jobs: int, concurrency: int) -> None:
    queue: asyncio.Queue = asyncio.Queue()

    async def worker() -> None:
        while True:
            coro, future = await queue.get()
            try:
                result = await coro
            except Exception as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    loop = asyncio.get_running_loop()
    futures = []
    for _ in range(jobs):
        future = loop.create_future()
        queue.put_nowait((_noop(), future))
        futures.append(future)
    results = await asyncio.gather(*futures)
    assert len(results) == jobs
    for task in workers:
        task.cancel()
    await asyncio.wait(workers)


async def _pool(jobs: int, concurrency: int, aging_s: float | None = None) -> None:
    async with PriorityTaskPool(concurrency, aging_s=aging_s) as pool:
        futures = [pool.submit(_noop()) for _ in range(jobs)]
        results = await asyncio.gather(*futures)
    assert len(results) == jobs


async def _aging_pool(jobs: int, concurrency: int) -> None:
    await _pool(jobs, concurrency, aging_s=60)


def _timed(variant, jobs: int, concurrency: int) -> float:
    async def main() -> float:
        start = time.perf_counter()
        await variant(jobs, concurrency)
        return time.perf_counter() - start

    return asyncio.run(main(), debug=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    n, c = args.jobs, args.concurrency
    baseline = f"asyncio.Queue + {c} workers"
    results = compare(
        {baseline: lambda: _timed(_bare_queue, n, c),
         f"PriorityTaskPool({c})": lambda: _timed(_pool, n, c),
         # Informative, no target: with aging every job gets its own key (the loop's
         # clock moves between two submits), so each pays for a heap entry and a bucket.
         f"PriorityTaskPool({c}, aging_s=60)": lambda: _timed(_aging_pool, n, c)},
        repeats=args.repeats,
        baseline=baseline,
    )
    report(f"{n} no-op jobs, concurrency {c}, {args.repeats} repeats", results,
           baseline=baseline, unit_count=n, unit="job")
    path = save("scheduling_overhead", {"jobs": n, "concurrency": c,
                                        "repeats": args.repeats, "target_ratio": 1.5,
                                        "results": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
