"""The job queue from a shell: run a worker, enqueue jobs, inspect the queue and dead letters.

    python -m course_lib.distributed --redis-url redis://127.0.0.1:6379/0 \\
        worker --app course_lib.examples.jobs_app:registry --concurrency 4
    python -m course_lib.distributed enqueue resize 42 --wait 30   # prints the id, then the result
    python -m course_lib.distributed enqueue report --delay 60      # runs a minute from now
    python -m course_lib.distributed cancel JOB_ID
    python -m course_lib.distributed stats --json
    python -m course_lib.distributed stats --watch --interval 2   # redrawn until Ctrl-C
    python -m course_lib.distributed dead list
    python -m course_lib.distributed dead requeue --all

Options that every command takes (``--redis-url``, ``--queue``, ``-v``, ``-q``) go
before or after the command. The URL is ``--redis-url``, else ``REDIS_URL``; there
is no default: a command line cannot reach the in-process fakeredis of another
process (``course_lib.redis.serve_fake_tcp()`` serves one on a TCP port).

``worker`` runs until SIGTERM or SIGINT, then stops gracefully (it stops reading,
lets running jobs finish within ``--grace``, hands back the rest) and exits 0; a
second signal ends it at once. It prints ``worker NAME ready`` on stderr once it
has joined the consumer group, and logs one line per job transition on stderr.
With ``--metrics-port PORT`` it serves Prometheus metrics on
``http://127.0.0.1:PORT/metrics`` (``--metrics-host`` to listen elsewhere; port 0
picks a free one) and prints ``worker NAME metrics on URL`` on stderr before ``ready``
(see ``course_lib.distributed.metrics``).
With ``--watchdog S`` a ``course_lib.monitor.LoopWatchdog`` thread watches its loop and
logs (WARNING, logger ``course_lib.monitor.watchdog``) the loop thread's stack each
time the loop is blocked S seconds or more: the line that blocks it; with
``--metrics-port`` its lag figures are served too (it costs ~1-3 % at its 50 ms probe).
With ``--aiomonitor-port PORT`` it runs aiomonitor (``pip install aiomonitor``) on
loopback: its terminal UI on telnet PORT (``python -m aiomonitor.cli -p PORT``), its
web UI on PORT+1 (port 0: two free ones); it prints ``worker NAME aiomonitor on
telnet://... and http://...`` on stderr before ``ready``. Anyone on the machine can
then list, inspect and cancel the worker's tasks: it is off by default, and never
listens beyond 127.0.0.1 (``course_lib.monitor.attach`` drives it from a script). Its
task factory records where each task was created, at a cost: about 0.1 ms per task
created (measured: 10,000 empty tasks 0.085 s plain, 1.1 s with it).
``stats --watch`` prints the counts every ``--interval`` seconds (``--count N``
samples, else until SIGTERM, exit 0, or Ctrl-C, exit 130), each with its change per
second since the previous sample, then the jobs done per second (from XINFO STREAM's
``entries-added``: see ``course_lib.monitor.queue_figures``) and the entries in flight
per worker with its idle time; on a terminal it redraws in place. The stream's change
is enqueued minus settled, not a throughput. A Redis error while watching prints one
line and the next sample tries again.
``enqueue`` sends what it is given (3 attempts, no timeout, unless told; ``--delay S``
or ``--at ISO8601``: it waits, scheduled, until then); with
``--app`` it refuses unknown tasks and uses the task's own settings, as a
``Queue`` with a registry does. ``dead requeue --app`` refuses letters of tasks
the app does not register, as ``Queue.requeue_dead`` with a registry does (without
it nothing can be checked: such a job dies again at once). Data goes to stdout,
messages to stderr, text from Redis with its control characters escaped (``\\x1b``);
passwords never show (``mask_url``).
``cancel JOB_ID`` prints the id and what happened (``cancelled``: it had not started;
``requested``: it runs, and its worker cancels it within a heartbeat; ``ended``: exit 1,
nothing to cancel; no such job: exit 1).
``stats`` counts the consumers in the group and, apart, the ``stale`` ones: idle
longer than ``--stale-after`` (default 30 s, the worker's default visibility
timeout), as a killed worker's consumer is until something deletes it.

A frozen Redis (it accepts connections and never answers: SIGSTOP, an overloaded
or partitioned server) ends a command with exit 3: connecting and the first reply
take at most twice ``CONNECT_TIMEOUT_S``, 4 s (``course_lib.redis.connect``), and
each later step of a command (one request, or one page of ``dead requeue``) at most
``REPLY_TIMEOUT_S`` (5 s). ``enqueue --wait SECONDS`` exits 4 at its deadline even
then (at most ``WAIT_SLACK_S`` later); ``--wait`` with no SECONDS waits until the
job ends or Ctrl-C, whatever Redis does. A worker's BLOCK reads wait as long as they
should; its maintenance step is bounded instead (``worker.ANSWER_TIMEOUT_S``), so it
logs once when Redis stops answering, and once when it answers again.

Exit codes:

    0    ok
    1    the awaited job failed or died (enqueue --wait), a requeue refused some
         entries, cancel found no job or one ended already, or Redis answered a command
         with an error
    2    usage error: bad arguments, no Redis URL, a bad --app, a --metrics-port
         or --aiomonitor-port that cannot be listened on, aiomonitor not installed
    3    Redis unreachable, or not answering (a frozen server: see above)
    4    timed out waiting (enqueue --wait SECONDS)
    130  interrupted (Ctrl-C outside the worker's graceful stop, stats --watch included)
"""

