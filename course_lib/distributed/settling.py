"""The settler: sends the settles of one turn of the event loop (or more) in one SETTLE call.

    settler = Settler(redis, keys, settings, control, script, on_settled=runner.settled)
    settler.add(delivery, job_id, b"done", payload)    # sent with this turn's others
    await settler.close()                               # at stop: those still retrying

``scripts.SETTLE`` acks each entry and writes what follows from its attempt (result,
retry, dead letter, hand-back) in one atomic step, each delivery gated by its own
pending check: a batch sent again after a lost reply writes nothing twice. When the
reader waits for a slot, the same call reads new entries for the slots it frees
(``Reader.read_with_settle``). See the docstring of ``worker`` for why it is safe.
"""

from __future__ import annotations

__all__: list[str] = []  # internal: Worker is the public face

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis.asyncio

from .control import REDIS_DOWN, Control, Settings, cancel_until_done, refused_for_now
from .job import JobStatus
from .keys import QueueKeys
from .queue import _text
from .scripts import Script

if TYPE_CHECKING:
    from .reader import Reader
    from .running import Delivery

logger = logging.getLogger("course_lib.distributed.worker")

# A settle waiting to be sent: its 2 keys, its arguments, and its delivery.
_Settle = tuple[list[Any], list[Any], "Delivery"]

# SETTLE calls in flight at once. Jobs that end meanwhile wait for one to return, and
# the next call carries them all: under load a call settles more jobs (fewer calls, less
# CPU per job); idle, a job's settle leaves at once. With the pace-bounded read-ahead at
# concurrency 10: 39 µs/job of client CPU with two in flight, 46 with no limit; one in
# flight ran concurrency 100 at 0.93x the jobs/s of the code before, where a turn's
# settles fill a call by themselves (benchmarks/results/queue_throughput.md).
# ``_in_flight`` counts calls begun; a task cancelled before its first step (at an abort)
# never counts down, but nothing is sent after an abort.
IN_FLIGHT = 2


