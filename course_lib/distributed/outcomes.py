"""What follows from an attempt: the record, the retry, the dead letter, the hand-back.

    outcomes = Outcomes(settings, counts, settler, on_retry=maintenance.nudge)
    outcomes.finished(delivery, job, result, ran_s)     # done (or failed: no JSON result)
    outcomes.retry_or_bury(delivery, job, task, exc, ran_s)

Each method counts the outcome, writes its one log line (logger
``course_lib.distributed.worker``; never the arguments or the result: they can hold
secrets) and hands the settle to the ``Settler``, which sends it with the others of
the turn.
"""

from __future__ import annotations

__all__: list[str] = []  # internal: Worker is the public face

import asyncio
import json
import logging
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..timeouts import backoff_s
from .control import Settings
from .job import MAX_JOB_BYTES, InvalidJob, Job, JobStatus, to_json
from .queue import _name, _surrogate
from .registry import Task
from .settling import Settler

if TYPE_CHECKING:
    from .running import Delivery

logger = logging.getLogger("course_lib.distributed.worker")

_MAX_ERROR_CHARS = 2000
_MAX_TRACEBACK_CHARS = 8000
_MAX_ENTRY_FIELDS = 64  # other fields of an entry copied one by one (see entry_fields)

COUNTS = ("processed", "failed", "retried", "dead", "cancelled", "handed_back", "reclaimed")


class Outcomes:
    """Turns the end of each attempt into its settle, and counts it."""

    def __init__(self, settings: Settings, counts: dict[str, int], settler: Settler,
                 on_retry: Callable[[], None]) -> None:
        self._settings, self._counts, self._settler = settings, counts, settler
        self._on_retry = on_retry  # a retry was scheduled: the maintenance loop wakes for it

    def finished(self, d: Delivery, job: Job, result: Any, ran_s: float) -> None:
        """The task returned ``result``: done, or failed when it cannot be stored."""
        try:
            payload = b"null" if result is None else to_json(result, f"the result of {job.task}")
            if len(payload) > MAX_JOB_BYTES:
                raise InvalidJob(f"the result of {job.task} is {len(payload)} bytes, over "
                                 f"the {MAX_JOB_BYTES} byte limit")
        except InvalidJob as exc:  # retrying would return the same thing
            self.fail(d, job, exc, ran_s, f"its result cannot be stored: {exc.problem}",
                      final=JobStatus.FAILED)
            return
        self._counts["processed"] += 1
        logger.info("%6.2fs ← %s(id=%s) ok", ran_s, job.task, job.id)
        self._settler.add(d, job.id, b"done", payload)

    def ack(self, d: Delivery) -> None:
        """Ack the entry and nothing else (its job ended already: a duplicate)."""
        self._settler.add(d, None, "ack")

    def retry_or_bury(self, d: Delivery, job: Job, task: Task, exc: Exception,
                      ran_s: float, why: str | None = None) -> None:
        s = self._settings
        if not task.retries(exc):
            reason = why or f"{type(exc).__name__} is not retried"
            self.fail(d, job, exc, ran_s, reason, final=JobStatus.FAILED)
            return
        if job.attempt >= job.max_attempts:
            reason = f"gave up after {job.attempt} attempt(s)" + (f", {why}" if why else "")
            self.fail(d, job, exc, ran_s, reason, final=JobStatus.DEAD)
            return
        delay_s = backoff_s(job.attempt, base_s=s.retry_base_s, max_s=s.retry_max_s,
                            jitter=s.retry_jitter)
        due = time.time() + delay_s
        if job.deadline is not None and due >= job.deadline:
            reason = "its deadline passes before the next attempt" + (f"; {why}" if why else "")
            self.fail(d, job, exc, ran_s, reason, final=JobStatus.DEAD)
            return
        following = job.next_attempt()
        self._counts["retried"] += 1
        logger.info("%6.2fs ↻ %s(id=%s) retry %d/%d in %.2fs: %s", ran_s, job.task, job.id,
                    following.attempt, job.max_attempts, delay_s, why or type(exc).__name__)
        record = {"status": JobStatus.RETRYING.value, "next_at": repr(due),
                  **_error_fields(exc, why or "")}
        self._settler.add(d, job.id, "retry", *_counted(record),
                          *_counted([repr(due), following.encode()]))
        self._on_retry()  # the maintenance loop now sleeps until this retry is due

    def fail(self, d: Delivery, job: Job, exc: Exception, ran_s: float, reason: str,
             *, final: JobStatus) -> None:
        """End the job failed (no dead letter) or dead (dead-lettered)."""
        if final is JobStatus.DEAD:
            self.bury(d, reason, error=exc, ran_s=ran_s)
            return
        self._counts["failed"] += 1
        logger.info("%6.2fs ✗ %s(id=%s) failed: %s: %s", ran_s, job.task, job.id,
                    type(exc).__name__, reason)
        record = {"status": JobStatus.FAILED.value, "finished_at": repr(time.time()),
                  **_error_fields(exc, reason)}
        self._settler.add(d, job.id, "end", *_counted(record), 0)

    def bury(self, d: Delivery, reason: str, *, error: Exception | None = None,
             ran_s: float = 0.0) -> None:
        """Ack the entry and add it to the dead-letter stream, with the reason, at once."""
        self._counts["dead"] += 1
        job = d.job
        error_type = type(error).__name__ if error is not None else ""
        message = str(error)[:_MAX_ERROR_CHARS] if error is not None else ""
        letter: list[Any] = [
            "reason", reason, "error_type", error_type, "error", message,
            "origin_id", d.entry_id, "worker", self._settings.name, "dead_at", repr(time.time()),
        ]  # fmt: skip
        letter += entry_fields(d.fields, prefix="extra:")  # the entry as it was: never lost
        if job is None:
            logger.warning("%6.2fs ✗ entry %s dead: %s", ran_s, d.entry_id, reason)
            self._settler.add(d, None, "bury", 0, *_counted(letter))
            return
        logger.info("%6.2fs ✗ %s(id=%s) dead: %s", ran_s, job.task, job.id, reason)
        record = {"status": JobStatus.DEAD.value, "finished_at": repr(time.time()),
                  "reason": reason}
        if error is not None:
            record |= _error_fields(error, reason)
        self._settler.add(d, job.id, "end", *_counted(record), *_counted(letter))

    def cancelled(self, d: Delivery, job: Job, ran_s: float, reason: str) -> None:
        """End the job cancelled, as asked (``Queue.cancel``): no retry, no dead letter."""
        self._counts["cancelled"] += 1
        logger.info("%6.2fs ⊘ %s(id=%s) %s", ran_s, job.task, job.id, reason)
        record = {"status": JobStatus.CANCELLED.value, "finished_at": repr(time.time()),
                  "reason": reason}
        self._settler.add(d, job.id, "end", *_counted(record), 0)

    def hand_back(self, d: Delivery) -> None:
        """Re-add the entry to the stream and ack it, in one step (the worker is stopping)."""
        assert d.job is not None
        self._counts["handed_back"] += 1
        ran_s = 0.0 if d.started is None else asyncio.get_running_loop().time() - d.started
        logger.info("%6.2fs ⇠ %s(id=%s) handed back: worker stopping", ran_s, d.job.task,
                    d.job.id)
        self._settler.add(d, d.job.id, "back", *_counted({"status": "queued"}),
                          *_counted(entry_fields(d.fields)))  # the entry as it was


