"""A chapter-4 queue's figures in one bounded round trip, with rates and done/s.

    previous = None
    while True:
        previous = await read_queue_figures(queue, previous, timeout_s=2)
        print(previous.pending, previous.done_per_s, previous.in_flight)
        await asyncio.sleep(1)

``read_queue_figures`` sends one pipeline (XINFO STREAM, ZCARD, XLEN, XINFO GROUPS,
XINFO CONSUMERS) to the Redis of a ``course_lib.distributed.Queue`` and returns a
``QueueSample``:

- ``stream``, ``pending``, ``lag``, ``delayed``, ``dead``, ``consumers``: the counts of
  ``Queue.counts()`` and of ``python -m course_lib.distributed stats``;
- ``in_flight`` and ``idle_s``, per worker (XINFO CONSUMERS): the entries each consumer
  was handed and has not settled, and how long since it last read or claimed. A killed
  worker's idle time grows until another worker reclaims its entries;
- given the ``previous`` sample: ``rates`` (the change per second of the five counts
  in ``RATED``), ``settled``, ``done`` and ``done_per_s`` over the interval between them.

It raises when Redis fails or stays silent past ``timeout_s`` (``TimeoutError``):
the caller decides what an error is (the dashboard draws a line and tries again at the
next sample; pass the last *good* sample as ``previous`` so the rates span the gap). A
stream or group that does not exist yet reads as an empty queue. It creates no task,
imports no IPython and keeps no state: the caller holds ``previous``.

How done/s is counted without a counter in the library. Workers delete each stream
entry when they settle it (XACK + XDEL: done, a retry, a dead letter, or handed back at a
graceful stop), and XINFO STREAM reports ``entries-added``, every entry the stream ever
took in (Redis 7+ and fakeredis). Between two samples, entries added minus the growth of
the stream is the number *settled*. Reclaiming (XAUTOCLAIM) moves an entry between
consumers and counts nowhere, so a dead worker's jobs count once, when another worker
settles them. ``done`` is ``settled`` minus the growth of ``dead`` and of ``delayed``:
exact for a run without retries and hand-backs; a retry scheduled and moved back within
one interval, or a job handed back at a stop, counts as done. Where the server reports no
``entries-added`` (Redis 6.2) ``entries_added``, ``settled`` and ``done`` are None. (The
group's ``entries-read`` looks like the obvious figure, but it may be reported as null
once an entry at or after the group's last delivered one is deleted while older ones
remain, which workers settling out of order do all the time: fakeredis 2.41 then says
null, and a trial of chapter 5's run counted with it found 82 jobs of 150; Redis 7.0.15
went on counting in the same test.)
"""

from __future__ import annotations

__all__ = ["COUNTS", "RATED", "QueueSample", "read_queue_figures"]

import asyncio
import dataclasses
import sys
from typing import Any

COUNTS = ("stream", "pending", "lag", "delayed", "dead", "consumers")  # as `stats` prints them
RATED = COUNTS[:5]  # the counts with a rate; consumers is a head count, no rate


@dataclasses.dataclass(frozen=True, slots=True)
class QueueSample:
    """A queue's figures at one read; the last four are over the interval since ``previous``.

        q = await read_queue_figures(queue, None, timeout_s=2)
        q.pending, q.in_flight          # 5, {'w1': 3, 'w2': 2}
        q.done_per_s                    # None: the first read has no interval

    Counts are entries (jobs); times are seconds. ``settled``, ``done``, ``interval_s``
    and ``rates`` are None for a read without ``previous``; ``settled`` and ``done`` are
    also None when the server reports no ``entries-added`` (see the module's doc).
    """

    stream: int  # entries in the stream: waiting to be delivered, or delivered (pending)
    pending: int  # delivered to a worker, not settled yet (the group's PEL)
    lag: int  # in the stream, not delivered yet
    delayed: int  # retries waiting for their time (the delayed sorted set)
    dead: int  # dead letters (the dead stream's length)
    consumers: int  # workers the group knows, alive or not
    in_flight: dict[str, int]  # consumer -> entries it holds (delivered, unsettled)
    idle_s: dict[str, float]  # consumer -> seconds since it last read or claimed
    entries_added: int | None  # every entry the stream ever took in (XINFO STREAM)
    read_at_s: float  # loop.time() when the read began: only differences mean anything
    settled: int | None = None  # entries that left the stream since ``previous``
    done: int | None = None  # of those, the jobs done (not dead, not delayed)
    interval_s: float | None = None  # seconds since ``previous`` was read
    rates: dict[str, float] | None = None  # count in RATED -> change per second

    @property
    def done_per_s(self) -> float | None:
        """Jobs done per second since ``previous`` (None: not known)."""
        if self.done is None or not self.interval_s:
            return None
        return self.done / self.interval_s

    def as_dict(self) -> dict[str, Any]:
        """Every figure, ``done_per_s`` included, as plain JSON-ready values."""
        return {**dataclasses.asdict(self), "done_per_s": self.done_per_s}


