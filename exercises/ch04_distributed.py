"""Chapter 4: a distributed task queue that loses nothing.

Edit the code below, then run ``check("4.1")`` ... ``check("4.4")`` in
notebooks/04_distributed_queue.ipynb.
"""

from __future__ import annotations

__all__ = ["Decision", "ack", "apply_payment", "claim", "consume", "decide", "entries"]

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal, NamedTuple

import redis.asyncio


async def claim(redis: redis.asyncio.Redis, source: str, processing: str, n: int) -> list[bytes]:
    """Exercise 4.1: take up to ``n`` jobs from a list, atomically, without losing any.

        await redis.rpush("jobs", b"a", b"b", b"c")
        await claim(redis, "jobs", "jobs:processing", 2)   # [b'a', b'b']
        await ack(redis, "jobs:processing", b"a")          # True: 'a' is done

    Jobs are pushed at the right end of the list ``source`` (RPUSH) and taken from its
    left end, oldest first. Return the jobs taken, in that order, as the client gives
    them (bytes).

    - Each job taken moves to the list ``processing`` in one atomic step: at every
      moment it is in ``source`` or in ``processing``, never in neither (a worker that
      dies right after a command would lose it) and never in both. It stays in
      ``processing`` until ``ack()``: if the worker dies, someone can find it there
      and put it back.
    - Any number of workers may claim from the same list at the same time, each with
      its own connection, their commands interleaved in any order: no job is ever
      given to two of them, and none is lost. (The article's LRANGE then LTRIM fails
      both: two workers read the same jobs, then both trim, dropping jobs nobody read.)
    - Fewer than ``n`` jobs left: take what there is. None (or no such list): ``[]``.
    - ``n`` below 1: ValueError, and nothing moves.
    """
    raise NotImplementedError("Exercise 4.1: claim and ack")


async def ack(redis: redis.asyncio.Redis, processing: str, job: bytes) -> bool:
    """Exercise 4.1: the job is done: remove it from ``processing``.

    Remove one copy of ``job`` (the same job may have been pushed twice: the other
    copy is still to be done). True if it was there, False if not (acked already).
    """
    raise NotImplementedError("Exercise 4.1: claim and ack")


