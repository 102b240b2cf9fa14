"""A worker's figures in the Prometheus text format, served over HTTP for scraping.

    async with Worker(redis, registry) as worker, MetricsServer(worker, port=9108) as metrics:
        print(metrics.url)          # http://127.0.0.1:9108/metrics
        ...                         # curl it: course_queue_processed_total{...} 42

``python -m course_lib.distributed worker --metrics-port 9108`` does the same.

What a scrape returns (``queue`` and ``worker`` labels on every series):

- counters, this worker since it started: ``course_queue_processed_total``,
  ``course_queue_failed_total``, ``course_queue_retried_total``,
  ``course_queue_dead_total``, ``course_queue_cancelled_total``,
  ``course_queue_handed_back_total``,
  ``course_queue_reclaimed_total`` (the fields of ``WorkerStats``);
- with a ``LoopWatchdog`` (``worker --watchdog S``): ``course_queue_loop_lag_p99_seconds``
  and ``course_queue_loop_lag_max_seconds`` (how late a callback ran on the worker's
  loop, over the watchdog's recent samples / since it started) and
  ``course_queue_loop_blocked_total`` (blocked episodes; their stacks are in the log);
- gauges: ``course_queue_in_flight`` (jobs running in this worker now) and, queue-wide,
  ``course_queue_pending``, ``course_queue_lag``, ``course_queue_delayed``,
  ``course_queue_dead_letters``, with ``course_queue_stats_timestamp_seconds``: when
  those four were read from Redis.

A scrape never waits for Redis. The HTTP server answers in a thread of its own, while
Redis belongs to the worker's event loop: the worker's own counters are read as they
are at scrape time (plain ints, safe to read from another thread), and the queue-wide
figures are the last ones a small task of the loop read (every ``refresh_s``, each read
bounded). Until the first read succeeds they are left out, and when Redis is down the
last values stay, with their timestamp saying how old they are.

The metrics live in a ``CollectorRegistry`` of the server's own, not in
``prometheus_client``'s global one: two workers in one process (a notebook, a test)
each serve their own, and nothing is left registered after ``stop``.
"""

from __future__ import annotations

__all__ = ["MetricsServer", "WorkerCollector"]

import asyncio
import contextlib
import logging
import socketserver
import threading
import time
import wsgiref.simple_server
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from course_lib.monitor.watchdog import LoopWatchdog

from .control import REDIS_DOWN as _REDIS_DOWN
from .worker import Worker, WorkerStats

logger = logging.getLogger(__name__)

PREFIX = "course_queue_"
COUNTERS = {
    "processed": "Jobs this worker completed.",
    "failed": "Attempts that failed in this worker (retried or dead).",
    "retried": "Failed attempts this worker scheduled for a retry.",
    "dead": "Jobs this worker moved to the dead letters.",
    "cancelled": "Jobs this worker ended cancelled, as Queue.cancel asked.",
    "handed_back": "Jobs this worker handed back at stop.",
    "reclaimed": "Entries this worker took over from dead workers.",
}
QUEUE_GAUGES = {
    "pending": "Entries delivered to a worker and not yet settled (queue-wide).",
    "lag": "Entries in the stream not yet delivered (queue-wide).",
    "delayed": "Retries waiting for their time (queue-wide).",
    "dead_letters": "Entries in the dead-letter stream (queue-wide).",
}