from __future__ import annotations

__all__ = ["UsageError", "load_app", "main"]

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import importlib
import json
import logging
import math
import os
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import redis.asyncio
import redis.exceptions

from ..lifecycle import GracefulShutdown
from ..monitor.queue_figures import COUNTS, QueueSample, read_queue_figures
from ..monitor.watchdog import LoopWatchdog
from ..redis import RedisUnavailable, _scrub, connect, mask_url
from .job import InvalidJob, Job, JobFailed, JobNotFound, TaskRegistry
from .keys import DEFAULT_QUEUE, check_queue_name
from .options import EnqueueOptions
from .queue import CancelOutcome, DeadLetter, Queue, _text
from .running import _REDIS_DOWN
from .worker import Worker

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130

PROG = "python -m course_lib.distributed"
_DOC = __doc__ or "\n\nExit codes:\n\n"  # python -OO strips docstrings
_EXIT_CODES = "exit codes:\n" + textwrap.indent(
    textwrap.dedent(_DOC.split("Exit codes:\n\n")[1]), "  ")  # the table above, in --help
_NO_URL = ("no Redis URL: pass --redis-url or set REDIS_URL (another process cannot reach "
           "an in-process fakeredis; course_lib.redis.serve_fake_tcp() serves one on a port)")
_PAGE = 100  # dead letters per requeue_dead() call (one pipeline each)
# A step of a command (a request, a pipeline, a page) that a server which answered
# the connect's PING takes milliseconds for; redis-py's own default socket_timeout.
REPLY_TIMEOUT_S = 5.0
# --wait's own deadline comes first; this one only catches a Redis that froze
# before the wait could start its timer (the first read of the job's record).
WAIT_SLACK_S = 0.5

logger = logging.getLogger(__name__)
Command = Callable[[argparse.Namespace, redis.asyncio.Redis], Coroutine[Any, Any, int]]


class UsageError(Exception):
    """A command line that cannot run as given: exit 2 with this one-line message."""


class _NoAnswer(Exception):
    """Redis took longer than ``REPLY_TIMEOUT_S`` over one step: exit 3, as unreachable."""


