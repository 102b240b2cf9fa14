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
``--loop uvloop`` runs it on uvloop's event loop (``pip install uvloop``; the dev
extra has it); ``--max-dead-letters N`` (or ``all``) and ``--idle-consumer-s S`` are
the Worker's ``max_dead_letters`` (dead letters kept, default 10,000) and
``idle_consumer_s`` (crashed workers' consumers deleted after that long idle).
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
then (at most ``WAIT_SLACK_S`` later). While it waits for a result, ``enqueue --wait``
(with SECONDS or without) PINGs Redis every ``HEALTH_PING_S`` (2 s), each PING bounded
by ``REPLY_TIMEOUT_S``: a server that stops answering ends the wait with exit 3 within
7 s, unless the deadline comes first; ``--wait`` alone waits as long as Redis answers,
until the job ends or Ctrl-C (a server that is gone: exit 3). A worker's BLOCK
reads wait as long as they should; its maintenance step is bounded instead
(``worker.ANSWER_TIMEOUT_S``), so it logs once when Redis stops answering, and once
when it answers again.

Exit codes:

    0    ok
    1    the awaited job failed or died (enqueue --wait), a requeue refused some
         entries, cancel found no job or one ended already, or Redis answered a command
         with an error
    2    usage error: bad arguments, no Redis URL, a bad --app, a --metrics-port
         or --aiomonitor-port that cannot be listened on, aiomonitor not installed,
         uvloop not installed (--loop uvloop)
    3    Redis unreachable, or not answering (a frozen server: see above)
    4    timed out waiting (enqueue --wait SECONDS)
    130  interrupted (Ctrl-C outside the worker's graceful stop, stats --watch included)
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_UNREACHABLE",
    "EXIT_USAGE", "HEALTH_PING_S", "PROG", "REPLY_TIMEOUT_S", "WAIT_SLACK_S", "UsageError",
    "load_app", "main",
]

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator

import redis.exceptions

from ..redis import RedisUnavailable, _scrub, connect, mask_url
from .cli_common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    HEALTH_PING_S,
    PROG,
    REPLY_TIMEOUT_S,
    WAIT_SLACK_S,
    UsageError,
    _fail,
    _NoAnswer,
    logger,
)
from .cli_parser import _parser, _prepare, load_app
from .running import _REDIS_DOWN

_DOC = __doc__ or "\n\nExit codes:\n\n"  # python -OO strips docstrings
_NO_URL = ("no Redis URL: pass --redis-url or set REDIS_URL (another process cannot reach "
           "an in-process fakeredis; course_lib.redis.serve_fake_tcp() serves one on a port)")


def main(argv: list[str] | None = None) -> int:
    """Run one command (``argv``: default ``sys.argv[1:]``); return its exit code."""
    parser = _parser(_DOC)
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
            # asyncio.Runner, not asyncio.run: 3.11's run() takes no loop_factory.
            with asyncio.Runner(loop_factory=getattr(args, "loop_factory", None)) as runner:
                return runner.run(_run(args, url))
        except UsageError as exc:
            return _fail(EXIT_USAGE, exc)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED


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
