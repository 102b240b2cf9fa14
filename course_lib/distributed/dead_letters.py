"""The dead-letter stream from the client side: read the letters, requeue their jobs.

    letters = await queue.dead_letters(count=10)       # [DeadLetter(...), ...]
    report = await queue.requeue_dead(["1712345678901-0"])
    report.requeued, report.refused                    # by dead-letter entry id

``Queue`` holds one ``DeadLetters`` and its ``dead_letters()`` and ``requeue_dead()``
hand over to it; the worker writes the letters (``scripts.SETTLE``, ``running``).
"""

from __future__ import annotations

__all__ = ["DeadLetter", "DeadLetters", "RequeueReport"]

import dataclasses
import re
import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio

from .job import InvalidJob, Job
from .keys import QueueKeys
from .registry import TaskRegistry
from .replies import _bytes, _escaped, _name, _text, _unprefixed

# A full stream entry id. A bare "1712345678901" would be read by XRANGE as a range
# (every entry of that millisecond) but by XDEL as "1712345678901-0".
_ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")


@dataclasses.dataclass(frozen=True, slots=True)
class DeadLetter:
    """One entry of the dead-letter stream: why it died, and the original entry."""

    entry_id: str  # in the dead-letter stream
    reason: str
    error_type: str
    error: str
    origin_id: str  # the entry's id in the main stream
    worker: str
    dead_at: float
    job: bytes | None  # the original ``job`` field, as it was (None: it had none)
    # The original entry's other fields, if any. A name that is not UTF-8 stays
    # bytes: the entry as it was (a replacement character would lose which bytes).
    extra: dict[str | bytes, bytes]

    def extra_text(self) -> dict[str, str]:
        """``extra`` fit to print: bytes that are not UTF-8 escaped (``\\xff``), in names too."""
        return {_escaped(name): _escaped(value) for name, value in self.extra.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class RequeueReport:
    """What ``Queue.requeue_dead`` did, by dead-letter entry id.

        report = await queue.requeue_dead()
        report.requeued   # {'1712345678901-0': 'resize-42'}: entry id -> job id
        report.refused    # {'1712345678902-0': "invalid job: not JSON (...)"}: still dead
    """

    requeued: dict[str, str]
    refused: dict[str, str]  # entry id -> why; these stay in the dead-letter stream

    @property
    def ok(self) -> bool:
        """True when nothing was refused."""
        return not self.refused


class DeadLetters:
    """One queue's dead-letter stream: what ``Queue.dead_letters`` and ``requeue_dead`` do.

        dead = DeadLetters(redis, QueueKeys("images"), redis.register_script(REQUEUE_DEAD))
        await dead.letters(count=10)
        await dead.requeue(None, count=100, registry=None)
    """

    def __init__(self, redis: redis.asyncio.Redis, keys: QueueKeys, requeue_script: Any
                 ) -> None:
        self.redis = redis
        self.keys = keys
        self._requeue = requeue_script

    async def letters(self, count: int = 100) -> list[DeadLetter]:
        """The oldest ``count`` entries of the dead-letter stream."""
        entries = await self.redis.xrange(self.keys.dead, count=count)
        letters = []
        for entry_id, fields in entries:
            named = {_name(k): v for k, v in fields.items()}
            meta = {k: _text(named.pop(k, b"")) for k in
                    ("reason", "error_type", "error", "origin_id", "worker", "dead_at")}
            job = named.pop("job", None)
            extra = {_unprefixed(k): v for k, v in named.items()}
            letters.append(DeadLetter(
                entry_id=_text(entry_id), reason=meta["reason"], error_type=meta["error_type"],
                error=meta["error"], origin_id=meta["origin_id"], worker=meta["worker"],
                dead_at=float(meta["dead_at"] or 0), job=_bytes(job), extra=extra,
            ))  # fmt: skip
        return letters

    async def requeue(self, entry_ids: Iterable[str] | None, *, count: int,
                      registry: TaskRegistry | None) -> RequeueReport:
        """Put dead jobs back in the stream (see ``Queue.requeue_dead``); say which."""
        if isinstance(entry_ids, str):
            entry_ids = [entry_ids]
        if entry_ids is None:
            found = await self.redis.xrange(self.keys.dead, count=count)
            letters = [(_text(entry_id), fields) for entry_id, fields in found]
        else:
            letters = await self._entries(list(dict.fromkeys(entry_ids)))
        outcome: dict[str, tuple[str | None, str]] = {}  # entry id -> (job id, why refused)
        sent: list[tuple[str, str]] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id, fields in letters:
                try:
                    if fields is None:
                        raise _Refused(_missing_reason(entry_id))
                    job, extra = _requeueable(fields, registry)
                except (InvalidJob, _Refused) as exc:
                    outcome[entry_id] = (None, str(exc))
                    continue
                outcome[entry_id] = (job.id, "")
                sent.append((entry_id, job.id))
                # One script per entry, pipelined: each is atomic, the batch need not be.
                await self._requeue(
                    keys=[self.keys.dead, self.keys.stream, self.keys.job(job.id),
                          self.keys.done(job.id)],
                    args=[entry_id, job.encode(), job.task, job.max_attempts,
                          repr(job.enqueued_at), *extra],
                    client=pipe,
                )  # fmt: skip
            replies = await pipe.execute() if sent else []
        for (entry_id, job_id), (ok, detail) in zip(sent, replies, strict=True):
            outcome[entry_id] = (job_id, "") if int(ok) else (None, _text(detail))
        return RequeueReport(
            requeued={e: job_id for e, (job_id, _) in outcome.items() if job_id is not None},
            refused={e: why for e, (job_id, why) in outcome.items() if job_id is None},
        )

    async def _entries(self, entry_ids: list[str]) -> list[tuple[str, Any]]:
        """(id, fields) for each id; fields None when it is no entry of the dead stream."""
        wanted = [entry_id for entry_id in entry_ids if _ENTRY_ID.fullmatch(entry_id)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in wanted:
                pipe.xrange(self.keys.dead, entry_id, entry_id, count=1)
            replies = dict(zip(wanted, await pipe.execute(), strict=True)) if wanted else {}
        return [(entry_id, replies[entry_id][0][1] if replies.get(entry_id) else None)
                for entry_id in entry_ids]


def _requeueable(fields: dict[Any, Any], registry: TaskRegistry | None
                 ) -> tuple[Job, list[Any]]:
    """The letter's job at attempt 1, and the entry's other fields.

    InvalidJob when it holds no valid job, _Refused when the job cannot run again.
    """
    named = {_name(k): v for k, v in fields.items()}
    raw = named.get("job")
    if raw is None:
        raise _Refused("the dead letter holds no 'job' field: the entry was never a job")
    job = Job.decode(raw)
    if job.deadline is not None and job.deadline <= time.time():
        raise _Refused(f"its deadline has passed ({job.deadline:.3f}): it would die unrun")
    if registry is not None and job.task not in registry:
        raise _Refused(f"unknown task {job.task!r}: not in {registry!r}")
    extra = [item for name, value in named.items()
             if name.startswith(b"extra:" if isinstance(name, bytes) else "extra:")
             for item in (_unprefixed(name), value)]
    return dataclasses.replace(job, attempt=1, enqueued_at=time.time()), extra


class _Refused(Exception):
    """A dead letter that ``requeue_dead`` leaves where it is; the message says why."""


def _missing_reason(entry_id: str) -> str:
    if not _ENTRY_ID.fullmatch(entry_id):
        return f"{entry_id[:60]!r} is not a stream entry id (like 1712345678901-0)"
    return "not in the dead-letter stream (requeued already?)"