async def read_queue_figures(queue: Any, previous: QueueSample | None = None, *,
                             timeout_s: float = 5.0) -> QueueSample:
    """Read ``queue``'s figures in one pipelined round trip; rates since ``previous``.

    ``queue``: a ``course_lib.distributed.Queue`` (its ``redis`` client and ``keys``).
    ``previous``: the last good sample of the same queue, or None. Raises
    ``TimeoutError`` when Redis has not answered within ``timeout_s`` seconds, and the
    client's error (``redis.exceptions.RedisError``, ``OSError``) when it fails.
    """
    read_at_s = asyncio.get_running_loop().time()
    keys = queue.keys
    try:
        async with asyncio.timeout(timeout_s):
            async with queue.redis.pipeline(transaction=False) as pipe:
                pipe.xinfo_stream(keys.stream)
                pipe.zcard(keys.delayed)
                pipe.xlen(keys.dead)
                pipe.xinfo_groups(keys.stream)
                pipe.xinfo_consumers(keys.stream, keys.group)
                replies = await pipe.execute(raise_on_error=False)
    finally:
        _raise_if_cancel_lost()
    figures = _figures(keys.group, read_at_s, replies)
    return figures if previous is None else _since(previous, figures)


def _figures(group_name: str, read_at_s: float, replies: list[Any]) -> QueueSample:
    stream, delayed, dead, groups, consumers = (_ok(r) for r in replies)
    stream_len = int(stream["length"]) if stream else 0
    added = stream.get("entries-added") if stream else 0  # no stream yet: nothing added
    group = next((g for g in groups or [] if _text(g.get("name")) == group_name), None)
    pending = n_consumers = 0
    lag: int | None = None
    if group is not None:
        pending, n_consumers = int(group["pending"]), int(group["consumers"])
        lag = group.get("lag")
    if lag is None:  # as Queue.counts(): what is left and not pending is not delivered yet
        lag = max(0, stream_len - pending)
    in_flight = {_text(c["name"]): int(c["pending"]) for c in consumers or []}
    idle_s = {_text(c["name"]): int(c.get("idle") or 0) / 1000 for c in consumers or []}
    return QueueSample(
        stream=stream_len, pending=pending, lag=int(lag), delayed=int(delayed),
        dead=int(dead), consumers=n_consumers, in_flight=dict(sorted(in_flight.items())),
        idle_s=dict(sorted(idle_s.items())),
        entries_added=None if added is None else int(added), read_at_s=read_at_s)


def _since(prev: QueueSample, now: QueueSample) -> QueueSample:
    """``now`` with its rates, settled and done over the interval since ``prev``."""
    interval_s = max(now.read_at_s - prev.read_at_s, 1e-9)
    rates = {k: (getattr(now, k) - getattr(prev, k)) / interval_s for k in RATED}
    settled = done = None
    if now.entries_added is not None and prev.entries_added is not None:
        # Settled entries are deleted: what came in minus what the stream grew by.
        settled = (now.entries_added - prev.entries_added) - (now.stream - prev.stream)
        done = max(0, settled - max(0, now.dead - prev.dead)
                   - max(0, now.delayed - prev.delayed))
    return dataclasses.replace(now, settled=settled, done=done, interval_s=interval_s,
                               rates=rates)


def _raise_if_cancel_lost() -> None:
    # On 3.11 redis-py sends commands through asyncio.wait_for when the client has a
    # socket_timeout, and 3.11's wait_for can swallow a cancel that lands once the
    # command is sent (fixed in 3.12): cancelling() still counts it, so stop here.
    if sys.version_info < (3, 12):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError


def _ok(reply: Any) -> Any:
    """A pipeline reply; a missing stream or group reads as empty, other errors raise."""
    if isinstance(reply, Exception):
        text = str(reply)
        if "no such key" in text or "NOGROUP" in text:
            return None
        raise reply
    return reply


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)
