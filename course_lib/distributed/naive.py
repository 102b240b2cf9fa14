"""The article's list worker, rebuilt to show how it loses and duplicates jobs. DO NOT USE.

    a, b = NaiveListWorker(redis, handlers), NaiveListWorker(redis, handlers)
    await a.read_batch(); await b.read_batch()    # both read the same ten jobs
    await a.trim_batch(); await b.trim_batch()    # and trim twenty: ten never read

Use ``course_lib.distributed.Worker`` (or arq, SAQ, Celery) instead. Kept for
chapter 4 and the benchmarks of chapter 6 only.
"""

from __future__ import annotations

__all__ = ["NaiveListWorker"]

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import redis.asyncio

from .keys import NAIVE_LIST, NAIVE_RESULT_PREFIX

logger = logging.getLogger(__name__)


class NaiveListWorker:
    """The article's design, flaws included: do not use it. It loses and duplicates jobs.

        worker = NaiveListWorker(redis, {"add": add})
        await NaiveListWorker.push(redis, {"id": "1", "task": "add", "args": [1, 2]})
        worker.start(); ...; lost = await worker.stop()

    What it does, as the article does:

    - fetch: ``LRANGE 0 9`` then ``LTRIM 10 -1``, two commands, not atomic. Two workers
      can both read the same ten jobs (duplicates) and both trim, dropping ten that
      nobody read (losses). ``read_batch()`` and ``trim_batch()`` are the two steps,
      apart, so a test can interleave two workers and count both.
    - the jobs then live only in an unbounded local ``asyncio.Queue``: no ack, so a
      worker that dies loses them; no back-pressure, however many are fetched.
    - when the list is empty it sleeps ``poll_s`` (0.1 s) and asks again: latency
      and load, where a blocking read exists.
    - one job at a time; the result (or error) stored under the job's id, no retry,
      no dead letter, no timeout, no status.

    Differences, so it runs at all: the article parsed nothing (``task_data['id']`` on
    raw bytes fails); this one reads JSON. The article fired its two loops with
    ``create_task`` and kept no reference; this one keeps them, so ``stop()`` can
    end them (and the tests do not leak tasks).
    """

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        handlers: Mapping[str, Callable[..., Awaitable[Any]]],
        *,
        key: str = NAIVE_LIST,
        batch: int = 10,
        poll_s: float = 0.1,
    ) -> None:
        self.redis = redis
        self.handlers = handlers
        self.key = key
        self.batch = batch
        self.poll_s = poll_s
        self.local: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # unbounded, as in the article
        self.fetched: list[str] = []  # ids this worker took from Redis, in order (for counting)
        self._loops: list[asyncio.Task[None]] = []

    def __repr__(self) -> str:
        return f"<NaiveListWorker {self.key!r} {self.local.qsize()} held in memory>"

    @staticmethod
    async def push(redis: redis.asyncio.Redis, task_data: Mapping[str, Any], *,
                   key: str = NAIVE_LIST) -> None:
        """RPUSH one job (a dict with ``id``, ``task``, ``args``) as JSON."""
        await redis.rpush(key, json.dumps(dict(task_data)))

    async def read_batch(self) -> list[dict[str, Any]]:
        """Step 1 of a fetch: ``LRANGE 0 batch-1``; the jobs go to the local queue."""
        items = await self.redis.lrange(self.key, 0, self.batch - 1)
        jobs = [json.loads(item) for item in items]
        for job in jobs:
            self.fetched.append(str(job.get("id")))
            self.local.put_nowait(job)
        return jobs

    async def trim_batch(self) -> None:
        """Step 2 of a fetch: ``LTRIM batch -1``, whoever read what in between."""
        await self.redis.ltrim(self.key, self.batch, -1)

    async def fetch(self) -> int:
        """Both steps, back to back, as the article's loop does; how many were read."""
        jobs = await self.read_batch()
        if jobs:
            await self.trim_batch()
        return len(jobs)

    async def process_one(self) -> None:
        """Run the next job from the local queue and store its result or error by id."""
        job = await self.local.get()
        try:
            result: Any = {"result": await self.handlers[job["task"]](*job.get("args", []))}
        except Exception as exc:  # the article's "error": a string, no retry
            result = {"error": repr(exc)}
        await self.redis.set(f"{NAIVE_RESULT_PREFIX}{job['id']}", json.dumps(result))

    def start(self) -> None:
        """Start the fetch loop and the process loop."""
        if self._loops:
            raise RuntimeError(f"{self!r} is already running")
        self._loops = [asyncio.create_task(self._fetch_loop(), name="naive fetch"),
                       asyncio.create_task(self._process_loop(), name="naive process")]

    async def stop(self) -> int:
        """Cancel both loops; return how many fetched jobs were lost from memory."""
        loops, self._loops = set(self._loops), []
        while loops:
            # Again and again: Python 3.11 can lose a cancel inside a redis-py command
            # (results._raise_if_cancel_lost says how), and this loop has nothing else.
            for task in loops:
                task.cancel()
            _, loops = await asyncio.wait(loops, timeout=0.1)
        lost = self.local.qsize()
        if lost:
            logger.warning("%r: %d fetched jobs dropped with the process memory", self, lost)
        return lost

    async def _fetch_loop(self) -> None:
        while True:
            if not await self.fetch():
                await asyncio.sleep(self.poll_s)  # polling: the article's fixed sleep

    async def _process_loop(self) -> None:
        while True:
            await self.process_one()