class Decision(NamedTuple):
    """What to do with a job once an attempt has ended (given: do not change it).

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
    """Exercise 4.2: settle an attempt: ack it, retry it later, fail it, or give up on it.

        decide(1, 3, None, retry_on=(ConnectionError,))              # Decision('ack', 0.0, '')
        decide(2, 3, ConnectionError("reset"), retry_on=(OSError,))  # Decision('retry', 2.0, ...)
        decide(3, 3, ConnectionError("reset"), retry_on=(OSError,))  # Decision('dead', 0.0, ...)
        decide(1, 3, KeyError("user"), retry_on=(OSError,))         # Decision('failed', 0.0, ...)

    ``attempt`` is the number of the attempt that just ended (the first is 1), out of
    ``max_attempts``; ``error`` is what it raised, or None if it returned. ``retry_on``
    is required, as in chapter 2's ``retry()``: the caller names the errors that are
    transient (the worker passes the task's). A pure function: no Redis, no clock, no
    randomness. The four actions are the library's outcomes (``JobStatus`` in
    course_lib/distributed/job.py): ``"ack"`` DONE, ``"retry"``, ``"failed"`` FAILED
    (an answer for the caller, no dead letter), ``"dead"`` DEAD (a dead letter).

    - No error: ``"ack"``.
    - An error that is an instance of one of ``retry_on`` (a subclass counts, as with
      ``except``), with attempts left: ``"retry"``, after
      ``min(max_s, base_s * 2 ** (attempt - 1))`` seconds: base_s after the first
      failure, then twice as long each time, never more than max_s, however late the
      attempt (no OverflowError). No jitter here: the chapter's worker adds it.
    - The same error on the last attempt (``attempt >= max_attempts``): ``"dead"``:
      worth retrying, but out of attempts, so a human should look (a dead letter).
    - An error that is not retried: ``"failed"`` at once, whatever attempts are left:
      retrying a bad input fails the same way, and the caller gets the error.
    - ``delay_s`` is 0 unless the action is ``"retry"``. For "retry", "failed" and
      "dead" the reason names the error's type (``type(error).__name__``), so that the
      logs, the caller and the dead letter say what went wrong.
    - An error that is not an Exception (CancelledError, KeyboardInterrupt,
      SystemExit) is never settled, whatever ``retry_on`` says: a cancelled job is
      handed back to the queue, as it is, by the code that was cancelled. Raise
      TypeError.
    - ``attempt`` or ``max_attempts`` below 1: ValueError.
    """
    raise NotImplementedError("Exercise 4.2: decide")


async def apply_payment(
    redis: redis.asyncio.Redis,
    payment_id: str,
    account: str,
    amount: int,
    *,
    ttl_s: int = 86_400,
) -> int:
    """Exercise 4.3: credit a payment exactly once, however many times the job runs.

        await apply_payment(redis, "pay-1", "alice", 100)   # 100
        await apply_payment(redis, "pay-1", "alice", 100)   # 100: pay-1 is applied already
        await apply_payment(redis, "pay-2", "alice", 50)    # 150

    At-least-once delivery means this job may run twice: after a retry, or on two
    workers at the same time once a slow one's job is reclaimed. Make running it
    again harmless.

    - The balance of ``account`` is the integer at the key ``balance:<account>``
      (missing: 0). Add ``amount`` to it, once per ``payment_id``, and remember that
      the payment is applied under the key ``applied:<payment_id>``.
    - Return the account's balance after the call, as an int. A payment applied
      already changes nothing: return the balance as it is.
    - Any number of runs of the same payment, at the same time on different
      connections, add ``amount`` once. A run cut short after any command (the
      worker died), then run again, adds it once: never zero times, never twice.
      Checking first (GET) and adding after (INCRBY) does neither.
    - ``applied:<payment_id>`` expires after ``ttl_s`` seconds (a redelivery comes
      long before that; the record must not fill Redis forever). The balance never
      expires.
    """
    raise NotImplementedError("Exercise 4.3: apply_payment")


def entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """The ``(entry_id, fields)`` pairs of an XREADGROUP reply, in order (given: use it).

        entries(await redis.xreadgroup("workers", "w1", {"jobs": ">"}, count=2))
        # [(b'1-0', {b'n': b'0'}), (b'2-0', {b'n': b'1'})]; [] when nothing came

    XAUTOCLAIM's reply is ``[next_start_id, [(entry_id, fields), ...], deleted_ids]``:
    its second item is that list already.
    """
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
    """Exercise 4.4: the consumer loop: read, handle, ack; take over a dead consumer's entries.

        stop = asyncio.Event()
        await redis.xgroup_create("jobs", "workers", id="0", mkstream=True)
        acked = await consume(redis, "jobs", "workers", "w1", handle, stop=stop)

    ``consumer`` is this consumer's name in ``group`` (which exists already) on
    ``stream``. ``await handle(entry_id, fields)`` handles one entry, one at a time.
    Return the number of entries acked, once ``stop`` is set and the loop has ended.

    - First, the entries this consumer was given before (it crashed and was restarted
      under the same name) and never acked: ``">"`` never returns them again. Read them
      with ``XREADGROUP ... STREAMS stream 0``, ``count`` at a time, and handle them;
      then go on from the last id you got (not from 0: an entry whose handler fails
      stays pending, and would come back at once, for ever).
    - Then, until ``stop`` is set, each turn: take over up to ``count`` entries idle for
      ``min_idle_ms`` or more (``XAUTOCLAIM``, from ``0-0``: their consumer died, or
      their handler failed) and handle them; then read up to ``count`` new ones
      (``XREADGROUP ... COUNT count BLOCK block_ms STREAMS stream >``) and handle them.
    - Ack an entry (``XACK``) only once its ``handle()`` has returned: acked earlier, a
      crash loses it. If ``handle()`` raises an Exception, leave the entry pending (it
      is retried when reclaimed, after ``min_idle_ms``) and go on with the next. A
      cancellation is no Exception: let it propagate (the entry stays pending).
    - ``stop`` is seen within one ``block_ms``: check it before each read; once set,
      read nothing more, finish the entries already read, and return. ``count`` or
      ``block_ms`` below 1: ValueError, before any command (``BLOCK 0`` waits for ever
      on an idle stream).
    - Two consumers at once never handle an entry twice unless one crashed: a live
      consumer's entries are never idle for ``min_idle_ms``.
    """
    raise NotImplementedError("Exercise 4.4: consume")
