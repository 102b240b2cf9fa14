"""Every Redis key the job queue reads or writes, named in one place.

    keys = QueueKeys("images")
    keys.stream          # 'cq:{images}:stream'
    keys.job("42")       # 'cq:{images}:job:42'

One queue owns these keys (``{q}`` is the queue's name, ``<id>`` a job id):

=============================  ======  ====================================================
key                            type    holds
=============================  ======  ====================================================
``cq:{q}:stream``              stream  jobs to run, one entry each: ``job`` = the JSON
                                       envelope. Consumer group ``workers`` (``GROUP``).
                                       An entry is deleted (XDEL) when it is settled, so
                                       the stream holds only what is queued or running:
                                       a work buffer, not a log. A second group on it
                                       sees only those; fan-out (an audit, an indexer)
                                       reads a stream of its own.
``cq:{q}:delayed``             zset    retries waiting for their turn, and jobs enqueued
                                       with a delay: member = the (next) attempt's envelope,
                                       score = when it is due (epoch seconds). Moved to the
                                       stream by a Lua script (MOVE_DUE).
``cq:{q}:dead``                stream  the dead-letter stream: jobs given up on, and
                                       entries that were not jobs at all, with the reason.
                                       Keeps about ``Worker(max_dead_letters=)``, the
                                       newest (the oldest are trimmed as letters come).
``cq:{q}:job:<id>``            hash    the job's record: status, attempt, result or error
                                       (fields below). Its existence makes an id taken:
                                       enqueueing the same id again is a no-op until the
                                       record expires (``result_ttl_s`` after the end).
``cq:{q}:done:<id>``           list    one token, pushed when the job ends, in the same
                                       script as its final status, and PUBLISHed to (a
                                       channel of the same name): that wakes ``result()``,
                                       whose listener PSUBSCRIBEs to ``cq:{q}:done:*``.
                                       Expires with the record.
=============================  ======  ====================================================

Why the braces: Redis Cluster hashes only the part of a key inside the first
``{...}``, so every key of one queue lands on one slot, and the Lua scripts that
touch several of them stay legal on a cluster.

Why a prefix: ``FLUSHALL`` is not an option on a shared server; ``SCAN MATCH
cq:*`` finds everything this package wrote, and two courses (or a test and a
demo) can share a server by choosing another ``PREFIX``.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_QUEUE",
    "GROUP",
    "JOB_FIELDS",
    "NAIVE_LIST",
    "NAIVE_RESULT_PREFIX",
    "PREFIX",
    "QueueKeys",
    "check_queue_name",
]

import dataclasses
import re

PREFIX = "cq"  # "course queue": the namespace of every key above
GROUP = "workers"  # the one consumer group of each stream; every worker joins it
DEFAULT_QUEUE = "default"

# The article's naive list worker (naive.py, for comparison only) keeps its own
# keys, apart from the real queue's: a list of JSON jobs, and one string per result.
NAIVE_LIST = f"{PREFIX}:naive:tasks"
NAIVE_RESULT_PREFIX = f"{PREFIX}:naive:result:"  # + the job's id

# Fields of the job record (``cq:{q}:job:<id>``), all strings:
JOB_FIELDS = {
    "status": "a JobStatus value: scheduled, queued, running, retrying, done, failed, dead, "
              "cancelled",
    "task": "the task's name",
    "attempt": "the attempt running or last run, from 1",
    "max_attempts": "attempts allowed in all",
    "enqueued_at": "epoch seconds, when the client enqueued it",
    "entry": "the stream entry id it was last added as (enqueue, a retry moved back, a "
             "hand-back, a requeue): while queued or running, the live one",
    "worker": "the consumer name of the worker that last ran it",
    "started_at": "epoch seconds, start of the last attempt",
    "finished_at": "epoch seconds, when it ended (done, failed, dead or cancelled)",
    "next_at": "epoch seconds, when a retry or a delayed job is due (retrying, scheduled)",
    "result": "the return value, JSON (status done)",
    "error_type": "the last error's class name, e.g. ValueError",
    "error": "the last error's message",
    "traceback": "the last error's traceback, cut to a few KiB (never logged)",
    "reason": "why it failed, died or was cancelled, in words",
    "cancel": "epoch seconds, when a cancel was asked for while it ran (Queue.cancel): its "
              "worker cancels it within a heartbeat; a START that finds it ends the job",
}

# Queue names become part of keys and of the hash tag: no braces, no colons.
_QUEUE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")


def check_queue_name(name: str) -> str:
    """``name`` if it is a usable queue name (letters, digits, ``_.-``), else ValueError."""
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise ValueError(
            f"queue name {name!r} is not usable: 1-100 letters, digits, '_', '.' or '-'"
        )
    return name


@dataclasses.dataclass(frozen=True, slots=True)
class QueueKeys:
    """The key names of one queue (see the module's table).

        QueueKeys("default").delayed   # 'cq:{default}:delayed'
    """

    queue: str = DEFAULT_QUEUE
    prefix: str = PREFIX

    def __post_init__(self) -> None:
        check_queue_name(self.queue)

    @property
    def base(self) -> str:
        return f"{self.prefix}:{{{self.queue}}}"

    @property
    def stream(self) -> str:
        return f"{self.base}:stream"

    @property
    def group(self) -> str:
        return GROUP

    @property
    def delayed(self) -> str:
        return f"{self.base}:delayed"

    @property
    def dead(self) -> str:
        return f"{self.base}:dead"

    def job(self, job_id: str) -> str:
        return f"{self.base}:job:{job_id}"

    def done(self, job_id: str) -> str:
        return f"{self.base}:done:{job_id}"