class Settler:
    """Gathers the settles of a turn and sends them in one call, retried while Redis is away."""

    def __init__(self, redis: redis.asyncio.Redis, keys: QueueKeys, settings: Settings,
                 control: Control, script: Script,
                 on_settled: Callable[[list[Delivery]], None]) -> None:
        self.script = script
        self.reader: Reader | None = None  # reads with a settle when it waits for slots
        self._redis, self._keys, self._settings, self._control = redis, keys, settings, control
        self._on_settled = on_settled  # done, given up or cancelled: their slots are free
        # keys.job("") and keys.done(""), UTF-8: + a job id, the keys of its record and
        # token. Arguments go to redis-py as bytes in the per-job paths: it packs those
        # about twice as fast as str.
        self._job_key, self._done_key = keys.job("").encode(), keys.done("").encode()
        self._stream = keys.stream.encode()
        self._settles: list[_Settle] = []  # settles of this turn, not sent yet
        self._sending: set[asyncio.Task[None]] = set()  # settles being sent
        self._in_flight = 0

    def add(self, d: Delivery, job_id: str | None, kind: str | bytes, *args: Any) -> None:
        """Settle a delivery: sent with the others of this turn, in one call (or, while
        ``IN_FLIGHT`` calls are out, with all that end before one returns); never raises.

        ``kind`` and ``args`` as the SETTLE script reads them: ``"done", result``;
        ``"ack"``; ``"end"``, ``"retry"``, ``"back"`` or ``"bury"`` with the record's
        and the letter's arguments, each list preceded by its length. The delivery
        keeps its slot until the settle is done (or given up: then the entry stays
        pending, and is reclaimed). Nothing cancels it, once queued.
        """
        d.settling = True
        if job_id is None:
            keys: list[Any] = [self._stream, self._stream]
        else:
            key = job_id.encode()
            keys = [self._job_key + key, self._done_key + key]
        self._settles.append((keys, [d.entry_id.encode(), kind, *args], d))
        if len(self._settles) == 1 and self._in_flight < IN_FLIGHT:
            self._spawn()

    def _spawn(self) -> None:
        # The task's first step runs after the callbacks already scheduled: the
        # other jobs that end in this turn of the event loop add theirs first.
        self._in_flight += 1
        task = asyncio.create_task(self._send(), name=f"{self._settings.name} settle")
        self._sending.add(task)  # held until it ends: stop() waits for it
        task.add_done_callback(self._sending.discard)

    async def _send(self) -> None:
        batch, self._settles = self._settles, []
        try:
            if batch:
                await self._settle_many(batch)
        finally:  # done, given up or cancelled: the slots are free again
            self._in_flight -= 1
            if batch:
                self._on_settled([d for _, _, d in batch])
            if self._settles and self._in_flight < IN_FLIGHT:
                self._spawn()

    async def _settle_many(self, batch: list[_Settle]) -> list[int | None]:
        """One run of the settle script for ``batch``, retried while Redis is away or
        refuses it for now (out of memory without ``allow-oom``, scripts flushed).

        Sent again after an error, a batch settles nothing twice: each delivery is
        gated by its XACK. An error that is not an outage (a key of the wrong type)
        is retried one delivery at a time, so that one does not hold back the rest.
        """
        s = self._settings
        keys = [self._keys.stream, self._keys.delayed, self._keys.dead]
        args = [self._keys.group, max(1, round(s.result_ttl_s * 1000)), repr(time.time()),
                s.max_dead_letters or 0]
        for k, a, _ in batch:
            keys += k
            args += a
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + s.visibility_timeout_s
        failures = 0
        reader = self.reader
        read = 0 if reader is None else reader.prefetch_count(len(batch))  # first try only
        while True:
            try:
                if read:
                    assert reader is not None
                    codes = await reader.read_with_settle(self.script, keys, args, read)
                else:
                    codes = await self.script(keys=keys, args=args)
                return [int(code) for code in codes]
            except Exception as exc:
                # Refused for now: out of memory on a server that cannot run SETTLE
                # with allow-oom (before Redis 7), or scripts flushed again and again.
                if not (isinstance(exc, REDIS_DOWN) or refused_for_now(exc)):
                    if len(batch) > 1:
                        logger.error("worker %s: settling %d entries failed (%r); settling "
                                     "them one at a time", s.name, len(batch), exc)
                        return [code for one in batch for code in await self._settle_many([one])]
                    if await self._lost_with_stream(batch[0], exc):
                        return [None]
                    logger.exception("entry %s: settle failed; it stays pending",
                                     _text(batch[0][1][0]))
                    return [None]
                read = 0
                failures += 1
                if loop.time() >= give_up_at:
                    for _, a, _ in batch:
                        logger.error("entry %s: could not settle it for %s s (%r); it stays "
                                     "pending and will be reclaimed", _text(a[0]),
                                     s.visibility_timeout_s, exc)
                    return [None] * len(batch)
                await asyncio.sleep(s.reconnect_delay_s(failures))

    async def _lost_with_stream(self, settle: _Settle, exc: Exception) -> bool:
        """Record the job dead when its settle failed because the stream key was replaced.

        Its entry went with the old stream: nothing is left to ack, reclaim, retry
        into or hand back to, and without this the record would say "running" for
        ever. Recorded dead (its waiters woken), with the reason, in one line of log;
        a requeue runs it again. False when the stream is a stream (another failure).
        """
        if "WRONGTYPE" not in str(exc):
            return False
        try:
            if _text(await self._redis.type(self._keys.stream)) == "stream":
                return False  # another key of the settle was the wrong type
            keys, _, d = settle
            reason = (f"its stream key {self._keys.stream!r} was replaced by another type "
                      "while it ran: the entry went with it")
            logger.warning("entry %s: %s; job %s recorded dead", d.entry_id, reason,
                           d.job.id if d.job else "(none)")
            if d.job is None:
                return True
            ttl_ms = max(1, round(self._settings.result_ttl_s * 1000))
            async with self._redis.pipeline(transaction=True) as pipe:  # as SETTLE's notify()
                pipe.hset(keys[0], mapping={"status": JobStatus.DEAD.value, "reason": reason,
                                            "finished_at": repr(time.time())})
                pipe.pexpire(keys[0], ttl_ms)
                pipe.lpush(keys[1], "done")
                pipe.pexpire(keys[1], ttl_ms)
                pipe.publish(keys[1], "done")
                await pipe.execute()
        except Exception as again:
            logger.warning("entry %s: its stream key was replaced; recording its job dead "
                           "failed too (%r)", _text(settle[1][0]), again)
        return True

    def drop(self) -> None:
        """At an abort: settle nothing more (what is queued or being sent stays pending)."""
        self._settles.clear()  # first: a send that ends sends nothing more
        for task in list(self._sending):
            task.cancel()

    async def close(self) -> None:
        """Wait ``cancel_timeout_s`` for settles still running, then cancel them.

        A settle cut short leaves its entry pending: reclaimed later, nothing lost.
        """
        s = self._settings
        loop = asyncio.get_running_loop()
        until = loop.time() + s.cancel_timeout_s
        while self._sending and loop.time() < until:  # one that ends may send the next
            await asyncio.wait(set(self._sending), timeout=until - loop.time())
        if self._sending:
            logger.error("worker %s: %d settles still retrying at stop; their entries stay "
                         "pending for reclaim", s.name, len(self._sending) + len(self._settles))
            self._settles.clear()  # first: a send cancelled now sends nothing more
            left = await cancel_until_done(set(self._sending), s.cancel_timeout_s)
            if left:
                logger.error("worker %s: %d tasks ignore cancellation: %s", s.name,
                             len(left), sorted(t.get_name() for t in left))
