"""What every command of the CLI shares: exit codes, bounds on Redis, one-line failures.

    code = _fail(EXIT_USAGE, "--block must be below --visibility-timeout")
    counts = await _answered(queue.counts(), "counting")   # _NoAnswer after 5 s

The commands live in ``cli_worker`` and ``cli_queue``, the parser in ``cli_parser``,
and ``cli`` runs them (its docstring is the CLI's manual).
"""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_UNREACHABLE",
    "EXIT_USAGE", "HEALTH_PING_S", "PROG", "REPLY_TIMEOUT_S", "WAIT_SLACK_S", "UsageError",
]

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import redis.asyncio

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_INTERRUPTED = 130

PROG = "python -m course_lib.distributed"
# A step of a command (a request, a pipeline, a page) that a server which answered
# the connect's PING takes milliseconds for; redis-py's own default socket_timeout.
REPLY_TIMEOUT_S = 5.0
# --wait's own deadline comes first; this one only catches a Redis that froze
# before the wait could start its timer (the first read of the job's record).
WAIT_SLACK_S = 0.5
# While `enqueue --wait` waits, a PING this often (each bounded by REPLY_TIMEOUT_S):
# the result's subscription hears nothing from a frozen server, and says nothing.
HEALTH_PING_S = 2.0

logger = logging.getLogger("course_lib.distributed.cli")
Command = Callable[[argparse.Namespace, redis.asyncio.Redis], Coroutine[Any, Any, int]]


class UsageError(Exception):
    """A command line that cannot run as given: exit 2 with this one-line message."""


class _NoAnswer(Exception):
    """Redis took longer than ``REPLY_TIMEOUT_S`` over one step: exit 3, as unreachable."""


async def _answered(step: Coroutine[Any, Any, Any], doing: str) -> Any:
    """``await step``, for at most ``REPLY_TIMEOUT_S``; _NoAnswer (exit 3) after that."""
    try:
        async with asyncio.timeout(REPLY_TIMEOUT_S) as scope:
            return await step
    except TimeoutError:
        if scope.expired():
            raise _NoAnswer(doing) from None
        raise


async def _while_answering(client: redis.asyncio.Redis, step: Coroutine[Any, Any, Any],
                           doing: str) -> Any:
    """``await step`` as long as it takes, while Redis answers a PING every ``HEALTH_PING_S``.

    For a step that may rightly wait for ever (a result nobody has produced yet):
    a server that stops answering (SIGSTOP, overloaded, cut off) is noticed within
    ``HEALTH_PING_S + REPLY_TIMEOUT_S``, as _NoAnswer (exit 3), and ``step`` cancelled.
    """
    task = asyncio.ensure_future(step)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=HEALTH_PING_S)
            if done:
                return task.result()
            await _answered(client.ping(), doing)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: raised above, or superseded by _NoAnswer


def _fail(code: int, problem: object) -> int:
    # One line, no traceback: the message names the problem (with -v, the log has more).
    text = str(problem).strip().splitlines()
    print(f"{PROG}: error: {text[0] if text else type(problem).__name__}", file=sys.stderr)
    return code