def main(argv: list[str] | None = None) -> int:
    """Run one command (``argv``: default ``sys.argv[1:]``); return its exit code."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    with _logging(args.verbosity):
        try:
            _prepare(args)
            url = args.redis_url or os.environ.get("REDIS_URL") or None
            if url is None:
                raise UsageError(_NO_URL)
            return asyncio.run(_run(args, url))
        except UsageError as exc:
            return _fail(EXIT_USAGE, exc)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


def load_app(spec: str) -> TaskRegistry:
    """The TaskRegistry ``MODULE:ATTR`` names; UsageError saying what is wrong otherwise.

        load_app("course_lib.examples.jobs_app:registry")   # <TaskRegistry ['report', ...]>
    """
    module_name, colon, attr = spec.partition(":")
    if not (colon and module_name and attr):
        raise UsageError(f"--app {spec!r} must be MODULE:ATTR, e.g. "
                         "course_lib.examples.jobs_app:registry")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):
            raise UsageError(f"--app {spec!r}: no module named {exc.name!r} "
                             f"(is it on the path? run from its project folder)") from None
        raise _import_failed(spec, module_name, exc) from None
    except Exception as exc:  # the app's own module is broken: say how, in one line
        raise _import_failed(spec, module_name, exc) from None
    found: Any = module
    for part in attr.split("."):
        try:
            found = getattr(found, part)
        except AttributeError:
            raise UsageError(f"--app {spec!r}: module {module_name!r} has no "
                             f"attribute {attr!r}") from None
    if not isinstance(found, TaskRegistry):
        raise UsageError(f"--app {spec!r} is {type(found).__name__}, not a TaskRegistry")
    if not len(found):
        raise UsageError(f"--app {spec!r} registers no task: its worker would run nothing")
    return found


# --- the parser ----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=_DOC.split("\n\n")[0], epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _add_common(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, defaults=False)  # after the command too, not overriding
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: Any, name: str, run: Command, help: str) -> argparse.ArgumentParser:
        sub = group.add_parser(name, parents=[common], help=help, description=help,
                               epilog=_EXIT_CODES,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.set_defaults(run=run)
        return sub

    worker = command(commands, "worker", _worker, "run a worker until SIGTERM or SIGINT")
    worker.add_argument("--app", required=True, metavar="MODULE:ATTR",
                        help="the TaskRegistry to run, e.g. course_lib.examples.jobs_app:registry")
    worker.add_argument("--concurrency", type=_positive(int), default=10,
                        help="jobs run at once (default 10)")
    worker.add_argument("--name", help="consumer name, unique per worker (default host-pid-random)")
    worker.add_argument("--visibility-timeout", type=_positive(float), default=30.0,
                        metavar="S", help="idle seconds before a dead worker's job is "
                        "reclaimed (default 30)")
    worker.add_argument("--grace", type=_positive(float, zero=True), default=10.0, metavar="S",
                        help="seconds running jobs get to finish at stop (default 10)")
    worker.add_argument("--block", type=_positive(float), default=1.0, metavar="S",
                        help="longest wait of one read (default 1)")
    worker.add_argument("--job-timeout", type=_positive(float), default=300.0, metavar="S",
                        help="longest run of a job with no timeout of its own (default 300)")
    worker.add_argument("--metrics-port", type=_port, metavar="PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics (0: a free "
                             "port, printed on stderr); default: none")
    worker.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                        help="the address --metrics-port listens on (default 127.0.0.1)")
    worker.add_argument("--watchdog", type=_positive(float), metavar="S",
                        help="log the loop thread's stack whenever the worker's loop is "
                             "blocked S seconds or more (e.g. 0.1); default: off")
    worker.add_argument("--aiomonitor-port", type=_port, metavar="PORT",
                        help="run aiomonitor on 127.0.0.1: telnet PORT, web UI PORT+1 (0: "
                             "free ports, printed on stderr); default: none")

    enqueue = command(commands, "enqueue", _enqueue, "enqueue one job, print its id")
    enqueue.add_argument("task", metavar="TASK")
    enqueue.add_argument("arg", nargs="*", type=_json_or_text, metavar="ARG",
                         help="positional arguments: JSON when they parse (42, true, "
                              "\"42\", [1,2]), else strings")
    enqueue.add_argument("--args", type=_json_of(list), metavar="JSON",
                         help="positional arguments as a JSON list (instead of ARGs)")
    enqueue.add_argument("--kwargs", type=_json_of(dict), default={}, metavar="JSON",
                         help="keyword arguments as a JSON object")
    enqueue.add_argument("--app", metavar="MODULE:ATTR",
                         help="a TaskRegistry: refuse unknown tasks, use the task's "
                              "max_attempts and timeout")
    enqueue.add_argument("--job-id", metavar="ID",
                         help="the job's id: the same id twice is enqueued once")
    enqueue.add_argument("--max-attempts", type=_positive(int), metavar="N",
                         help="attempts in all (default 3)")
    later = enqueue.add_mutually_exclusive_group()
    later.add_argument("--delay", type=_positive(float, zero=True), metavar="S",
                       help="run no sooner than S seconds from now (it waits, scheduled)")
    later.add_argument("--at", type=_iso_time, metavar="ISO8601",
                       help="run no sooner than this time, with its UTC offset "
                            "(2030-01-01T09:00:00+01:00, or Z)")
    enqueue.add_argument("--wait", nargs="?", type=_positive(float), const=math.inf,
                         metavar="SECONDS", help="wait for the result (at most SECONDS) and "
                         "print it as JSON")

    cancel = command(commands, "cancel", _cancel,
                     "cancel a job: one not started never runs, a running one is cancelled")
    cancel.add_argument("job_id", metavar="JOB_ID")

    stats = command(commands, "stats", _stats,
                    "queue counts: stream, pending, lag, delayed, dead, consumers")
    stats.add_argument("--json", action="store_true",
                       help="one JSON object (with --watch: one per line, with \"rates\")")
    stats.add_argument("--watch", action="store_true",
                       help="print the counts again every --interval seconds, with their "
                            "change per second, until SIGTERM (exit 0) or Ctrl-C (exit 130)")
    stats.add_argument("--interval", type=_positive(float), metavar="S",
                       help="with --watch: seconds between samples (default 1)")
    stats.add_argument("--count", type=_positive(int), metavar="N",
                       help="with --watch: stop after N samples")
    stats.add_argument("--stale-after", type=_positive(float), default=30.0, metavar="S",
                       help="count apart, as stale, the consumers idle longer than S "
                            "(default 30, the workers' default --visibility-timeout)")

    dead = commands.add_parser("dead", help="list or requeue dead letters",
                               description="list or requeue dead letters")
    dead_commands = dead.add_subparsers(dest="dead_command", required=True, metavar="COMMAND")
    listing = command(dead_commands, "list", _dead_list, "the oldest dead letters")
    listing.add_argument("--count", type=_positive(int), default=100, metavar="N",
                         help="at most N (default 100)")
    listing.add_argument("--json", action="store_true", help="a JSON list, jobs included")
    requeue = command(dead_commands, "requeue", _dead_requeue,
                      "put dead jobs back with a fresh set of attempts")
    # Checked in _prepare, not by a mutually exclusive group: how argparse treats a
    # nargs="*" positional in one has changed between Python releases.
    requeue.add_argument("entry_id", nargs="*", metavar="ENTRY_ID",
                         help="dead-letter entry ids (see dead list)")
    requeue.add_argument("--all", action="store_true", help="every dead letter")
    requeue.add_argument("--app", metavar="MODULE:ATTR",
                         help="a TaskRegistry: refuse letters of tasks it does not register "
                              "(without it, they are requeued and die again at once)")
    return parser


def _add_common(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Defined twice: on the main parser with defaults, on each command with none
    # (SUPPRESS), so `worker --redis-url X` works and never resets what came before.
    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--redis-url", metavar="URL", default=default(None),
                        help="the server (default: $REDIS_URL)")
    parser.add_argument("--queue", metavar="NAME", default=default(DEFAULT_QUEUE),
                        help=f"the queue (default {DEFAULT_QUEUE!r})")
    loud = parser.add_mutually_exclusive_group()
    loud.add_argument("-v", "--verbose", dest="verbosity", action="store_const",
                      const=logging.DEBUG, default=default(logging.INFO), help="log more")
    loud.add_argument("-q", "--quiet", dest="verbosity", action="store_const",
                      const=logging.WARNING, default=default(logging.INFO),
                      help="log warnings only")


def _positive(kind: type, *, zero: bool = False) -> Callable[[str], Any]:
    """An argparse type: a number > 0 (>= 0 with ``zero``), finite or inf, not NaN."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value > 0 or (zero and value == 0)):  # NaN fails both
            raise argparse.ArgumentTypeError(f"must be {'>=' if zero else '>'} 0, not {text}")
        return value

    return parse


