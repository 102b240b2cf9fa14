"""One listener per Queue wakes every ``result()`` waiting on it, on two connections.

    listener = ResultListener(redis, QueueKeys("images"), "<Queue 'images'>")
    record = await listener.wait("resize-42", timeout_s=30)   # the job's final record

A worker ends a job in one script (``scripts.SETTLE``): final record, token, and a
PUBLISH on the job's done key. The listener holds ONE pub/sub connection,
PSUBSCRIBEd to the done keys of its queue, and reads records in pipelined batches
on one pooled connection at a time. A blocking read per waiter held a pooled
connection each, and redis-py 8's pool raises MaxConnectionsError past 100 in use.

No lost wake-up: a waiter's record is first read only once the subscription is
confirmed, so a job that ends after that read publishes to us, and one that ended
before shows final in the read. redis-py resubscribes by itself after a reconnect
(when the client retries): publishes sent in between are lost, so each
confirmation after the first reads every waiter's record again.

It runs while someone waits: started by the first waiter, stopped (its task
awaited) when the last one leaves, returned, timed out or cancelled, or when the
Queue closes (the waiters then raise QueueClosed). When Redis fails under it
(after the client's own retries, if it has any), every waiter raises a
ConnectionError naming its job; the job goes on, and a new ``result()`` starts a
new listener. The cost: while anyone waits, every job of the queue that ends
sends this listener one small message, waited for or not.

On a Redis Cluster (a ``RedisCluster`` client, ``connect("redis+cluster://...")``)
the same code runs: redis-py's cluster pub/sub opens the subscription on the master
that owns the pattern's slot (its hash tag is the queue's: the queue's own master),
and the scripts' PUBLISH reaches it whichever node runs them, since classic pub/sub
is broadcast over the cluster bus (every node carries every message: the price of
not needing Redis 7's sharded SPUBLISH). The records are read through the cluster
client. If that master fails, the waiters raise ConnectionError, as for one server.
"""

from __future__ import annotations

__all__ = ["QueueClosed", "ResultListener"]

import asyncio
import re
import sys
from typing import Any

import redis.asyncio
import redis.exceptions

from .job import JobNotFound, JobStatus
from .keys import QueueKeys

# Records read per pipelined round trip: large enough that 5,000 waiters cost a few
# round trips, small enough that one reply stays a few hundred KiB.
_READ_BATCH = 500
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


class QueueClosed(RuntimeError):
    """The Queue was closed: it no longer waits for results (the jobs go on)."""


