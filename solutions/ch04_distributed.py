"""Chapter 4: a distributed task queue that loses nothing, solved."""

from __future__ import annotations

__all__ = ["Decision", "ack", "apply_payment", "claim", "consume", "decide", "entries"]

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal, NamedTuple

import redis.asyncio

# One script, so one atomic step for the whole batch: Redis runs a script to the end
# before it serves any other client. Each LMOVE on its own would be atomic too (a
# loop of them in Python is a fine answer); the script saves n - 1 round trips.
_CLAIM = """
local jobs = {}
for i = 1, tonumber(ARGV[1]) do
    local job = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
    if not job then break end
    jobs[i] = job
end
return jobs
"""


async def claim(redis: redis.asyncio.Redis, source: str, processing: str, n: int) -> list[bytes]:
    """Move up to ``n`` jobs, oldest first, from ``source`` to ``processing``; return them.

        await claim(redis, "jobs", "jobs:processing", 2)   # [b'a', b'b']
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n!r}")
    script = redis.register_script(_CLAIM)
    return list(await script(keys=[source, processing], args=[n]))


async def ack(redis: redis.asyncio.Redis, processing: str, job: bytes) -> bool:
    """Remove one copy of ``job`` from ``processing``; False if it was not there."""
    # Count 1, not 0: the same payload pushed twice is two jobs, and one is not done.
    return await redis.lrem(processing, 1, job) == 1


class Decision(NamedTuple):
    """What to do with a job once an attempt has ended.

        Decision("retry", 4.0, "ConnectionError: reset (attempt 3/5 failed)")
    """

    # done / run it again later / failed: an error not worth retrying, answered to the
    # caller (the library's FAILED: no dead letter) / dead: out of attempts, given up on
    # and dead-lettered (the library's DEAD)
    action: Literal["ack", "retry", "failed", "dead"]
    delay_s: float = 0.0  # how long to wait before the next attempt; 0 unless "retry"
    reason: str = ""  # for the logs, the caller and the dead letter; "" is fine for "ack"


def decide(
    attempt: int,
    max_attempts: int,
    error: BaseException | None,
    *,
    retry_on: tuple[type[Exception], ...],
    base_s: float = 1.0,
    max_s: float = 60.0,
) -> Decision:
    """Ack, retry after exponential backoff, fail, or give up on the attempt that just ended.

        decide(2, 3, ConnectionError("reset"), retry_on=(OSError,))  # Decision('retry', 2.0, ...)
    """
    if attempt < 1 or max_attempts < 1:
        raise ValueError(
            f"attempt and max_attempts count from 1, not {attempt!r} and {max_attempts!r}"
        )
    if error is None:
        return Decision("ack")
    if not isinstance(error, Exception):
        # Cancelled (or the process is exiting): the job did not fail, it was stopped.
        # Whoever cancelled it hands it back untouched; a retry would spend an attempt
        # and a dead letter would bury a healthy job.
        raise TypeError(
            f"{type(error).__name__} is not a failure to settle: hand the job back as it is"
        )
    what = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    if not isinstance(error, retry_on):
        # Not worth retrying: an answer for the caller (FAILED), not a dead letter.
        return Decision("failed", 0.0, f"{what} (not retried)")
    if attempt >= max_attempts:
        return Decision("dead", 0.0, f"{what} (gave up after {attempt} attempts)")
    # 2.0 ** 1100 overflows a float: past 1000 doublings the cap has long won anyway.
    delay_s = min(max_s, base_s * 2.0 ** min(attempt - 1, 1000))
    return Decision("retry", delay_s, f"{what} (attempt {attempt}/{max_attempts} failed)")


# SET NX answers "was it applied before?" and records it, in the same step as the
# credit: no other run can slip in between, and a worker dying mid-way leaves either
# nothing done or everything done, never the record without the money.
_APPLY = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2]) then
    return redis.call('INCRBY', KEYS[2], ARGV[1])
end
return tonumber(redis.call('GET', KEYS[2]) or '0')
"""


async def apply_payment(
    redis: redis.asyncio.Redis,
    payment_id: str,
    account: str,
    amount: int,
    *,
    ttl_s: int = 86_400,
) -> int:
    """Add ``amount`` to ``balance:<account>`` once per ``payment_id``; the balance after.

        await apply_payment(redis, "pay-1", "alice", 100)   # 100
        await apply_payment(redis, "pay-1", "alice", 100)   # 100 again: applied already
    """
    script = redis.register_script(_APPLY)
    keys = [f"applied:{payment_id}", f"balance:{account}"]
    return int(await script(keys=keys, args=[amount, ttl_s]))


def entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """The ``(entry_id, fields)`` pairs of an XREADGROUP reply, in order (given)."""
    streams = reply.items() if isinstance(reply, dict) else (reply or [])  # RESP3 / RESP2
    return [(entry_id, fields) for _, found in streams for entry_id, fields in found]


async def consume(
    redis: redis.asyncio.Redis,
    stream: str,
    group: str,
    consumer: str,
    handle: Callable[[bytes, dict[bytes, bytes]], Awaitable[object]],
    *,
    stop: asyncio.Event,
    count: int = 10,
    block_ms: int = 1_000,
    min_idle_ms: int = 30_000,
) -> int:
    """Handle the group's entries, ack each once handled, take over a dead consumer's.

        await consume(redis, "jobs", "workers", "w1", handle, stop=stop)   # 42: acked
    """
    if count < 1 or block_ms < 1:
        raise ValueError(f"count and block_ms must be at least 1, not {count!r}, {block_ms!r}")
    acked = 0

    async def settle(batch: list[tuple[bytes, dict[bytes, bytes] | None]]) -> None:
        nonlocal acked
        for entry_id, fields in batch:
            if fields is None:  # deleted from the stream while pending: nothing to run
                await redis.xack(stream, group, entry_id)
                continue
            try:
                await handle(entry_id, fields)
            except Exception:
                # Left pending: reclaimed after min_idle_ms, by anyone. A cancel (a
                # BaseException) goes on up, and leaves the entry pending too.
                continue
            # Only now: an ack before the handler ends would lose the entry to a crash.
            acked += await redis.xack(stream, group, entry_id)

    # What this consumer was given before a restart, under its name, and never acked:
    # ">" would never return it again. From "0", then past the last one seen, so that
    # an entry whose handler fails does not come back at once.
    after = "0"
    while batch := entries(await redis.xreadgroup(group, consumer, {stream: after}, count=count)):
        await settle(batch)
        after = batch[-1][0]
    while not stop.is_set():
        # Entries idle for min_idle_ms: their consumer died (or its handler failed).
        _, claimed, *_ = await redis.xautoclaim(
            stream, group, consumer, min_idle_time=min_idle_ms, start_id="0-0", count=count
        )
        await settle(claimed)
        if stop.is_set():
            break
        # A finite BLOCK: the loop sees stop within one. BLOCK 0 waits for ever on an
        # idle stream, and cancelling that read instead could strand what Redis has
        # delivered already in our PEL, unseen until reclaimed.
        reply = await redis.xreadgroup(
            group, consumer, {stream: ">"}, count=count, block=block_ms
        )
        await settle(entries(reply))
    return acked
