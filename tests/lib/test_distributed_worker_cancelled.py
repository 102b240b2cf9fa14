"""A job its worker ends cancelled (``Queue.cancel``) is counted: ``WorkerStats.cancelled``
and ``course_queue_cancelled_total``.

It used to be counted nowhere: not processed, failed, retried, dead nor handed back.
A job cancelled before any worker read it is not this worker's to count (``Queue.cancel``
ended it). On fakeredis and a real server (``redis``).
"""

from __future__ import annotations

import asyncio

import pytest
from _worker_support import eventually, fast_worker
from test_distributed_metrics import scrape_until

from course_lib.distributed import CancelOutcome, JobCancelled, JobStatus, Queue, TaskRegistry
from course_lib.distributed.metrics import MetricsServer


async def _is(handle, status: JobStatus) -> bool:
    return await handle.status() is status


@pytest.mark.asyncio
async def test_a_job_cancelled_while_running_is_counted_cancelled_in_stats_and_metrics(redis):
    registry = TaskRegistry()

    @registry.task
    async def hang() -> None:
        await asyncio.Event().wait()

    @registry.task
    async def quick() -> str:
        return "ok"

    queue = Queue(redis)
    never = await queue.enqueue("quick")  # cancelled before any worker reads it
    assert await queue.cancel(never.id) is CancelOutcome.CANCELLED
    handle = await queue.enqueue("hang")
    async with fast_worker(redis, registry, heartbeat_s=0.05, name="c1") as worker:
        async with MetricsServer(worker, refresh_s=0.05) as metrics:
            await eventually(lambda: _is(handle, JobStatus.RUNNING))
            assert worker.local_counts()["cancelled"] == 0
            assert await handle.cancel() is CancelOutcome.REQUESTED
            with pytest.raises(JobCancelled):
                await handle.result(timeout_s=10)
            assert await (await queue.enqueue("quick")).result(timeout_s=10) == "ok"
            labels = (("queue", queue.name), ("worker", "c1"))
            samples = await asyncio.to_thread(
                scrape_until, metrics.url,
                lambda s: s["course_queue_cancelled_total"][labels] == 1)
            stats = await worker.stats()
    assert samples["course_queue_cancelled_total"] == {labels: 1.0}
    assert (stats.cancelled, stats.processed) == (1, 1)
    assert (stats.failed, stats.retried, stats.dead, stats.handed_back) == (0, 0, 0, 0)
