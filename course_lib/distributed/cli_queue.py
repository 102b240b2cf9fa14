"""The CLI's commands on a queue: enqueue, cancel, stats (and --watch), dead list/requeue.

    code = await _enqueue(args, client)   # args from cli_parser; the exit code

Each takes the parsed arguments and a connected client, bounds every step on Redis
(``cli_common._answered``: a frozen server is exit 3, never a hang) and returns the
exit code; data goes to stdout, messages to stderr.
"""

from __future__ import annotations

__all__: list[str] = []  # the CLI's own commands: run through cli.main

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import sys
import time

import redis.asyncio
import redis.exceptions

from ..lifecycle import GracefulShutdown
from ..monitor.queue_figures import QueueSample, read_queue_figures
from ..redis import _scrub, mask_url
from .cli_common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TIMEOUT,
    WAIT_SLACK_S,
    _answered,
    _fail,
    _while_answering,
)
from .cli_output import _letter_dict, _letter_line, _printable, _watch_block
from .handle import CancelOutcome
from .job import JobFailed, JobNotFound
from .queue import Queue
from .replies import _text

_PAGE = 100  # dead letters per requeue_dead() call (one pipeline each)


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
    # Waiting may rightly take for ever (no worker yet), but not on a server that has
    # stopped answering: a bounded PING every HEALTH_PING_S tells them apart (exit 3).
    waiting = _while_answering(client, handle.result(timeout_s=timeout_s),
                               "a health ping while waiting for the result")
    try:
        # result() bounds its wait for the outcome, not its first read of the record:
        # this outer bound ends the wait on a Redis that froze before that read returned.
        async with asyncio.timeout(None if timeout_s is None else timeout_s + WAIT_SLACK_S
                                   ) as scope:
            result = await waiting
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