def _iso_time(text: str) -> float:
    """An argparse type: an ISO 8601 time with its UTC offset, as epoch seconds."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if when.utcoffset() is None:  # a naive time: this machine's zone, or the workers'?
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset: add Z or +HH:MM")
    return when.timestamp()


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 to 65535, not {text}")
    return port


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse)
    except ValueError:
        return text


def _json_of(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = json.loads(text, parse_constant=_refuse)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
        if not isinstance(value, kind):
            want = "a JSON list" if kind is list else "a JSON object"
            raise argparse.ArgumentTypeError(f"must be {want}, not {text!r}")
        return value

    return parse


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# --- running a command ---------------------------------------------------------------------


def _prepare(args: argparse.Namespace) -> None:
    """Check what needs no server, so a usage error never waits for one."""
    try:
        check_queue_name(args.queue)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.command == "worker":
        args.registry = load_app(args.app)
        # _positive lets inf through (--wait means "for ever" by it); a worker cannot
        # beat every inf/3 s or BLOCK for inf ms: one line here, not Worker's traceback.
        for option in ("visibility_timeout", "block"):
            if math.isinf(getattr(args, option)):
                raise UsageError(f"--{option.replace('_', '-')} must be a finite number of "
                                 "seconds, not inf")
        if args.block >= args.visibility_timeout:
            raise UsageError(f"--block ({args.block}) must be below --visibility-timeout "
                             f"({args.visibility_timeout})")
    elif args.command == "stats" and not args.watch:
        if args.interval is not None or args.count is not None:
            raise UsageError("--interval and --count go with --watch")
    elif args.command == "dead" and args.dead_command == "requeue":
        if bool(args.all) == bool(args.entry_id):
            raise UsageError("dead requeue takes ENTRY_IDs or --all (one of the two)")
        args.registry = load_app(args.app) if args.app else None
    elif args.command == "enqueue":
        if args.args is not None and args.arg:
            raise UsageError("give the arguments as ARGs or as --args, not both")
        # None, not falsy: --job-id '' is refused (Job's id check), not replaced by a random id.
        options: dict[str, Any] = {} if args.job_id is None else {"id": args.job_id}
        if args.app:
            task = load_app(args.app).get(args.task)
            if task is None:
                raise UsageError(f"no task {args.task!r} in --app {args.app!r}")
            options |= {"max_attempts": task.max_attempts, "timeout_s": task.timeout_s}
        if args.max_attempts:
            options["max_attempts"] = args.max_attempts
        try:
            args.later = EnqueueOptions(delay_s=args.delay, at=args.at)
        except ValueError as exc:  # --delay inf
            raise UsageError(f"--delay: {exc}") from None
        try:
            args.job = Job(args.task, args.args or args.arg, args.kwargs, **options)
            args.job.encode()  # the size check
        except InvalidJob as exc:
            raise UsageError(str(exc)) from None


async def _run(args: argparse.Namespace, url: str) -> int:
    shown = mask_url(url)
    logger.debug("connecting to %s", shown)
    try:
        client = await connect(url)
    except RedisUnavailable as exc:
        return _fail(EXIT_UNREACHABLE, exc)
    except ValueError as exc:  # a malformed URL; the message masks it
        return _fail(EXIT_USAGE, exc)
    args.url = url  # for messages that must mask it (_scrub)
    try:
        return await args.run(args, client)
    except _NoAnswer as exc:
        return _fail(EXIT_UNREACHABLE, f"Redis at {shown} did not answer within "
                                       f"{REPLY_TIMEOUT_S:g} s ({exc}): stopped, overloaded or "
                                       "cut off?")
    except _REDIS_DOWN as exc:
        reason = _scrub(str(exc) or type(exc).__name__, url)
        return _fail(EXIT_UNREACHABLE, f"Redis unreachable at {shown}: {reason}")
    except redis.exceptions.RedisError as exc:
        return _fail(EXIT_FAILED, f"Redis at {shown} refused: {_scrub(str(exc), url)}")
    finally:
        await client.aclose()


async def _worker(args: argparse.Namespace, client: redis.asyncio.Redis) -> int:
    worker = Worker(client, args.registry, queue=args.queue, name=args.name,
                    concurrency=args.concurrency, visibility_timeout_s=args.visibility_timeout,
                    grace_s=args.grace, block_s=args.block, default_timeout_s=args.job_timeout)
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


_LOOPBACK = "127.0.0.1"  # aiomonitor has no authentication: never anywhere else


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


async def _enqueue(args: argparse.Namespace, client: redis.asyncio.Redis) -> int:
    handle = await _answered(Queue(client, args.queue).enqueue_job(
        args.job, at=args.later.due_at()), "enqueueing")
    print(handle.id, flush=True)
    if not handle.enqueued:
        status = await _answered(handle.status(), "reading the job's status")
        print(f"job {handle.id} exists already ({status.value if status else 'unknown'}): "
              "not enqueued again", file=sys.stderr)
    if args.wait is None:
        return EXIT_OK
    timeout_s = None if math.isinf(args.wait) else args.wait
    try:
        # result() bounds its wait for the outcome, not its first read of the record:
        # this outer bound ends the wait on a Redis that froze before that read returned.
        async with asyncio.timeout(None if timeout_s is None else timeout_s + WAIT_SLACK_S
                                   ) as scope:
            result = await handle.result(timeout_s=timeout_s)
    except TimeoutError as exc:
        if scope.expired():
            return _fail(EXIT_TIMEOUT, f"job {handle.id!r}: no outcome within {args.wait:g} s "
                                       "(Redis did not answer)")
        return _fail(EXIT_TIMEOUT, exc)
    except (JobFailed, JobNotFound) as exc:
        return _fail(EXIT_FAILED, exc)
    print(json.dumps(result, ensure_ascii=False))
    return EXIT_OK


_CANCEL_SAYS = {
    CancelOutcome.CANCELLED: "cancelled: it had not started, and never will",
    CancelOutcome.REQUESTED: "cancel requested: it is running; its worker cancels it within "
                             "one heartbeat (a third of its --visibility-timeout)",
}


async def _cancel(args: argparse.Namespace, client: redis.asyncio.Redis) -> int:
    queue = Queue(client, args.queue)
    try:
        outcome = await _answered(queue.cancel(args.job_id), "cancelling")
    except JobNotFound as exc:
        return _fail(EXIT_FAILED, exc)
    print(f"{args.job_id} {outcome.value}", flush=True)
    if outcome is CancelOutcome.ENDED:
        status = await _answered(queue.handle(args.job_id).status(), "reading its status")
        return _fail(EXIT_FAILED, f"job {args.job_id} already ended "
                                  f"({status.value if status else 'expired'}): not cancelled")
    print(f"job {args.job_id} {_CANCEL_SAYS[outcome]}", file=sys.stderr)
    return EXIT_OK


async def _stats(args: argparse.Namespace, client: redis.asyncio.Redis) -> int:
    if args.watch:
        return await _watch(args, client)
    counts = await _answered(_counts(Queue(client, args.queue), args.stale_after),
                             "counting")
    if args.json:
        print(json.dumps({"queue": args.queue, **counts}))
    else:
        for name, value in {"queue": args.queue, **counts}.items():
            print(f"{name:<10} {value}")
    return EXIT_OK


_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen: only on a terminal


async def _counts(queue: Queue, stale_after_s: float) -> dict[str, int]:
    """``Queue.counts()``, and ``stale``: consumers idle over ``stale_after_s``.

    A worker killed with SIGKILL leaves its consumer in the group (only a stopping
    worker deletes its own); a live one reads or beats more often than its
    visibility timeout, so its idle time stays below it.
    """
    counts = dataclasses.asdict(await queue.counts())
    stale = 0
    if counts["consumers"]:
        try:
            consumers = await queue.redis.xinfo_consumers(queue.keys.stream, queue.keys.group)
        except redis.exceptions.ResponseError:  # the stream or group went meanwhile
            consumers = []
        stale = sum(int(c["idle"]) > stale_after_s * 1000 for c in consumers)
    counts["stale"] = stale
    return counts


async def _watch(args: argparse.Namespace, client: redis.asyncio.Redis) -> int:
    """``stats --watch``: sample, print, sleep ``--interval``; until --count, SIGTERM or SIGINT.

    Each sample is one bounded, pipelined read (``course_lib.monitor.queue_figures``,
    the figures of chapter 5's dashboard); rates are taken against the last good one.
    """
    queue = Queue(client, args.queue)
    interval = args.interval or 1.0
    redraw = sys.stdout.isatty() and not args.json
    previous: QueueSample | None = None
    samples = 0
    async with GracefulShutdown() as stop:
        while not stop.is_set():
            try:  # bounded: a server that stops answering is an error line, not a hang
                previous = await read_queue_figures(queue, previous,
                                                    timeout_s=max(interval, 5.0))
            except (TimeoutError, redis.exceptions.RedisError, OSError) as exc:
                reason = _scrub(str(exc) or type(exc).__name__, args.url).splitlines()[0]
                print(f"{time.strftime('%H:%M:%S')} Redis at {mask_url(args.url)}: "
                      f"{type(exc).__name__}: {reason}", file=sys.stderr, flush=True)
            else:
                print(_watch_block(args, previous, samples + 1, redraw), end="", flush=True)
            samples += 1
            if args.count is not None and samples >= args.count:
                return EXIT_OK
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    if stop.reason == "SIGINT":
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK


def _watch_block(args: argparse.Namespace, q: QueueSample, sample: int, redraw: bool) -> str:
    counts = {name: getattr(q, name) for name in COUNTS}
    stale = {name for name, idle_s in q.idle_s.items() if idle_s > args.stale_after}
    counts["stale"] = len(stale)
    if args.json:
        return json.dumps({"queue": args.queue, **counts, "time": time.time(),
                           "rates": q.rates, "done": q.done, "done_per_s": q.done_per_s,
                           "in_flight": q.in_flight, "idle_s": q.idle_s}) + "\n"
    lines = [f"{time.strftime('%Y-%m-%d %H:%M:%S')}  sample {sample}, every "
             f"{args.interval or 1.0:g} s  (Ctrl-C stops)"]
    for name, value in {"queue": args.queue, **counts}.items():
        line = f"{name:<10} {value}"
        if q.rates is not None and name in q.rates:
            line = f"{line:<22} {q.rates[name]:+.1f}/s"
        lines.append(line)
    if q.done_per_s is not None:
        lines.append(f"{'done/s':<10} {q.done_per_s:.1f}   ({q.done} in the last "
                     f"{q.interval_s:.1f} s)")
    else:  # the first sample has no interval; Redis < 7 reports no entries-added
        lines.append(f"{'done/s':<10} {'-' if q.rates is None else 'n/a'}")
    if q.in_flight:
        lines.append(f"{'in_flight':<10} " + " | ".join(
            f"{name} {n}, idle {q.idle_s.get(name, 0):.1f} s" + (" (stale)" * (name in stale))
            for name, n in q.in_flight.items()))
    return (_CLEAR if redraw else "") + "\n".join(lines) + ("\n" if redraw else "\n\n")


async def _dead_list(args: argparse.Namespace, client: redis.asyncio.Redis) -> int:
    letters = await _answered(Queue(client, args.queue).dead_letters(count=args.count),
                              "reading dead letters")
    if args.json:
        print(json.dumps([_letter_dict(letter) for letter in letters], ensure_ascii=False))
    elif not letters:
        print(f"no dead letters in queue {args.queue!r}", file=sys.stderr)
    for letter in [] if args.json else letters:
        print(_letter_line(letter))
    return EXIT_OK


async def _dead_requeue(args: argparse.Namespace, client: redis.asyncio.Redis) -> int:
    queue = Queue(client, args.queue, registry=args.registry)
    if args.registry is None:
        print("no --app: the tasks are not checked (a letter of a task no worker registers "
              "dies again at once)", file=sys.stderr)
    ids = await _all_dead_ids(queue) if args.all else args.entry_id
    done = refused = 0
    for start in range(0, len(ids), _PAGE):
        report = await _answered(queue.requeue_dead(ids[start:start + _PAGE]), "requeueing")
        for entry_id, job_id in report.requeued.items():
            print(f"{entry_id} requeued: job {job_id}")
        for entry_id, why in report.refused.items():
            print(_printable(f"{entry_id} refused: {why}"), file=sys.stderr)
        done, refused = done + len(report.requeued), refused + len(report.refused)
    print(f"requeued {done}, refused {refused}", file=sys.stderr)
    return EXIT_FAILED if refused else EXIT_OK


async def _all_dead_ids(queue: Queue) -> list[str]:
    """Every id in the dead-letter stream now (later letters are not chased)."""
    ids: list[str] = []
    start = "-"
    while True:
        page = await _answered(queue.redis.xrange(queue.keys.dead, min=start, count=500),
                               "listing dead letters")
        ids += [_text(entry_id) for entry_id, _ in page]
        if len(page) < 500:
            return ids
        ms, seq = ids[-1].split("-")
        start = f"{ms}-{int(seq) + 1}"  # just after the last one


# --- output --------------------------------------------------------------------------------


def _letter_dict(letter: DeadLetter) -> dict[str, Any]:
    shown = dataclasses.asdict(letter)
    shown["job"] = None if letter.job is None else _text(letter.job)
    shown["extra"] = letter.extra_text()  # names and values, non-UTF-8 bytes escaped
    return shown


def _letter_line(letter: DeadLetter) -> str:
    """One line, arguments left out (they can hold secrets): id, when, which job, why."""
    when = datetime.datetime.fromtimestamp(letter.dead_at, datetime.UTC)
    try:
        job = Job.decode(letter.job or b"")
        what = f"{job.task}(id={job.id}) {job.attempt}/{job.max_attempts}"
    except InvalidJob:
        what = "(not a job)"
    why = letter.reason
    if letter.error_type:
        why += f"; {letter.error_type}: {letter.error}"
    why = " ".join(why.split())  # one line
    if len(why) > 160:
        why = why[:157] + "..."
    return _printable(f"{letter.entry_id}  {when:%Y-%m-%d %H:%M:%S}Z  {what}  {why}")


def _printable(text: str) -> str:
    """``text`` with control and format characters escaped (``\\x1b``, ``\\u202e``).

    A dead letter holds whatever was enqueued or raised: printed raw, an escape
    sequence in it would move the cursor, recolour or retitle the reader's terminal.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


async def _answered(step: Coroutine[Any, Any, Any], doing: str) -> Any:
    """``await step``, for at most ``REPLY_TIMEOUT_S``; _NoAnswer (exit 3) after that."""
    try:
        async with asyncio.timeout(REPLY_TIMEOUT_S) as scope:
            return await step
    except TimeoutError:
        if scope.expired():
            raise _NoAnswer(doing) from None
        raise


def _fail(code: int, problem: object) -> int:
    # One line, no traceback: the message names the problem (with -v, the log has more).
    text = str(problem).strip().splitlines()
    print(f"{PROG}: error: {text[0] if text else type(problem).__name__}", file=sys.stderr)
    return code


def _import_failed(spec: str, module_name: str, exc: BaseException) -> UsageError:
    logger.debug("importing %s failed", module_name, exc_info=exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    return UsageError(f"--app {spec!r}: importing {module_name!r} failed: "
                      f"{type(exc).__name__}: {first}")


@contextlib.contextmanager
def _logging(level: int) -> Iterator[None]:
    """Log course_lib's records to stderr at ``level`` while a command runs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("course_lib")
    previous = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