def _counted(items: dict[str, Any] | list[Any]) -> list[Any]:
    """``items`` (a dict: as field/value pairs) preceded by their count, for SETTLE."""
    flat = [x for pair in items.items() for x in pair] if isinstance(items, dict) else items
    return [len(flat), *flat]


def entry_fields(fields: dict[Any, Any], *, prefix: str = "") -> list[Any]:
    """An entry's fields as field/value pairs, ``job`` as it is, the others ``prefix``-ed.

    Beyond ``_MAX_ENTRY_FIELDS`` the others go into ONE field, ``{prefix}_fields_json``
    (a JSON object; bytes as latin-1 text, so nothing is lost): a Lua script cannot
    ``unpack`` thousands of arguments, and a settle that fails is retried for ever.
    A name that is not UTF-8 is kept as its bytes (the entry as it was); in the JSON
    object it is decoded with ``surrogateescape``, so ``name.encode("utf-8",
    "surrogateescape")`` gives its bytes back.
    """
    pairs: list[Any] = []
    others: list[tuple[str | bytes, Any]] = []
    for key, value in fields.items():
        name = _name(key)
        if name == "job":
            pairs += ["job", value]
        else:
            others.append((name, value))
    if len(others) <= _MAX_ENTRY_FIELDS:
        for name, value in others:
            pairs += [prefix.encode() + name if isinstance(name, bytes) else prefix + name,
                      value]
        return pairs
    packed = {_surrogate(name): value.decode("latin-1") if isinstance(value, bytes)
              else str(value) for name, value in others}
    return [*pairs, f"{prefix}_fields_json", json.dumps(packed)]


def _error_fields(exc: BaseException, reason: str) -> dict[str, str]:
    tb = "".join(traceback.format_exception(exc))[-_MAX_TRACEBACK_CHARS:]
    return {"error_type": type(exc).__name__, "error": str(exc)[:_MAX_ERROR_CHARS],
            "traceback": tb, "reason": reason}