class _Waiter:
    """One ``result()`` call: its job, what was last read, and how it ends."""

    __slots__ = ("job_id", "outcome", "read", "status")

    def __init__(self, job_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.job_id = job_id
        self.read: asyncio.Future[None] = loop.create_future()  # the first read is done
        self.outcome: asyncio.Future[dict[str, str]] = loop.create_future()  # final record
        self.status = ""

    def end(self, record: dict[str, str] | None = None, error: BaseException | None = None
            ) -> None:
        if not self.outcome.done():
            if error is None:
                self.outcome.set_result(record or {})
            else:
                self.outcome.set_exception(error)
        if not self.read.done():
            self.read.set_result(None)


class ResultListener:
    """Wait for jobs of one queue to end, many waiters on one subscription.

        record = await listener.wait(job_id, timeout_s=10)  # JobNotFound, TimeoutError...
        await listener.aclose()                             # waiters raise QueueClosed
    """

    def __init__(self, redis: redis.asyncio.Redis, keys: QueueKeys, owner: str) -> None:
        self._redis = redis
        self._keys = keys
        self._owner = owner
        self._prefix = keys.done("")
        self._waiters: dict[str, set[_Waiter]] = {}
        self._unread: set[str] = set()  # job ids whose record must be read (again)
        self._wake: asyncio.Event | None = None
        self._subscribed = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._reading_alone = False  # a waiter reads its record itself, without the listener

    def __repr__(self) -> str:
        state = "closed" if self._closed else "listening" if self._task else "idle"
        return f"<ResultListener {self._owner} {state} waiters={self.waiting()}>"

    def waiting(self) -> int:
        """How many waiters have read their job's record once and wait for it to end."""
        return sum(w.read.done() and not w.outcome.done()
                   for waiters in self._waiters.values() for w in waiters)

    async def wait(self, job_id: str, timeout_s: float | None = None) -> dict[str, str]:
        """The job's final record; JobNotFound, TimeoutError, QueueClosed or ConnectionError.

        As ``JobHandle.result()`` always did: the first read of the record is not
        cut by ``timeout_s``, so a job that has ended is returned even at 0.
        """
        if self._closed:
            raise QueueClosed(f"{self._owner} is closed: it waits for no job ({job_id!r})")
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        status = ""
        if not self._reading_alone:
            # A job that has ended needs no listener: one read, as before there was
            # one. One such read at a time: a burst of waiters shares the
            # listener's batches instead of taking a connection each.
            self._reading_alone = True
            try:
                reply = await self._redis.hgetall(self._keys.job(job_id))
            finally:
                self._reading_alone = False
            _raise_if_cancel_lost()
            status, record = self._judge(job_id, reply)
            if record is not None:
                return record
            if deadline is not None and deadline <= loop.time():
                raise TimeoutError(f"job {job_id!r} still {status} after {timeout_s} s")
        if self._closed:  # closed during that read
            raise QueueClosed(f"{self._owner} is closed: it waits for no job ({job_id!r})")
        waiter = _Waiter(job_id, loop)
        waiter.status = status
        self._add(waiter)
        try:
            if not status:
                await waiter.read
            if not waiter.outcome.done():
                try:
                    async with asyncio.timeout_at(deadline):
                        await asyncio.shield(waiter.outcome)
                except TimeoutError:
                    if not waiter.outcome.done():
                        raise TimeoutError(f"job {job_id!r} still {waiter.status} after "
                                           f"{timeout_s} s") from None
            return waiter.outcome.result()
        finally:
            if waiter.outcome.done() and not waiter.outcome.cancelled():
                waiter.outcome.exception()  # retrieved, even when we leave by a cancel
            await self._remove(waiter)

    async def aclose(self) -> None:
        """Stop listening; every waiter raises QueueClosed, and so does every later wait."""
        self._closed = True
        self._fail_all(lambda w: QueueClosed(
            f"{self._owner} is closed while waiting for job {w.job_id!r} (the job goes on)"))
        await self._stop()

    # --- waiters come and go ------------------------------------------------------------

    def _add(self, waiter: _Waiter) -> None:
        self._waiters.setdefault(waiter.job_id, set()).add(waiter)
        self._unread.add(waiter.job_id)
        if self._task is None:
            self._wake, self._subscribed = asyncio.Event(), False
            self._task = asyncio.create_task(self._run(), name=f"results of {self._owner}")
        else:
            self._wake.set()  # type: ignore[union-attr]

    async def _remove(self, waiter: _Waiter) -> None:
        same = self._waiters.get(waiter.job_id)
        if same is not None:
            same.discard(waiter)
            if not same:
                del self._waiters[waiter.job_id]
        if not self._waiters:
            await self._stop()

    async def _stop(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            # Wait for it to close its connections; if this waiter is cancelled
            # meanwhile, the listener still ends on its own: it was cancelled.
            await asyncio.wait({task})

    def _fail_all(self, error_for: Any) -> None:
        waiters = [w for same in self._waiters.values() for w in same]
        self._waiters.clear()
        self._unread.clear()
        for waiter in waiters:
            waiter.end(error=error_for(waiter))

    # --- the listener task ----------------------------------------------------------------

    async def _run(self) -> None:
        pubsub = self._redis.pubsub()
        reader: asyncio.Task[None] | None = None
        try:
            await pubsub.psubscribe(_glob_escape(self._prefix) + "*")
            _raise_if_cancel_lost()
            reader = asyncio.create_task(self._read_messages(pubsub),
                                         name=f"messages of {self._owner}")
            await self._read_records(reader)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            self._give_up(exc, redis.exceptions.ConnectionError)
        except Exception as exc:  # e.g. NOPERM on PSUBSCRIBE: every waiter hears of it
            self._give_up(exc, RuntimeError)
        finally:
            if reader is not None:
                reader.cancel()
                await asyncio.wait({reader})
                if not reader.cancelled():
                    reader.exception()  # already seen through _read_records
            await pubsub.aclose()

    def _give_up(self, exc: Exception, kind: type[Exception]) -> None:
        if self._task is asyncio.current_task():
            self._task = None  # the next wait starts a new listener

        def error_for(waiter: _Waiter) -> Exception:
            error = kind(f"{self._owner} lost Redis while waiting for job {waiter.job_id!r} "
                         f"({type(exc).__name__}: {exc}); the job goes on")
            error.__cause__ = exc
            return error

        self._fail_all(error_for)

    async def _read_messages(self, pubsub: Any) -> None:
        """Mark the jobs whose done key was published to; re-read all on a (re)subscribe."""
        prefix = len(self._prefix)
        while True:
            message = await pubsub.get_message(timeout=None)
            _raise_if_cancel_lost()
            if message is None:  # a health-check reply
                continue
            if message["type"] == "pmessage":
                job_id = _text(message["channel"])[prefix:]
                if job_id in self._waiters:
                    self._unread.add(job_id)
                    self._wake.set()  # type: ignore[union-attr]
            elif message["type"] == "psubscribe":
                self._subscribed = True
                self._unread.update(self._waiters)
                self._wake.set()  # type: ignore[union-attr]

    async def _read_records(self, reader: asyncio.Task[None]) -> None:
        """Read the marked jobs' records in batches, and end the waiters whose job ended."""
        wake = self._wake
        assert wake is not None
        reader.add_done_callback(lambda _: wake.set())
        while True:
            await wake.wait()
            wake.clear()
            if reader.done():
                reader.result()  # it failed (it never returns): raise its error here
            if not self._subscribed:
                continue
            while self._unread:
                job_ids = [j for j in self._unread if j in self._waiters][:_READ_BATCH]
                self._unread.difference_update(job_ids)
                self._unread.intersection_update(self._waiters)
                if not job_ids:
                    break
                async with self._redis.pipeline(transaction=False) as pipe:
                    for job_id in job_ids:
                        pipe.hgetall(self._keys.job(job_id))
                    replies = await pipe.execute(raise_on_error=False)
                _raise_if_cancel_lost()
                for job_id, reply in zip(job_ids, replies, strict=True):
                    self._deliver(job_id, reply)

    def _deliver(self, job_id: str, reply: Any) -> None:
        waiters = self._waiters.get(job_id, ())
        if not waiters:
            return
        try:
            status, record = self._judge(job_id, reply)
        except Exception as exc:  # e.g. WRONGTYPE: this job's waiters only
            return self._end(job_id, error=exc)
        if record is not None:
            return self._end(job_id, record=record)
        for waiter in waiters:
            waiter.status = status
            if not waiter.read.done():
                waiter.read.set_result(None)
        return None

    def _judge(self, job_id: str, reply: Any) -> tuple[str, dict[str, str] | None]:
        """The job's status, and its record if it has ended; JobNotFound when there is none."""
        if isinstance(reply, Exception):
            raise reply
        record = {_text(k): _text(v) for k, v in reply.items()}
        if not record:
            raise JobNotFound(f"no job {job_id!r} on {self._owner} (never enqueued, or its "
                              "result expired)")
        status = JobStatus(record["status"])
        return status.value, record if status.final else None

    def _end(self, job_id: str, *, record: dict[str, str] | None = None,
             error: BaseException | None = None) -> None:
        for waiter in self._waiters.pop(job_id, ()):
            # One exception object per waiter: each raises it in its own task.
            waiter.end(record, None if error is None else _copy(error))


def _copy(error: BaseException) -> BaseException:
    try:
        copy = type(error)(*error.args)
    except Exception:
        return error
    copy.__cause__ = error.__cause__
    return copy


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a PSUBSCRIBE pattern (a custom prefix may hold ``*``)."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _raise_if_cancel_lost() -> None:
    """Raise CancelledError when this task was cancelled but the cancel never arrived.

    On Python 3.11, redis-py sends each command through ``asyncio.wait_for`` when the
    client has a ``socket_timeout`` (fakeredis's clients have one), and 3.11's
    ``wait_for`` swallows a cancel that lands once the send is done (fixed in 3.12):
    a loop of commands can then ignore ``cancel()`` for good. ``cancelling()`` still
    counts the request, so code that must stop when told checks it after a command.
    """
    if sys.version_info < (3, 12):
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