class WorkerCollector(Collector):
    """Reads one worker's figures at each scrape (see the module's docstring)."""

    def __init__(self, worker: Worker, watchdog: LoopWatchdog | None = None) -> None:
        self.worker = worker
        self.watchdog = watchdog
        self.queue_stats: WorkerStats | None = None  # the last read from Redis, if any
        self.queue_stats_at: float | None = None  # its time.time()

    def collect(self) -> Iterator[Metric]:
        labels = [self.worker.queue.name, self.worker.name]
        local = self.worker.local_counts()  # no Redis: a scrape never waits on it
        for name, doc in COUNTERS.items():
            family = CounterMetricFamily(PREFIX + name, doc, labels=["queue", "worker"])
            family.add_metric(labels, local[name])
            yield family
        family = GaugeMetricFamily(PREFIX + "in_flight", "Jobs running in this worker now.",
                                   labels=["queue", "worker"])
        family.add_metric(labels, local["in_flight"])
        yield family
        if self.watchdog is not None:
            yield from self._loop_metrics(labels)
        stats, at = self.queue_stats, self.queue_stats_at  # one snapshot: set together
        if stats is None or at is None:
            return
        for name, doc in QUEUE_GAUGES.items():
            family = GaugeMetricFamily(PREFIX + name, doc, labels=["queue", "worker"])
            family.add_metric(labels, getattr(stats, name))
            yield family
        family = GaugeMetricFamily(PREFIX + "stats_timestamp_seconds",
                                   "When the queue-wide gauges were read from Redis (Unix time).",
                                   labels=["queue", "worker"])
        family.add_metric(labels, at)
        yield family

    def _loop_metrics(self, labels: list[str]) -> Iterator[Metric]:
        assert self.watchdog is not None
        report = self.watchdog.report()  # under the watchdog's own lock: thread-safe
        for name, value, doc in (
            ("loop_lag_p99_seconds", report.p99_s,
             "99th percentile of how late a callback ran on the worker's loop (recent)."),
            ("loop_lag_max_seconds", report.max_s,
             "The most a callback ran late on the worker's loop since it started."),
        ):
            if value is not None:
                family = GaugeMetricFamily(PREFIX + name, doc, labels=["queue", "worker"])
                family.add_metric(labels, value)
                yield family
        family = CounterMetricFamily(PREFIX + "loop_blocked",
                                     "Times the worker's loop was blocked past the watchdog's "
                                     "threshold (stacks in the log).", labels=["queue", "worker"])
        family.add_metric(labels, report.episodes_total)
        yield family

    async def refresh(self, timeout_s: float) -> None:
        """Read the queue-wide figures once (at most ``timeout_s``); keep them for scrapes."""
        stats = await asyncio.wait_for(self.worker.stats(), timeout_s)
        self.queue_stats, self.queue_stats_at = stats, time.time()


class MetricsServer:
    """Serve ``worker``'s metrics on ``http://host:port/metrics`` while the block runs.

    ``port=0`` picks a free port (``.port`` says which). ``host`` is 127.0.0.1 unless
    told: metrics name queues and hosts, so reaching them from elsewhere is a choice.
    ``refresh_s``: how often the queue-wide gauges are read from Redis. ``watchdog``: a
    running ``LoopWatchdog`` on the worker's loop, whose lag figures are served too.
    """

    def __init__(self, worker: Worker, port: int = 0, host: str = "127.0.0.1", *,
                 refresh_s: float = 5.0, watchdog: LoopWatchdog | None = None) -> None:
        self.worker = worker
        self.host = host
        self.requested_port = port
        self.refresh_s = refresh_s
        self.collector = WorkerCollector(worker, watchdog)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.port: int | None = None
        self._httpd: wsgiref.simple_server.WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self._refresher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        where = self.url if self.port is not None else "not serving"
        return f"<MetricsServer {self.worker.name!r} {where}>"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    async def start(self) -> None:
        """Bind (OSError if the port is taken), serve from a thread, start refreshing."""
        if self._httpd is not None:
            raise RuntimeError(f"{self!r} is started already")
        httpd = wsgiref.simple_server.make_server(
            self.host, self.requested_port, make_wsgi_app(self.registry),
            server_class=_ThreadingServer, handler_class=_QuietHandler)
        self._httpd, self.port = httpd, httpd.server_port
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                         name=f"metrics {self.worker.name}", daemon=True)
        self._thread.start()
        self._refresher = asyncio.create_task(self._refresh_loop(),
                                              name=f"metrics refresh {self.worker.name}")
        logger.debug("worker %s metrics on %s", self.worker.name, self.url)

    async def stop(self) -> None:
        """Stop refreshing and serving; the port is closed when this returns."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        httpd, thread, self._httpd, self._thread = self._httpd, self._thread, None, None
        if httpd is None or thread is None:
            return
        # shutdown() waits for serve_forever to notice (one poll_interval): not on the loop.
        await asyncio.to_thread(httpd.shutdown)
        httpd.server_close()
        await asyncio.to_thread(thread.join, 10.0)

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _refresh_loop(self) -> None:
        while True:
            try:
                await self.collector.refresh(timeout_s=max(self.refresh_s, 1.0))
            except (TimeoutError, *_REDIS_DOWN) as exc:  # keep the last values
                logger.debug("metrics refresh for %s failed: %r", self.worker.name, exc)
            except Exception:  # a bug must not end the refreshing quietly, nor the worker
                logger.exception("metrics refresh for %s failed", self.worker.name)
            await asyncio.sleep(self.refresh_s)


class _ThreadingServer(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True  # a slow scraper never holds the worker's exit
    allow_reuse_address = True


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per scrape on stderr would drown the job log
