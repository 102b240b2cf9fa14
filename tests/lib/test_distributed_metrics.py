"""Worker metrics in the Prometheus text format: a worker process scraped, and the server alone.

The worker runs as a real process (``worker --metrics-port 0``) on a fakeredis served
over TCP; the scrapes go through urllib and prometheus_client's own text parser. Every
wait is bounded (a hang guard, never a speed check).
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time
import urllib.error
import urllib.request
import uuid

import pytest
from _cli_app import registry
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from test_distributed_cli import APP, WorkerProcess, cli

from course_lib.distributed import Worker
from course_lib.distributed.metrics import MetricsServer
from course_lib.redis import connect, serve_fake_tcp


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of a scrape: name -> {sorted labels: value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = (
                sample.value)
    return samples


def scrape_until(url: str, check, timeout_s: float = 30.0):
    """Scrape until ``check(samples)`` holds (the worker counts a job just after its result)."""
    deadline = time.monotonic() + timeout_s
    while True:
        samples = scrape(url)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(10)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_a_worker_process_serves_its_counts_until_it_stops(capsys):
    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    with serve_fake_tcp() as server, WorkerProcess(server.url, queue, "--name", "m1",
                                                   "--metrics-port", "0") as worker:
        said = worker.lines[worker.wait_for("worker m1 metrics on http://127.0.0.1:")]
        assert worker.wait_for("worker m1 ready") > worker.wait_for("metrics on")
        url = re.search(r"(http://\S+/metrics)", said).group(1)
        port = int(re.search(r":(\d+)/metrics", url).group(1))
        labels = (("queue", queue), ("worker", "m1"))
        for n in range(3):
            code, out, _ = cli(capsys, "--redis-url", server.url, "--queue", queue,
                               "enqueue", "add", n, 1, "--wait", "20")
            assert (code, out.splitlines()[-1]) == (0, str(n + 1))
        code, _, _ = cli(capsys, "--redis-url", server.url, "--queue", queue,
                         "enqueue", "boom", "--app", APP, "--wait", "20")
        assert code == 1  # one attempt only: dead
        samples = scrape_until(url, lambda s: s["course_queue_processed_total"][labels] == 3
                               and s["course_queue_dead_total"][labels] == 1
                               and "course_queue_dead_letters" in s
                               and s["course_queue_dead_letters"][labels] == 1)
        assert samples["course_queue_processed_total"] == {labels: 3.0}
        assert samples["course_queue_dead_total"] == {labels: 1.0}
        for name in ("retried", "handed_back", "reclaimed"):
            assert samples[f"course_queue_{name}_total"] == {labels: 0.0}
        assert samples["course_queue_in_flight"] == {labels: 0.0}
        for name in ("pending", "lag", "delayed"):
            assert samples[f"course_queue_{name}"] == {labels: 0.0}
        assert samples["course_queue_stats_timestamp_seconds"][labels] > 0
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.exit_code() == 0
    assert refused(port)  # stopped with the worker
    assert not any("Traceback" in line for line in worker.lines)


def test_watchdog_logs_the_blocking_line_and_serves_the_loop_lag(capsys):
    """worker --watchdog: a job that blocks the loop is logged with its line, and counted."""
    queue = f"metrics-{uuid.uuid4().hex[:8]}"
    with serve_fake_tcp() as server, WorkerProcess(server.url, queue, "--name", "m2",
                                                   "--metrics-port", "0",
                                                   "--watchdog", "0.1") as worker:
        said = worker.lines[worker.wait_for("worker m2 metrics on http://127.0.0.1:")]
        worker.wait_for("worker m2 ready")
        url = re.search(r"(http://\S+/metrics)", said).group(1)
        labels = (("queue", queue), ("worker", "m2"))
        code, out, _ = cli(capsys, "--redis-url", server.url, "--queue", queue,
                           "enqueue", "freeze", 0.5, "--app", APP, "--wait", "20")
        assert (code, out.splitlines()[-1]) == (0, '"froze 0.5"')
        at = worker.wait_for("blocked >= 0.1 s")
        worker.wait_for("freeze (")
        stack = worker.lines[at:]
        assert any("time.sleep(seconds)" in line for line in stack), stack
        assert any("freeze (" in line and "_cli_app.py" in line for line in stack), stack
        samples = scrape_until(url, lambda s: s.get("course_queue_loop_blocked_total",
                                                     {}).get(labels, 0) >= 1)
        assert samples["course_queue_loop_blocked_total"][labels] >= 1
        assert samples["course_queue_loop_lag_max_seconds"][labels] >= 0.1
        assert labels in samples["course_queue_loop_lag_p99_seconds"]


def test_a_taken_metrics_port_is_a_usage_error(capsys):
    with serve_fake_tcp() as server, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, out, err = cli(capsys, "--redis-url", server.url, "worker", "--app", APP,
                             "--metrics-port", port)
    assert (code, out) == (2, "")
    assert f"--metrics-port {port}: cannot listen on 127.0.0.1" in err
    assert len(err.splitlines()) == 1  # that line only: no traceback, the worker never started


@pytest.mark.asyncio
async def test_a_scrape_never_waits_for_redis():
    server = serve_fake_tcp()
    try:
        client = await connect(server.url)
        worker = Worker(client, registry, queue=f"m-{uuid.uuid4().hex[:8]}", name="m2",
                        block_s=0.1)
        try:
            async with MetricsServer(worker, refresh_s=0.05) as metrics:
                labels = (("queue", worker.queue.name), ("worker", "m2"))
                assert metrics.url == f"http://127.0.0.1:{metrics.port}/metrics"
                # The queue-wide gauges appear once the loop has read them.
                samples = await asyncio.to_thread(
                    scrape_until, metrics.url, lambda s: "course_queue_lag" in s)
                assert samples["course_queue_lag"] == {labels: 0.0}
                assert samples["course_queue_processed_total"] == {labels: 0.0}
                read_at = samples["course_queue_stats_timestamp_seconds"][labels]
                # A registry of its own: nothing lands in prometheus_client's global one.
                assert REGISTRY.get_sample_value("course_queue_processed_total",
                                                 dict(labels)) is None
                server.stop()  # Redis gone: the scrape still answers, the last values kept
                await asyncio.sleep(0.2)  # refreshes fail meanwhile (not a bound: a delay)
                samples = await asyncio.to_thread(scrape, metrics.url)
                assert samples["course_queue_lag"] == {labels: 0.0}
                assert samples["course_queue_stats_timestamp_seconds"][labels] >= read_at
                port = metrics.port
            assert refused(port)
            assert not [t for t in asyncio.all_tasks() if "metrics" in t.get_name()]
        finally:
            await client.aclose()
    finally:
        server.stop()
