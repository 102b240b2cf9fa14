"""What the parts of a Worker share: its settings, its stop signal, its error handling.

    settings = Settings(name="w1", concurrency=10, ...)     # read-only, checked by Worker
    control = Control(settings)                              # the stop, seen by every part
    await control.sleep(1.0)                                 # or less, at a stop request
    outage = Outage(redis, keys, control)                    # one log line per outage

The parts (``reader``, ``running``, ``outcomes``, ``settling``, ``heartbeat``,
``maintenance``) are objects composed by ``Worker``; each takes these and the few
collaborators it calls, nothing else. The log lines go to the logger
``course_lib.distributed.worker``: one logger to follow a worker by, whichever part writes.
"""

from __future__ import annotations

__all__: list[str] = []  # internal: Worker is the public face

import asyncio
import dataclasses
import logging
import math
import time
from typing import Any

import redis.asyncio
import redis.exceptions

from ..redis import mask_url
from ..timeouts import backoff_s
from .keys import QueueKeys
from .queue import _out_of_memory

logger = logging.getLogger("course_lib.distributed.worker")

# Read-ahead (see reader.Slots): at most READ_AHEAD entries by default (or one batch, if
# larger) wait read and marked running, and only as many as the worker starts in
# AHEAD_S at its recent pace, measured over PACE_WINDOW_S; one batch always.
READ_AHEAD = 100
AHEAD_S = 0.010
PACE_WINDOW_S = 0.050

# What "Redis went away" looks like from redis-py: refused, reset, timed out.
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """A worker's settings, checked by ``Worker`` (its docstring says what each means)."""

    name: str
    concurrency: int
    batch_size: int
    read_ahead: int
    visibility_timeout_s: float
    heartbeat_s: float
    block_s: float
    maintenance_s: float
    retry_base_s: float
    retry_max_s: float
    retry_jitter: str
    result_ttl_s: float
    max_deliveries: int
    max_dead_letters: int | None
    idle_consumer_s: float
    default_timeout_s: float | None
    grace_s: float
    cancel_timeout_s: float
    reconnect_base_s: float
    reconnect_max_s: float

    @classmethod
    def checked(cls, *, concurrency: int, batch_size: int | None, read_ahead: int | None,
                visibility_timeout_s: float,
                heartbeat_s: float | None, block_s: float, maintenance_s: float | None,
                retry_base_s: float, retry_max_s: float, retry_jitter: str,
                max_dead_letters: int | None, idle_consumer_s: float | None,
                default_timeout_s: float | None, **rest: Any) -> Settings:
        """The settings ``Worker`` takes, checked (ValueError), with defaults filled in."""
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {concurrency!r}")
        batch_size = min(batch_size or concurrency, concurrency)
        read_ahead = max(batch_size, READ_AHEAD) if read_ahead is None else read_ahead
        if isinstance(read_ahead, bool) or not isinstance(read_ahead, int) or read_ahead < 0:
            raise ValueError(f"read_ahead must be an integer >= 0, not {read_ahead!r}")
        if not 0 < block_s < visibility_timeout_s:
            # A finite BLOCK, never 0: fakeredis never unblocks a reader whose client
            # died, and stop() waits for the read in flight to return.
            raise ValueError(f"block_s must be > 0 and below visibility_timeout_s: {block_s!r}")
        heartbeat_s = visibility_timeout_s / 3 if heartbeat_s is None else heartbeat_s
        if not 0 < heartbeat_s < visibility_timeout_s:
            raise ValueError(f"heartbeat_s must be > 0 and below visibility_timeout_s "
                             f"({visibility_timeout_s}), not {heartbeat_s!r}")
        backoff_s(1, base_s=retry_base_s, max_s=retry_max_s, jitter=retry_jitter)  # checks them
        if max_dead_letters is not None and max_dead_letters < 1:
            raise ValueError(f"max_dead_letters must be >= 1 or None (keep all), not "
                             f"{max_dead_letters!r}")
        idle_consumer_s = (max(10 * visibility_timeout_s, 3600.0) if idle_consumer_s is None
                           else idle_consumer_s)
        if not idle_consumer_s > 0:
            raise ValueError(f"idle_consumer_s must be > 0, not {idle_consumer_s!r}")
        if default_timeout_s is not None and not (
                isinstance(default_timeout_s, (int, float))
                and not isinstance(default_timeout_s, bool) and default_timeout_s > 0):
            raise ValueError(f"default_timeout_s must be a number > 0 or None, not "
                             f"{default_timeout_s!r}")
        return cls(
            concurrency=concurrency, batch_size=batch_size, read_ahead=read_ahead,
            visibility_timeout_s=visibility_timeout_s, heartbeat_s=heartbeat_s,
            block_s=block_s,
            maintenance_s=(min(1.0, visibility_timeout_s / 2) if maintenance_s is None
                           else maintenance_s),
            retry_base_s=retry_base_s, retry_max_s=retry_max_s, retry_jitter=retry_jitter,
            max_dead_letters=max_dead_letters, idle_consumer_s=idle_consumer_s,
            # A job with no timeout_s of its own, nor its task's, runs at most this long.
            default_timeout_s=None if default_timeout_s == math.inf else default_timeout_s,
            **rest)

    def reconnect_delay_s(self, failures: int) -> float:
        """How long to back off after ``failures`` failures in a row (Redis away)."""
        return backoff_s(failures, base_s=self.reconnect_base_s, max_s=self.reconnect_max_s)


