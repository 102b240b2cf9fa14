"""The reader: fills free slots from dead workers' entries (reclaim), then from new ones.

    slots = Slots(concurrency, control, read_ahead, min_ahead=batch_size)
    reader = Reader(redis, keys, settings, control, outage, slots, runner, counts)
    await reader.run()              # the read loop, until a stop request
    reader.prefetch_count(n)        # the Settler asks: read with this settle? how many

A slot is an entry the worker may hold: ``concurrency`` to run, and ``read_ahead``
more, read and marked running ahead (the runner starts them as tasks end), as many of
those as the jobs' pace makes worth it (``Slots.room``). It reads ``XREADGROUP ...
COUNT <room>``: never more than the free slots. When every slot is taken and the
reader waits for one, a settle reads the next entries in the same round trip
(``read_with_settle``), for the slots it frees.
"""

from __future__ import annotations

__all__: list[str] = []  # internal: Worker is the public face

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import redis.asyncio

from .control import AHEAD_S, PACE_WINDOW_S, Control, Outage, Settings
from .keys import QueueKeys
from .queue import _text
from .scripts import Script

if TYPE_CHECKING:
    from .running import _Running

logger = logging.getLogger("course_lib.distributed.worker")

# What the runner starts: (entry id, fields, why it is poison or None).
_Batch = list[tuple[str, Any, str | None]]


class Slots:
    """A slot per entry held (``concurrency + read_ahead``): the reader takes them, a job's
    end (its settle) frees one.

    Read-ahead keeps up with the pace: of its ``read_ahead`` slots, the reader takes
    only ``ahead`` (``room``), as many as the worker starts in ``AHEAD_S`` at the pace of
    its last ``PACE_WINDOW_S``, one batch at least. Short jobs get the whole read-ahead
    (a batch never waits on a round trip); jobs of 10 ms or more, one batch, so that a
    worker does not hoard entries an idle one could run.
    """

    def __init__(self, concurrency: int, control: Control, read_ahead: int = 0,
                 min_ahead: int = 0) -> None:
        self.free = concurrency + read_ahead
        self.read_ahead = read_ahead
        self.ahead = self._min_ahead = min(min_ahead, read_ahead)  # read ahead allowed now
        self.parked = False  # the reader waits for a free slot
        self._control = control
        self._wake = asyncio.Event()  # a slot was freed, or a stop requested
        self._ends, self._since = 0, -1.0  # jobs ended in the pace window, since when

    @property
    def room(self) -> int:
        """Free slots the reader may take now: the read-ahead not allowed at this pace
        stays free."""
        return self.free - (self.read_ahead - self.ahead)

    async def take(self, want: int, *, held: bool = False) -> int:
        """Up to ``want`` slots of the room (``held``: of all free ones, for entries in
        the pending list already), waiting for one; 0 once a stop is requested."""
        requested = self._control.requested
        while (self.free if held else self.room) <= 0 and not requested.is_set():
            self._wake.clear()
            self.parked = True
            try:
                await self._wake.wait()
            finally:
                self.parked = False
        return 0 if requested.is_set() else self.try_take(want, held=held)

    def try_take(self, want: int, *, held: bool = False) -> int:
        taken = max(0, min(want, self.free if held else self.room))  # no await since the check
        self.free -= taken
        return taken

    def release(self, slots: int) -> None:
        if slots:
            self.free += slots
            self._wake.set()

    def ended(self, now: float) -> None:
        """A job ended (loop time ``now``): measure the pace, set ``ahead`` from it."""
        self._ends += 1
        elapsed = now - self._since
        if elapsed < PACE_WINDOW_S:
            return
        if self._since >= 0:
            pace = round(self._ends / elapsed * AHEAD_S)
            ahead = min(self.read_ahead, max(self._min_ahead, pace))
            if ahead > self.ahead:
                self._wake.set()
            self.ahead = ahead
        self._ends, self._since = 0, now

    def drained(self) -> None:
        """The stream looked empty: no backlog to read ahead of. Back to one batch, so a
        worker that was idle does not take a burst of long jobs at the pace of short ones."""
        self.ahead = self._min_ahead
        self._ends, self._since = 0, -1.0  # and the pace is measured afresh

    def wake(self) -> None:
        """Wake the reader if it waits for a slot (a stop request)."""
        self._wake.set()


