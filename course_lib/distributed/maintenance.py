"""The consumer group, and the maintenance loop: due jobs moved, idle consumers reaped.

    group = Group(redis, keys, settings)
    await group.ensure()                        # at start; again when it is lost
    maintenance = Maintenance(queue, settings, control, outage, script, answer_timeout_s=5)
    maintenance.nudge()                         # a retry was scheduled: look again now
    await group.leave()                         # at stop, when this consumer holds nothing

The loop sends only commands that do not block, each bounded by ``answer_timeout_s``: a
server that is frozen (SIGSTOP, overloaded) or cut off is logged once, and retried.
"""

from __future__ import annotations

__all__: list[str] = []  # internal: Worker is the public face

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import redis.asyncio
import redis.exceptions

from .control import Control, Outage, Settings
from .keys import QueueKeys
from .queue import Queue, _out_of_memory, _text
from .scripts import Script

logger = logging.getLogger("course_lib.distributed.worker")


class Group:
    """The queue's consumer group, as one worker joins and leaves it."""

    def __init__(self, redis: redis.asyncio.Redis, keys: QueueKeys, settings: Settings) -> None:
        self._redis, self._keys, self._settings = redis, keys, settings

    async def ensure(self) -> None:
        """Create the group (and the stream), unless it exists."""
        try:
            # From id 0, not $: entries enqueued before any worker existed are jobs too.
            await self._redis.xgroup_create(self._keys.stream, self._keys.group, id="0",
                                            mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return
            # Out of memory, Redis refuses the create before it would find the group:
            # a worker restarting then must not fail when there is nothing to create.
            if not _out_of_memory(exc) or not await self._exists():
                raise

    async def _exists(self) -> bool:
        try:
            groups = await self._redis.xinfo_groups(self._keys.stream)
        except redis.exceptions.ResponseError:  # no such stream
            return False
        return any(_text(group["name"]) == self._keys.group for group in groups)

    async def leave(self) -> None:
        """Delete this consumer from the group when it holds nothing (tidy XINFO output)."""
        s, keys = self._settings, self._keys
        try:
            async with asyncio.timeout(s.cancel_timeout_s):  # Redis may not answer
                mine = await self._redis.xpending_range(keys.stream, keys.group, "-", "+", 1,
                                                        consumername=s.name)
                if not mine:
                    await self._redis.xgroup_delconsumer(keys.stream, keys.group, s.name)
        except TimeoutError:  # said: a stop that takes this long should say why
            logger.warning("worker %s: Redis did not answer within %s s; this consumer "
                           "stays in the group (reaped later, once idle)", s.name,
                           s.cancel_timeout_s)
        except Exception as exc:
            logger.debug("worker %s: could not leave the group: %r", s.name, exc)


class Maintenance:
    """Moves due jobs (retries, delayed jobs) back into the stream; reaps idle consumers."""

    def __init__(self, queue: Queue, settings: Settings, control: Control, outage: Outage,
                 forget_script: Script, *, answer_timeout_s: float) -> None:
        self._queue, self._redis, self._keys = queue, queue.redis, queue.keys
        self._settings, self._control, self._outage = settings, control, outage
        self._forget_script = forget_script
        self._answer_timeout_s = answer_timeout_s
        self._nudged = asyncio.Event()  # a retry was scheduled, or a stop requested
        self._next_forget = 0.0  # loop time: when to look for consumers to forget

    def nudge(self) -> None:
        """Look at the delayed set now (a retry was scheduled, or a stop requested)."""
        self._nudged.set()

    async def run(self) -> None:
        """Move due jobs back to the stream, in time for each, until a stop request."""
        failures = 0
        while not self._control.requested.is_set():
            self._nudged.clear()  # before reading the delayed set: a later nudge is kept
            try:
                while await self._answered(self._queue.move_due(limit=100)) == 100:
                    pass
                wait_s = self._settings.maintenance_s
                soonest = await self._answered(
                    self._redis.zrange(self._keys.delayed, 0, 0, withscores=True))
                if soonest:  # wake for the next retry, not at the next tick only
                    wait_s = min(wait_s, max(0.0, soonest[0][1] - time.time()))
                if asyncio.get_running_loop().time() >= self._next_forget:
                    await self._forget_idle_consumers()
                failures = 0
                self._outage.up()
            except Exception as exc:
                failures += 1
                await self._outage.after_error(exc, failures, "maintaining")
                continue
            await self._control.sleep(wait_s, self._nudged)

    async def _forget_idle_consumers(self) -> None:
        """Delete the consumers idle over ``idle_consumer_s`` that hold nothing: crashed workers'.

        A stopped worker leaves the group (``Group.leave``); one that crashed stays in it
        for ever otherwise, listed by XINFO and counted by ``stats``. Runs at start and
        every tenth of ``idle_consumer_s`` (at least every ``maintenance_s``). One that
        holds entries stays (deleting a consumer drops its pending entries: those jobs
        would never run): its entries are reclaimed first, then it goes. Never this
        worker. A live worker deleted all the same (no read for that long) is created
        again by its next read, as at its first.
        """
        s, keys = self._settings, self._keys
        loop = asyncio.get_running_loop()
        self._next_forget = loop.time() + max(s.maintenance_s, s.idle_consumer_s / 10)
        try:
            rows = await self._redis.xinfo_consumers(keys.stream, keys.group)
        except redis.exceptions.ResponseError as exc:
            if "NOGROUP" in str(exc) or "no such key" in str(exc):
                return  # nothing to forget; the reader recreates the group
            raise
        idle_ms = s.idle_consumer_s * 1000
        names = [row["name"] for row in rows if int(row["pending"]) == 0
                 and int(row["idle"]) >= idle_ms and _text(row["name"]) != s.name]
        if not names:
            return
        gone = await self._forget_script(keys=[keys.stream], args=[keys.group, *names])
        for name in gone:
            logger.info("worker %s: consumer %s left the group: idle over %s s, holding "
                        "nothing (a crashed worker's)", s.name, _text(name), s.idle_consumer_s)

    async def _answered(self, command: Coroutine[Any, Any, Any]) -> Any:
        """``await command``, or _NoAnswer after ``answer_timeout_s`` (the command cancelled)."""
        try:
            async with asyncio.timeout(self._answer_timeout_s) as scope:
                return await command
        except TimeoutError:
            if scope.expired():
                raise _NoAnswer(f"Redis not answering within {self._answer_timeout_s:g} s "
                                "(stopped, overloaded or cut off?)") from None
            raise


class _NoAnswer(redis.exceptions.TimeoutError):
    """A command took longer than ``answer_timeout_s``: handled as Redis being away."""
