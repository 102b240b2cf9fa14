"""course_lib.distributed.worker: the default job timeout, and a cancel from outside.

- A task that hangs keeps its entry alive (the heartbeat) and its slot taken: the
  worker's ``default_timeout_s`` (CLI ``--job-timeout``) cuts it, as a task's own
  ``timeout_s`` would; the job's and the task's ``timeout_s`` override it, a deadline
  still caps it, ``None`` leaves jobs unbounded.
- A job's own task cancelled from outside the worker (aiomonitor's ``cancel``, a
  stray ``task.cancel()``) is the job's failed attempt, retried or dead-lettered:
  handed back as at a stop, it would be read again and hang again, for ever. A stop
  under way still hands the job back.

Timing logic runs in virtual time (looptime) on the in-process fakeredis; the CLI
flag on a worker process, on fakeredis served over TCP.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

import pytest
from _worker_support import LOG, eventually, fast_worker

from course_lib.distributed import JobFailed, JobStatus, Queue, TaskRegistry, Worker
from course_lib.examples.queue_lab import Fleet
from course_lib.redis import serve_fake_tcp


async def _is(handle, status: JobStatus) -> bool:
    return await handle.status() is status


def _hung_registry(**options) -> tuple[TaskRegistry, list[int]]:
    """A registry whose ``hang`` awaits an Event nothing sets, and ``quick`` that returns."""
    registry = TaskRegistry()
    runs: list[int] = []

    @registry.task(**options)
    async def hang(n: int = 0) -> None:
        runs.append(n)
        await asyncio.Event().wait()

    @registry.task
    async def quick() -> str:
        return "ok"

    return registry, runs



def _job_task(worker: Worker) -> asyncio.Task:
    """The one task running a job on ``worker`` (what aiomonitor lists as ``_run_entry``)."""
    [task] = [t for t in asyncio.all_tasks() if t.get_name().startswith(f"{worker.name} ")
              and t.get_coro().__qualname__.endswith("_run_entry")]
    return task


# --- the worker's default timeout ---------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_hung_task_is_cut_by_the_workers_default_timeout_and_its_slot_freed(fake):
    registry, runs = _hung_registry(max_attempts=2)
    queue = Queue(fake, registry=registry)
    hung = await queue.enqueue("hang")
    after = await queue.enqueue("quick")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(600):
        async with fast_worker(fake, registry, concurrency=1, default_timeout_s=30) as worker:
            began = loop.time()
            with pytest.raises(JobFailed) as info:
                await hung.result()
            took = loop.time() - began
            assert await after.result() == "ok"  # the one slot is free again
            stats = await worker.stats()
    assert info.value.status is JobStatus.DEAD
    assert info.value.reason == "gave up after 2 attempt(s), timed out after 30 s"
    assert info.value.error_type == "TimeoutError"
    assert runs == [0, 0] and 60 <= took
    assert (stats.retried, stats.dead, stats.handed_back) == (1, 1, 0)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_tasks_and_the_jobs_timeouts_override_the_default_and_a_deadline_caps_it(
        fake):
    registry, _ = _hung_registry(max_attempts=1)

    @registry.task(max_attempts=1, timeout_s=100)
    async def long_job() -> str:
        await asyncio.sleep(50)  # past the worker's default, within its own timeout
        return "done"

    @registry.task(max_attempts=1, timeout_s=5)
    async def short_job() -> None:
        await asyncio.Event().wait()

    queue = Queue(fake, registry=registry)
    long_handle = await queue.enqueue("long_job")
    short_handle = await queue.enqueue("short_job")
    job_handle = await queue.enqueue_job(queue.job("hang", [1], timeout_s=7))
    # A deadline is wall-clock time (looptime fakes only the loop's clock): 20 s from now.
    capped = await queue.enqueue_job(queue.job("hang", [2], deadline=time.time() + 20))
    async with asyncio.timeout(600):
        async with fast_worker(fake, registry, default_timeout_s=30):
            assert await long_handle.result() == "done"
            reasons = []
            for handle in (short_handle, job_handle):
                with pytest.raises(JobFailed) as info:
                    await handle.result()
                reasons.append(info.value.reason)
            with pytest.raises(JobFailed) as info:
                await capped.result()
    assert reasons == ["gave up after 1 attempt(s), timed out after 5 s",
                       "gave up after 1 attempt(s), timed out after 7 s"]
    cut_s = re.fullmatch(r"gave up after 1 attempt\(s\), timed out after ([\d.]+) s",
                         info.value.reason)
    assert cut_s is not None and float(cut_s[1]) <= 20  # what was left of the 20 s, not 30


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_with_no_default_timeout_a_hung_task_runs_on_until_the_stop(fake):
    registry, _ = _hung_registry(max_attempts=2)
    handle = await Queue(fake).enqueue("hang")
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(3600):
        # Long reads and ticks: fewer turns of the loop while 400 virtual seconds pass.
        worker = fast_worker(fake, registry, default_timeout_s=None, visibility_timeout_s=30,
                             block_s=5, maintenance_s=5)
        await worker.start()
        try:
            await eventually(lambda: _is(handle, JobStatus.RUNNING))
            await asyncio.sleep(400)  # virtual: past the 300 s default
            assert await handle.status() is JobStatus.RUNNING
        finally:
            report = await worker.stop(grace_s=0)
    assert len(report.cancelled) == 1
    assert await handle.status() is JobStatus.QUEUED  # handed back, as before
    assert loop.time() >= 400


@pytest.mark.asyncio
async def test_the_default_timeout_is_300_s_and_inf_means_none(fake):
    registry = TaskRegistry()
    assert Worker(fake, registry).default_timeout_s == 300.0
    assert Worker(fake, registry, default_timeout_s=float("inf")).default_timeout_s is None
    for bad in (0, -1, float("nan"), "30", True):
        with pytest.raises(ValueError, match="default_timeout_s"):
            Worker(fake, registry, default_timeout_s=bad)


def test_the_cli_worker_takes_job_timeout(tmp_path):
    """``--job-timeout`` on a worker process: a task with no timeout of its own is cut."""
    from course_lib.distributed.cli import main

    app = "course_lib.examples.ch05_stuck_service:registry"
    queue = f"timeout-{uuid.uuid4().hex[:8]}"
    with serve_fake_tcp() as server:
        fleet = Fleet(server.url, queue, app=app, concurrency=1, grace_s=0.5, block_s=0.2)
        fleet.options["--job-timeout"] = 0.5
        try:
            fleet.start("w1", timeout_s=60)
            code = main(["--redis-url", server.url, "--queue", queue, "-q", "enqueue", "--app",
                         app, "wait_for_signal", "go", "--job-id", "j1", "--wait", "60"])
        finally:
            fleet.stop()
    assert code == 1  # the job died: timed out, its one attempt used
    assert any("dead: gave up after 1 attempt(s), timed out after 0.5 s" in line
               for line in fleet.log("w1"))


# --- a job's task cancelled from outside the worker ---------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_job_cancelled_from_outside_is_a_failed_attempt_retried_then_dead(
        fake, caplog):
    caplog.set_level(logging.INFO, logger=LOG)
    registry, runs = _hung_registry(max_attempts=2)
    handle = await Queue(fake, registry=registry).enqueue("hang", job_id="h")
    async with asyncio.timeout(60):
        async with fast_worker(fake, registry, default_timeout_s=None) as worker:
            for attempt in (1, 2):
                await eventually(lambda n=attempt: _runs_are(runs, n))
                task = _job_task(worker)
                task.cancel()  # as aiomonitor's cancel does
                task.cancel()  # twice: every pending request is the job's, withdrawn
                await asyncio.wait({task})
                assert not task.cancelled() and task.cancelling() == 0
            with pytest.raises(JobFailed) as info:
                await handle.result()
            stats = await worker.stats()
    assert info.value.status is JobStatus.DEAD
    assert info.value.reason == "gave up after 2 attempt(s), cancelled from outside the worker"
    assert "cancelled from outside the worker" in info.value.error_message
    assert (stats.retried, stats.dead, stats.handed_back) == (1, 1, 0)
    messages = [r.getMessage() for r in caplog.records if r.name == LOG]
    assert not any("handed back" in m for m in messages)
    assert any("retry 2/2" in m and "cancelled from outside the worker" in m for m in messages)


async def _runs_are(runs: list[int], n: int) -> bool:
    return len(runs) == n


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_stop_that_begins_while_an_outside_cancel_is_handled_hands_the_job_back(fake):
    registry = TaskRegistry()
    cleaning = asyncio.Event()

    @registry.task(max_attempts=3)
    async def tidy() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cleaning.set()
            await asyncio.sleep(1)  # its cleanup; the worker's stop begins meanwhile
            raise

    handle = await Queue(fake).enqueue("tidy")
    async with asyncio.timeout(60):
        worker = fast_worker(fake, registry, default_timeout_s=None, grace_s=5)
        await worker.start()
        try:
            await eventually(lambda: _is(handle, JobStatus.RUNNING))
            _job_task(worker).cancel()
            await cleaning.wait()
        finally:
            report = await worker.stop()
    assert len(report.cancelled) == 1  # it ended re-raising the cancel
    assert await handle.status() is JobStatus.QUEUED  # handed back: the stop won
    stats = await worker.stats()
    assert (stats.handed_back, stats.retried, stats.dead) == (1, 0, 0)
    [(_, fields)] = await fake.xrange(Queue(fake).keys.stream)
    assert b'"attempt":1' in fields[b"job"]  # the same attempt, as at any stop
