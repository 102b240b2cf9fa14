"""Enqueue N jobs with one library's own client, wait for them to be done; print JSON.

    PEERS_REDIS_URL=redis://127.0.0.1:PORT/0 python _drive.py MODULE TASK N [--timeout S]
    PEERS_REDIS_URL=... python _drive.py MODULE warm PROCS [--timeout S]

Runs in the peer's own venv (queue_peers.py starts it there, the worker already
running). MODULE is a job module here (arq_jobs, saq_jobs, ...): its
``enqueuer()`` gives ``enqueue(task, n)``. The clock starts at the first
enqueue, once the client is connected, and stops when the shared counter
``peers:done`` (one INCR per job) is seen at N, read every millisecond. Prints
one JSON line: seconds, enqueue_s, enqueue_cpu_s, done, timed_out.

``warm PROCS`` times nothing: it sends one warm job at a time, each once the one
before is done, until PROCS worker processes have each done one (the set
``peers:warm`` of their slots); a blocking dequeue serves its longest-waiting
reader first, so the jobs go round. Prints seconds, warm_jobs, workers_seen,
timed_out.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import time

import _jobs

POLL_S = 0.001


async def drive(module: str, task: str, n: int, timeout_s: float) -> dict:
    import redis

    counter = redis.Redis.from_url(_jobs.redis_url())
    counter.delete(_jobs.COUNTER)
    async with importlib.import_module(module).enqueuer() as enqueue:
        counter.ping()
        cpu0, first = time.process_time(), time.time()
        await enqueue(task, n)
        enqueued, enqueue_cpu_s = time.time(), time.process_time() - cpu0
        done, last = 0, enqueued
        while True:
            done = int(counter.get(_jobs.COUNTER) or 0)
            last = time.time()
            if done >= n or last - first > timeout_s:
                break
            await asyncio.sleep(POLL_S)
    counter.close()
    return {"seconds": last - first, "enqueue_s": enqueued - first,
            "enqueue_cpu_s": enqueue_cpu_s, "done": done, "timed_out": done < n}


async def warm(module: str, procs: int, timeout_s: float) -> dict:
    import redis

    counter = redis.Redis.from_url(_jobs.redis_url())
    counter.delete(_jobs.COUNTER, _jobs.WARM)
    first, sent, seen = time.time(), 0, 0
    async with importlib.import_module(module).enqueuer() as enqueue:
        while seen < procs and time.time() - first < timeout_s:
            await enqueue("warm", 1)
            sent += 1
            while int(counter.get(_jobs.COUNTER) or 0) < sent:
                if time.time() - first > timeout_s:
                    break
                await asyncio.sleep(POLL_S)
            seen = counter.scard(_jobs.WARM)
    counter.delete(_jobs.COUNTER, _jobs.WARM)
    counter.close()
    return {"seconds": time.time() - first, "warm_jobs": sent, "workers_seen": seen,
            "timed_out": seen < procs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("module")
    ap.add_argument("task", choices=["noop", "io", "warm"])
    ap.add_argument("n", type=int, help="jobs to time; for warm, worker processes to warm")
    ap.add_argument("--timeout", type=float, default=300.0)
    args = ap.parse_args()
    if args.task == "warm":
        print(json.dumps(asyncio.run(warm(args.module, args.n, args.timeout))))
    else:
        print(json.dumps(asyncio.run(drive(args.module, args.task, args.n, args.timeout))))


if __name__ == "__main__":
    main()
