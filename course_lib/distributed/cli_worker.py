"""The CLI's ``worker`` command: a Worker until SIGTERM or SIGINT, with its optional extras.

    code = await _worker(args, client)   # args from cli_parser; 0 after a graceful stop

Extras, each only when asked for: a loop watchdog thread (``--watchdog``), a
Prometheus endpoint (``--metrics-port``), aiomonitor (``--aiomonitor-port``), and
uvloop as the event loop (``--loop uvloop``: ``_loop_factory``, used by ``cli.main``).
"""

from __future__ import annotations

__all__: list[str] = []  # the CLI's own command: run through cli.main

import argparse
import asyncio
import contextlib
import socket
import sys
from collections.abc import Callable
from typing import Any

import redis.asyncio

from ..lifecycle import GracefulShutdown
from ..monitor.watchdog import LoopWatchdog
from .cli_common import EXIT_OK, UsageError, _answered
from .worker import Worker

LOOPS = ("asyncio", "uvloop")
_LOOPBACK = "127.0.0.1"  # aiomonitor has no authentication: never anywhere else


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """What makes the loop ``--loop NAME`` asks for; None: asyncio's own."""
    if name == "asyncio":
        return None
    try:
        import uvloop  # optional: the dev extra has it, not every install
    except ImportError:
        raise UsageError("--loop uvloop needs uvloop: pip install uvloop (or the course's "
                         "dev extra), or leave --loop out") from None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


async def _worker(args: argparse.Namespace, client: redis.asyncio.Redis) -> int:
    worker = Worker(client, args.registry, queue=args.queue, name=args.name,
                    concurrency=args.concurrency, visibility_timeout_s=args.visibility_timeout,
                    grace_s=args.grace, block_s=args.block, default_timeout_s=args.job_timeout,
                    max_dead_letters=args.max_dead_letters,
                    idle_consumer_s=args.idle_consumer_s, read_ahead=args.read_ahead)
    async with contextlib.AsyncExitStack() as stack:
        watchdog = None
        if args.watchdog is not None:  # a thread: it sees the loop blocked, and logs where
            watchdog = LoopWatchdog(threshold_s=args.watchdog,
                                    interval_s=min(0.05, args.watchdog / 2), log_episodes=True)
            await stack.enter_async_context(watchdog)
        if args.metrics_port is not None:  # bound first: a taken port joins no group
            stack.push_async_callback((await _serve_metrics(args, worker, watchdog)).stop)
        if args.aiomonitor_port is not None:  # closed after worker.stop(): it sees the stop
            stack.enter_context(_aiomonitor(args, worker))
        stop = await stack.enter_async_context(GracefulShutdown())
        await _answered(worker.start(), "joining the consumer group")
        try:
            # Printed, not logged: a parent process waits for this line, whatever -q says.
            print(f"worker {worker.name} ready", file=sys.stderr, flush=True)
            await stop.wait()
        finally:
            await worker.stop()  # logs "worker NAME stopped: <report>"
    return EXIT_OK  # the metrics server stopped after the worker: the last counts were served


async def _serve_metrics(args: argparse.Namespace, worker: Worker,
                         watchdog: LoopWatchdog | None) -> Any:
    from .metrics import MetricsServer  # imports prometheus_client: only when asked for

    server = MetricsServer(worker, args.metrics_port, args.metrics_host, watchdog=watchdog)
    try:
        await server.start()
    except OSError as exc:  # port taken, address not ours: a usage error, not Redis
        raise UsageError(f"--metrics-port {args.metrics_port}: cannot listen on "
                         f"{args.metrics_host}: {exc.strerror or exc}") from None
    print(f"worker {worker.name} metrics on {server.url}", file=sys.stderr, flush=True)
    return server


def _aiomonitor(args: argparse.Namespace, worker: Worker) -> Any:
    """Start aiomonitor on this loop (a thread of its own serves it); the started Monitor."""
    try:
        import aiomonitor  # only when asked for: an optional dependency
    except ImportError:
        raise UsageError("--aiomonitor-port needs aiomonitor: pip install aiomonitor") from None
    if args.aiomonitor_port == 0:
        with _listening(0) as one, _listening(0) as two:  # both open: two different ports
            termui_port, webui_port = one.getsockname()[1], two.getsockname()[1]
    elif args.aiomonitor_port == 65535:
        raise UsageError("--aiomonitor-port 65535: the web UI needs PORT+1")
    else:
        termui_port, webui_port = args.aiomonitor_port, args.aiomonitor_port + 1
    # Checked here because aiomonitor cannot say: a web UI port that is taken kills its
    # thread, and Monitor.start() then waits for that thread for ever.
    for port in (termui_port, webui_port):
        try:
            with _listening(port):
                pass
        except OSError as exc:
            raise UsageError(f"--aiomonitor-port {args.aiomonitor_port}: cannot listen on "
                             f"{_LOOPBACK}:{port}: {exc.strerror or exc}") from None
    monitor = aiomonitor.start_monitor(
        asyncio.get_running_loop(), host=_LOOPBACK, port=termui_port, webui_port=webui_port,
        console_enabled=False,  # a Python prompt inside the worker: too much for a course
        hook_task_factory=True,  # where each task was created, and since when (~0.1 ms/task)
    )  # fmt: skip
    print(f"worker {worker.name} aiomonitor on telnet://{_LOOPBACK}:{termui_port} and "
          f"http://{_LOOPBACK}:{webui_port}", file=sys.stderr, flush=True)
    return monitor


def _listening(port: int) -> socket.socket:
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers will
        sock.bind((_LOOPBACK, port))
        sock.listen()
    except OSError:
        sock.close()
        raise
    return sock
