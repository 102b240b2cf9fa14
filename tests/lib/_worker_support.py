"""Helpers shared by the Worker's tests (test_distributed_worker*.py, *_requeue.py)."""

from __future__ import annotations

import asyncio

from course_lib.distributed import TaskRegistry, Worker

LOG = "course_lib.distributed.worker"

# Small real times: a stop waits for the read in flight (block_s), a retry is due
# within retry_max_s, a dead worker's entry is reclaimed after visibility_timeout_s.
FAST = dict(visibility_timeout_s=1.0, block_s=0.05, maintenance_s=0.05, retry_base_s=0.01,
            retry_max_s=0.02, grace_s=1.0, reconnect_base_s=0.01, reconnect_max_s=0.1)


def fast_worker(redis, registry: TaskRegistry, **kw) -> Worker:
    return Worker(redis, registry, **(FAST | kw))


async def eventually(predicate, timeout_s: float = 5.0) -> None:
    """Wait until ``await predicate()`` is true (a test helper may poll; the library doesn't)."""
    async with asyncio.timeout(timeout_s):
        while not await predicate():  # noqa: ASYNC110 (state in Redis: no Event to wait on)
            await asyncio.sleep(0.01)