class Reader:
    """Reads entries into the slots it takes and hands them to the runner to start."""

    def __init__(self, redis: redis.asyncio.Redis, keys: QueueKeys, settings: Settings,
                 control: Control, outage: Outage, slots: Slots, runner: _Running,
                 counts: dict[str, int]) -> None:
        self._redis, self._keys, self._settings = redis, keys, settings
        self._control, self._outage, self._slots, self._runner = control, outage, slots, runner
        self._counts = counts
        self._prefetched: _Batch = []  # read by a settle, not started
        self._prefetching = 0  # settles in flight that read too
        self._prefetch_over = asyncio.Event()
        self._blocking = False  # in a BLOCK read: what a settle read would wait for it
        self._drained = True  # the last read found fewer entries than it asked for
        self._next_reclaim = 0.0  # loop time
        self._claim_cursor = "0-0"

    async def run(self) -> None:
        """Take free slots; fill them from dead workers' entries, then from new ones.

        Reclaiming runs here, not in a loop of its own: the slots a read has taken are
        the only ones, so reclaimed and new entries together never exceed them.
        """
        s, keys, slots, start = self._settings, self._keys, self._slots, self._runner.start
        loop = asyncio.get_running_loop()
        failures = 0
        self._next_reclaim = loop.time()
        while not self._control.requested.is_set():
            if self._prefetched:  # in our pending list already: any free slot
                taken = await slots.take(len(self._prefetched), held=True)
            else:
                taken = await slots.take(s.batch_size + slots.ahead)
            if not taken:
                break
            used = 0
            try:
                if self._prefetched:  # read by a settle, for the slots it freed
                    batch = self._prefetched[:taken]
                    del self._prefetched[:taken]
                    used += await start(batch)
                if used < taken and loop.time() >= self._next_reclaim:
                    self._next_reclaim = loop.time() + s.maintenance_s
                    used += await self._reclaim(taken - used)
                if used < taken and self._prefetching:
                    used += await self._start_when_read(taken - used)
                if used < taken:
                    # BLOCK only once the stream looked drained: a read that does not block
                    # returns at once, so a settle may read meanwhile (prefetch_count).
                    self._blocking = self._drained
                    try:
                        reply = await self._redis.xreadgroup(
                            keys.group, s.name, {keys.stream: ">"}, count=taken - used,
                            block=max(1, round(s.block_s * 1000)) if self._drained else None,
                        )  # fmt: skip
                    finally:
                        self._blocking = False
                    entries = _entries(reply)
                    self._drained = len(entries) < taken - used
                    if self._drained:
                        slots.drained()
                    batch = [(_text(entry_id), fields, None) for entry_id, fields in entries]
                    if self._prefetched:  # older, read by a settle meanwhile: theirs first,
                        extra = slots.try_take(len(self._prefetched), held=True)  # its slots
                        taken += extra
                        batch[:0] = self._prefetched[:extra]
                        del self._prefetched[:extra]
                    if not self._control.aborting:  # else a "crash": they stay in our PEL
                        used += await start(batch)
                self._outage.up(read=True)
                failures = 0
            except Exception as exc:
                failures += 1
                await self._outage.after_error(exc, failures, "reading")
            finally:
                slots.release(taken - used)
        await self._start_prefetched()

    async def _reclaim(self, slots: int) -> int:
        """XAUTOCLAIM up to ``slots`` entries idle past the visibility timeout; how many run."""
        s, keys = self._settings, self._keys
        reply = await self._redis.xautoclaim(
            keys.stream, keys.group, s.name,
            min_idle_time=max(1, round(s.visibility_timeout_s * 1000)),
            start_id=self._claim_cursor, count=slots,
        )  # fmt: skip
        self._claim_cursor = _text(reply[0])
        # Redis 6.2 returns deleted entries with no fields; 7 lists them apart. An
        # entry still running here (our heartbeat failed) is ours already: the claim
        # only reset its idle time.
        holding = self._runner.holding
        claimed = [(_text(i), f) for i, f in reply[1] if f and _text(i) not in holding]
        if not claimed:
            return 0
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in claimed:
                pipe.xpending_range(keys.stream, keys.group, entry_id, entry_id, 1)
            pending = await pipe.execute()
        if self._control.aborting:
            return 0  # a "crash": they stay in our PEL, unrun
        batch: _Batch = []
        for (entry_id, fields), info in zip(claimed, pending, strict=True):
            deliveries = int(info[0]["times_delivered"]) if info else 0
            self._counts["reclaimed"] += 1
            logger.warning("reclaimed entry %s, idle over %s s (delivery %d)", entry_id,
                           s.visibility_timeout_s, deliveries)
            poison = None
            if deliveries > s.max_deliveries:
                poison = (f"delivered {deliveries} times, never settled: it may crash or "
                          "hang the workers that take it")
            batch.append((entry_id, fields, poison))
        return await self._runner.start(batch)

    # --- reading with a settle ---------------------------------------------------------

    def prefetch_count(self, settling: int) -> int:
        """How many new entries a settle of ``settling`` deliveries reads too (0: none).

        A settle frees ``settling`` slots: the same round trip can refill them, the
        settle script reading once it has settled, so the pending list never holds more
        than ``concurrency + read_ahead`` entries (what it read takes the slots it frees,
        at the same moment). Not while the reader waits in a BLOCK read (what the settle
        read would wait for that read to end), nor when stopping or a reclaim is due.
        Otherwise the reader finds them first thing, when it next takes slots.
        """
        if (self._blocking or self._prefetched
                or self._control.requested.is_set()
                or asyncio.get_running_loop().time() >= self._next_reclaim):
            return 0
        slots = self._slots
        return max(0, min(settling, slots.room + settling, self._settings.batch_size + slots.ahead))

    async def read_with_settle(self, settle: Script, keys: list[Any], args: list[Any],
                               count: int) -> Any:
        """``settle``'s reply; and up to ``count`` new entries, read in the same round trip.

        The script reads them itself, after settling, so that nothing is read when the
        settle does not run (see ``scripts.SETTLE``). The entries wait in
        ``_prefetched`` for the reader, which starts them in the slots this settle frees.
        """
        self._prefetching += 1
        try:
            codes, reply = await settle(keys=keys, args=[*args, self._settings.name, count])
        finally:
            self._prefetching -= 1
            self._prefetch_over.set()
        if not self._control.aborting:  # else a "crash": they stay in our PEL, unrun
            self._prefetched += [(_text(i), fields, None) for i, fields in _read_in_script(reply)]
        return codes

    async def _start_when_read(self, slots: int) -> int:
        """Wait for the settle that reads, in flight; start up to ``slots`` of its entries.

        It was sent while the reader waited for a slot, and another settle freed one
        first. Its read may take the last entries of the stream: a BLOCK read now would
        find none and wait ``block_s`` while they sat here, unstarted (chapter 4's chart:
        ``resize(6)`` ~100 ms late). Its reply comes within a round trip; the wait is
        bounded by ``block_s`` all the same, as the read it replaces.
        """
        await self._settled_reads(self._settings.block_s)
        batch = self._prefetched[:slots]
        del self._prefetched[:slots]
        return await self._runner.start(batch) if batch else 0

    async def _settled_reads(self, limit_s: float, *, every: bool = False) -> None:
        """Wait (``limit_s`` at most) for a settle's read in flight to bring entries, or for
        none to be in flight (``every``: for all of them to end)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + limit_s
        while (self._prefetching and (every or not self._prefetched)
               and loop.time() < until):
            self._prefetch_over.clear()  # no await since _prefetching was seen: set later
            await self._control.sleep(until - loop.time(), self._prefetch_over)

    async def _start_prefetched(self) -> None:
        """At stop: start what a last settle read (run in the grace period, or handed back).

        What arrives later, or when Redis is away, stays pending: reclaimed later.
        """
        await self._settled_reads(self._settings.cancel_timeout_s, every=True)
        batch, self._prefetched = self._prefetched, []
        if batch and not self._control.aborting:
            self._slots.free -= len(batch)  # the slots their settle freed
            used = 0
            try:
                used = await self._runner.start(batch)
            except Exception as exc:
                logger.warning("worker %s: %d entries read at stop stay pending (%r)",
                               self._settings.name, len(batch), exc)
            finally:
                self._slots.release(len(batch) - used)


def _entries(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """The entries of an XREADGROUP reply, in RESP2 ([[stream, entries]]) or RESP3 ({})."""
    if not reply:
        return []
    streams = reply.items() if isinstance(reply, dict) else reply
    out = []
    for _, entries in streams:
        out.extend((entry_id, fields or {}) for entry_id, fields in entries)
    return out


def _read_in_script(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """The entries of an XREADGROUP run in a script: [[stream, [[id, [f, v, ...]]]]].

    Fields come as a flat list (a script's reply is not parsed as XREADGROUP's);
    nothing read comes as None. (fakeredis leaves out the outer list.)
    """
    if not reply:
        return []
    streams = reply if isinstance(reply[0], list) else [reply]
    out = []
    for _, entries in streams:
        for entry_id, flat in entries:
            fields = flat or []
            out.append((entry_id, dict(zip(fields[::2], fields[1::2], strict=True))))
    return out
