"""Chapter 6's four ways to send n requests: one by one, all at once, bounded, a pool.

    async with Client(server.address) as client:
        run = await measure(bounded, client, n=200, limit=16)
    run.rate_per_s, run.p99_s      # requests per second, 99th percentile latency

Each strategy takes ``get`` (an async function doing one request and returning its
latency in seconds, such as ``Client.get``) and returns the latencies, in the order the
requests ended. ``measure`` times one strategy: throughput over the whole run, latency
percentiles, and the client's CPU time per request (the loop's own cost).
"""

from __future__ import annotations

__all__ = ["Run", "bounded", "gather_all", "measure", "percentile", "pool", "sequential"]

import asyncio
import dataclasses
import math
import time
from collections.abc import Awaitable, Callable

Get = Callable[[], Awaitable[float]]


async def sequential(get: Get, n: int) -> list[float]:
    """One request after another: each waits for the one before."""
    return [await get() for _ in range(n)]


async def gather_all(get: Get, n: int) -> list[float]:
    """Every request at once: n tasks, n connections, n requests in the server's queue."""
    return list(await asyncio.gather(*(get() for _ in range(n))))


async def bounded(get: Get, n: int, limit: int) -> list[float]:
    """n tasks, but at most ``limit`` requests in flight (an ``asyncio.Semaphore``)."""
    slots = asyncio.Semaphore(limit)
    latencies: list[float] = []

    async def one() -> None:
        async with slots:
            latencies.append(await get())

    async with asyncio.TaskGroup() as tg:
        for _ in range(n):
            tg.create_task(one())
    return latencies


async def pool(get: Get, n: int, workers: int) -> list[float]:
    """``workers`` tasks take requests from a shared count until none is left."""
    left = n
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1  # no await between the test and the take: no other task can slip in
            latencies.append(await get())

    async with asyncio.TaskGroup() as tg:
        for _ in range(min(workers, n)):
            tg.create_task(worker())
    return latencies


def percentile(xs: list[float], pct: float) -> float:
    """The nearest-rank percentile (``pct`` in 0-100) of a non-empty list."""
    ordered = sorted(xs)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclasses.dataclass(frozen=True)
class Run:
    """One measured run: n requests, wall and CPU seconds, latency percentiles."""

    n: int
    wall_s: float
    cpu_s: float
    p50_s: float
    p99_s: float

    @property
    def rate_per_s(self) -> float:
        return self.n / self.wall_s

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_s / self.n * 1e6


async def measure(strategy: Callable[..., Awaitable[list[float]]], get: Get, n: int,
                  *args: int) -> Run:
    """Time ``strategy(get, n, *args)``: wall time, this process's CPU time, latencies."""
    cpu, wall = time.process_time(), time.perf_counter()
    latencies = await strategy(get, n, *args)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if len(latencies) != n:
        raise RuntimeError(f"{strategy.__name__} returned {len(latencies)} latencies, not {n}")
    return Run(n, wall, cpu, percentile(latencies, 50), percentile(latencies, 99))
