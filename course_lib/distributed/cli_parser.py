"""The CLI's parser: every command, option and argument type, and the checks before Redis.

    args = _parser(cli.__doc__).parse_args(["stats", "--json"])
    _prepare(args)   # UsageError (exit 2) for what needs no server to refuse

Each command's ``run`` (``args.run``) is its coroutine in ``cli_worker`` or ``cli_queue``.
"""

from __future__ import annotations

__all__ = ["load_app"]

import argparse
import datetime
import importlib
import json
import logging
import math
import textwrap
from collections.abc import Callable
from typing import Any

from .cli_common import PROG, Command, UsageError, logger
from .cli_queue import _cancel, _dead_list, _dead_requeue, _enqueue, _stats
from .cli_worker import LOOPS, _loop_factory, _worker
from .job import InvalidJob, Job
from .keys import DEFAULT_QUEUE, check_queue_name
from .options import EnqueueOptions
from .registry import TaskRegistry


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



def _import_failed(spec: str, module_name: str, exc: BaseException) -> UsageError:
    logger.debug("importing %s failed", module_name, exc_info=exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    return UsageError(f"--app {spec!r}: importing {module_name!r} failed: "
                      f"{type(exc).__name__}: {first}")



def _parser(doc: str) -> argparse.ArgumentParser:
    """The parser of every command; ``doc``: the manual (``cli``'s docstring), for --help."""
    exit_codes = "exit codes:\n" + textwrap.indent(
        textwrap.dedent(doc.split("Exit codes:\n\n")[1]), "  ")  # the table, in --help
    parser = argparse.ArgumentParser(
        prog=PROG, description=doc.split("\n\n")[0], epilog=exit_codes,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _add_common(parser, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, defaults=False)  # after the command too, not overriding
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(group: Any, name: str, run: Command, help: str) -> argparse.ArgumentParser:
        sub = group.add_parser(name, parents=[common], help=help, description=help,
                               epilog=exit_codes,
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
    worker.add_argument("--max-dead-letters", type=_count_or_all, default=10_000,
                        metavar="N", help="keep about the newest N dead letters, trimming "
                        "the oldest ('all': keep every one; default 10000)")
    worker.add_argument("--idle-consumer-s", type=_positive(float), metavar="S",
                        help="delete the group's consumers idle S seconds holding nothing "
                             "(crashed workers'; default 10 visibility timeouts, at least 3600)")
    worker.add_argument("--read-ahead", type=_whole, metavar="N",
                        help="at most N entries read and marked running ahead of a free slot, "
                             "as many as it starts in about 10 ms (0: none; default 100, or "
                             "the concurrency if larger)")
    worker.add_argument("--loop", choices=LOOPS, default="asyncio",
                        help="the event loop: asyncio's own (default) or uvloop's "
                             "(pip install uvloop)")

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


def _whole(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _count_or_all(text: str) -> int | None:
    """An argparse type: a whole number > 0, or ``all`` (None: no limit)."""
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number nor 'all': {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be > 0 (or 'all'), not {text}")
    return value


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
        for option in ("visibility_timeout", "block", "idle_consumer_s"):
            if math.isinf(getattr(args, option) or 0):
                raise UsageError(f"--{option.replace('_', '-')} must be a finite number of "
                                 "seconds, not inf")
        args.loop_factory = _loop_factory(args.loop)
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
