"""Chapter 6's examples: the latency server, the fetch strategies, CPU work, the slow worker."""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing

import pytest

from course_lib.examples import ch06_slow_worker as slow_worker
from course_lib.examples.ch06_cpu import MODES, hash_work, py_work, run_jobs
from course_lib.examples.ch06_fetch import (
    bounded,
    gather_all,
    measure,
    percentile,
    pool,
    sequential,
)
from course_lib.examples.ch06_server import Client, fetch_stats, reset_stats, start_server

# --- the server, a real subprocess -----------------------------------------------------


@pytest.fixture(scope="module")
def server():
    with start_server(latency_s=0.01, capacity=2) as s:
        yield s


@pytest.mark.asyncio
async def test_server_serves_at_most_capacity_at_once_and_queues_the_rest(server):
    await reset_stats(server.address)
    async with Client(server.address) as client:
        latencies = await gather_all(client.get, 7)
        assert client.connections == 7  # one kept-alive connection per request in flight
    stats = await fetch_stats(server.address)
    assert len(latencies) == 7
    assert stats["served"] == 7
    assert stats["max_active"] == 2
    assert stats["queued_max"] >= 1
    assert stats["active"] == 0


@pytest.mark.asyncio
async def test_client_reuses_idle_connections(server):
    async with Client(server.address) as client:
        await sequential(client.get, 5)
        assert client.connections == 1


@pytest.mark.asyncio
async def test_a_request_cancelled_half_way_closes_its_connection(server):
    async with Client(server.address) as client:
        await client.get()  # one idle connection, which the next request takes at once
        task = asyncio.create_task(client.get())
        await asyncio.sleep(0)  # the task sent GET and now waits for the reply
        assert client.connections == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.connections == 0
        await client.get()  # a fresh connection: no stray reply from the cancelled one
        assert client.connections == 1


@pytest.mark.asyncio
async def test_stats_report_the_server_cpu_time(server):
    stats = await fetch_stats(server.address)
    assert stats["cpu_s"] > 0


def test_stop_ends_the_process_cleanly():
    s = start_server(latency_s=0.0, capacity=1)
    assert "running" in repr(s)
    assert s.stop() == 0
    assert "exited 0" in repr(s)
    assert s.stop() == 0  # twice is harmless


def test_start_server_refuses_bad_settings():
    with pytest.raises(ValueError, match="capacity"):
        start_server(capacity=0)


def test_max_rate_is_capacity_over_latency_or_the_cpu_bound():
    s = start_server(latency_s=0.02, capacity=16)
    try:
        assert s.max_rate_per_s == pytest.approx(800)
    finally:
        s.stop()


# --- the strategies, on a fake request in virtual time ---------------------------------


class FakeBackend:
    """A request that takes 10 ms (virtual) and counts how many run at once."""

    def __init__(self) -> None:
        self.active = self.max_active = self.calls = 0

    async def get(self) -> float:
        self.calls += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(0.01)
        finally:
            self.active -= 1
        return 0.01


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize(("strategy", "args", "expect_max"), [
    (sequential, (), 1), (gather_all, (), 50), (bounded, (7,), 7), (pool, (7,), 7),
])
async def test_each_strategy_sends_n_requests_and_keeps_its_bound(strategy, args, expect_max):
    backend = FakeBackend()
    latencies = await strategy(backend.get, 50, *args)
    assert len(latencies) == backend.calls == 50
    assert backend.max_active == expect_max


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_pool_with_more_workers_than_requests_sends_each_once():
    backend = FakeBackend()
    assert len(await pool(backend.get, 3, 10)) == 3
    assert backend.calls == 3


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_measure_reports_rate_and_percentiles():
    backend = FakeBackend()
    run = await measure(bounded, backend.get, 20, 5)
    assert run.n == 20
    assert run.p50_s == run.p99_s == 0.01
    assert run.rate_per_s > 0


def test_percentile_is_nearest_rank():
    xs = list(range(1, 101))
    assert percentile(xs, 50) == 50
    assert percentile(xs, 99) == 99
    assert percentile([3.0], 99) == 3.0


# --- CPU work ---------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", MODES)
async def test_run_jobs_runs_every_mode(mode):
    # spawn, as the notebook and the benchmark do: forking this multi-threaded process
    # may deadlock the child (3.12+ warns), and the suite treats warnings as errors.
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=spawn) as executor:
        seconds = await run_jobs(mode, py_work, 3, 1000, executor)
    assert seconds > 0


@pytest.mark.asyncio
async def test_run_jobs_refuses_an_unknown_mode_and_a_pool_without_executor():
    with pytest.raises(ExceptionGroup) as caught:
        await run_jobs("threads", py_work, 1, 10)
    assert caught.group_contains(ValueError, match="mode must be one of")
    with pytest.raises(ExceptionGroup) as caught:
        await run_jobs("process pool", hash_work, 1, 10)
    assert caught.group_contains(ValueError, match="executor")


def test_the_two_works_compute_something():
    assert py_work(10) == sum(i * i % 7 for i in range(10))
    assert len(hash_work(10)) == 32


# --- the slow worker --------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_slow_and_fixed_worker_price_orders_the_same():
    batch = slow_worker.orders(5)
    slow = [await slow_worker.handle_order(o) for o in batch]
    fixed = [await slow_worker.handle_order(o, fixed=True) for o in batch]
    assert slow == fixed
    assert all(cents > 0 for cents in slow)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_hot_spot_parses_the_price_list_per_order_and_the_fix_once(monkeypatch):
    calls = []
    real = slow_worker.price_table
    monkeypatch.setattr(slow_worker, "price_table", lambda: calls.append(1) or real())
    slow_worker._price_table_once.cache_clear()
    await slow_worker.process(slow_worker.orders(12), concurrency=4)
    assert len(calls) == 12
    calls.clear()
    await slow_worker.process(slow_worker.orders(12), concurrency=4, fixed=True)
    assert len(calls) == 1
    slow_worker._price_table_once.cache_clear()


def test_spy_top_returns_stacks_or_says_why_not():
    top = slow_worker.spy_top(1.0, top=3)
    if isinstance(top, str):
        assert "py-spy" in top
    else:
        assert top and all(n > 0 and ";" in stack for n, stack in top)