class Control:
    """The stop as every part sees it: requested (no more reads), begun, or an abort."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()  # stop() or abort() called: no more reads
        self.begun = False  # a stop (or abort) is under way: every cancel is its own
        self.aborting = False  # abort(): a "crash", nothing handed back or settled

    async def sleep(self, delay_s: float, wake: asyncio.Event | None = None) -> None:
        """Sleep ``delay_s``, or less when ``wake`` (default: the stop request) is set."""
        try:
            async with asyncio.timeout(delay_s):
                await (wake or self.requested).wait()
        except TimeoutError:
            pass


class Outage:
    """Says once per outage that Redis is away (or its stream key replaced), and when back."""

    def __init__(self, redis: redis.asyncio.Redis, keys: QueueKeys, settings: Settings,
                 control: Control, ensure_group: Any) -> None:
        self._redis, self._keys, self._settings = redis, keys, settings
        self._control = control
        self._ensure_group = ensure_group  # async (): recreate the consumer group
        self._down_since: float | None = None
        self._wrong_key = False  # the stream key holds another type: said once

    async def after_error(self, exc: Exception, failures: int, doing: str) -> None:
        """Log an error of a loop once per outage, recreate a lost group, back off."""
        name = self._settings.name
        if isinstance(exc, redis.exceptions.ResponseError) and "NOGROUP" in str(exc):
            # The stream or group is gone (FLUSHALL, a restart without persistence).
            logger.warning("worker %s: consumer group missing while %s; recreating it",
                           name, doing)
            try:
                await self._ensure_group()
                return
            except Exception as again:
                exc = again
        if _out_of_memory(exc):
            if failures == 1:  # once per streak: it may last
                logger.warning("worker %s: Redis out of memory while %s (%s); retrying with "
                               "backoff", name, doing, exc)
        elif stream_replaced(exc):
            # Its key deleted under a read, or holding a string, a hash...: said once
            # per window, not a traceback per retry (the backoff bounds the retries).
            if not self._wrong_key:
                self._wrong_key = True
                logger.warning("worker %s: the stream key %r is not a stream while %s (%s): "
                               "replaced or deleted under the worker? Retrying with backoff "
                               "until it is one again", name, self._keys.stream, doing, exc)
        elif isinstance(exc, REDIS_DOWN):
            if self._down_since is None:
                self._down_since = time.monotonic()
                logger.warning("worker %s: Redis unreachable at %s while %s (%s: %s); "
                               "retrying with backoff", name, describe(self._redis), doing,
                               type(exc).__name__, exc)
        else:
            logger.error("worker %s: error while %s", name, doing, exc_info=exc)
        await self._control.sleep(self._settings.reconnect_delay_s(failures))

    def up(self, *, read: bool = False) -> None:
        """A command went through: end the outage (a read also says the stream is one)."""
        if self._wrong_key and read:  # only a read says the stream is one again
            logger.warning("worker %s: the stream key %r is a stream again",
                           self._settings.name, self._keys.stream)
            self._wrong_key = False
        if self._down_since is not None:
            logger.warning("worker %s: Redis reachable again after %.1f s", self._settings.name,
                           time.monotonic() - self._down_since)
            self._down_since = None


def stream_replaced(exc: Exception) -> bool:
    """True for the errors of a stream key deleted under a BLOCK read or holding another type."""
    return isinstance(exc, redis.exceptions.ResponseError) and (
        str(exc).startswith(("WRONGTYPE", "UNBLOCKED the stream key no longer exists")))


def refused_for_now(exc: BaseException) -> bool:
    """Refused by a server that will take it later: out of memory, or scripts flushed."""
    return _out_of_memory(exc) or isinstance(exc, redis.exceptions.NoScriptError)


async def cancel_until_done(tasks: set[asyncio.Task[Any]], give_up_s: float
                            ) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` until they end, again every 0.1 s; those still running at the end.

    Again, because Python 3.11 can lose a cancel inside a redis-py command (see
    ``results._raise_if_cancel_lost``).
    """
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + give_up_s
    while tasks and loop.time() < give_up_at:
        for task in tasks:
            task.cancel()
        _, tasks = await asyncio.wait(tasks, timeout=min(0.1, give_up_s))
    return tasks


async def wait_loops(loops: list[asyncio.Task[None]], settings: Settings) -> None:
    """Wait for a worker's loops to end, once a stop is requested; cancel those that don't.

    The read in flight returns within ``block_s``, a settle's read within
    ``cancel_timeout_s``. A loop still running after both waits on a connection gone
    silent (no ``socket_timeout``: its command never returns): it is cancelled, and what
    it was reading stays pending, reclaimed later.
    """
    if not loops:
        return
    wait_s = settings.block_s + settings.cancel_timeout_s
    _, late = await asyncio.wait(loops, timeout=wait_s)
    if late:
        logger.warning("worker %s: %s still running %s s after the stop request "
                       "(Redis not answering?); cancelling", settings.name,
                       sorted(t.get_name() for t in late), wait_s)
        if await cancel_until_done(late, settings.cancel_timeout_s):
            logger.error("worker %s: its loops ignore cancellation", settings.name)
    for task in loops:
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.error("worker %s: %s failed", settings.name, task.get_name(),
                         exc_info=task.exception())


def describe(client: redis.asyncio.Redis) -> str:
    """Where the client points, for logs: a URL without password, or 'fakeredis'."""
    if not hasattr(client, "connection_pool"):  # a RedisCluster: its nodes, no password
        return "redis+cluster://" + ",".join(node.name for node in client.get_nodes())
    kw = getattr(client.connection_pool, "connection_kwargs", {})
    if "server" in kw or type(client).__module__.startswith("fakeredis"):
        return "fakeredis"
    if "path" in kw:
        return mask_url(f"unix://{kw['path']}?db={kw.get('db', 0)}")
    return mask_url(f"redis://{kw.get('host', '?')}:{kw.get('port', 6379)}/{kw.get('db', 0)}")

