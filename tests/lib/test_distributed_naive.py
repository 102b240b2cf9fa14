"""course_lib.distributed.naive: the article's list worker loses and duplicates jobs, countably."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from course_lib.distributed import NaiveListWorker
from course_lib.distributed.keys import NAIVE_LIST, NAIVE_RESULT_PREFIX


async def _add(a: int, b: int) -> int:
    return a + b


async def _push(redis, n: int) -> list[str]:
    ids = [str(i) for i in range(n)]
    for job_id in ids:
        await NaiveListWorker.push(redis, {"id": job_id, "task": "add", "args": [int(job_id), 1]})
    return ids


@pytest.mark.asyncio
async def test_interleaved_fetches_duplicate_ten_jobs_and_lose_ten(redis):
    ids = await _push(redis, 20)
    a, b = NaiveListWorker(redis, {"add": _add}), NaiveListWorker(redis, {"add": _add})
    # The interleaving the article's loop allows: nothing makes LRANGE+LTRIM atomic.
    await a.read_batch()  # A: jobs 0-9
    await b.read_batch()  # B: jobs 0-9 again
    await a.trim_batch()  # the list is now 10-19
    await b.trim_batch()  # and now empty: 10-19 were never read
    delivered = Counter(a.fetched + b.fetched)
    duplicated = sorted((i for i, n in delivered.items() if n > 1), key=int)
    lost = [i for i in ids if i not in delivered]
    assert duplicated == [str(i) for i in range(10)]
    assert lost == [str(i) for i in range(10, 20)]
    assert await redis.llen(NAIVE_LIST) == 0


@pytest.mark.asyncio
async def test_back_to_back_fetches_of_one_worker_are_fine(redis):
    """One worker alone loses nothing: the flaw needs a second worker (or a crash)."""
    ids = await _push(redis, 25)
    worker = NaiveListWorker(redis, {"add": _add})
    while await worker.fetch():
        pass
    assert worker.fetched == ids


@pytest.mark.asyncio
async def test_a_worker_that_dies_loses_what_it_fetched(redis):
    await _push(redis, 10)
    worker = NaiveListWorker(redis, {"add": _add})
    assert await worker.fetch() == 10  # out of Redis, into process memory
    assert await redis.llen(NAIVE_LIST) == 0
    # It dies before running them: there is no ack, no pending list, nothing to reclaim.
    assert await worker.stop() == 10
    assert await redis.keys(f"{NAIVE_RESULT_PREFIX}*") == []


@pytest.mark.asyncio
async def test_it_runs_jobs_one_at_a_time_and_stores_results_by_id(redis):
    await _push(redis, 3)
    await NaiveListWorker.push(redis, {"id": "bad", "task": "add", "args": ["x"]})
    worker = NaiveListWorker(redis, {"add": _add}, poll_s=0.01)
    worker.start()
    with pytest.raises(RuntimeError, match="already running"):
        worker.start()
    try:
        async with asyncio.timeout(5):
            while len(await redis.keys(f"{NAIVE_RESULT_PREFIX}*")) < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        assert await worker.stop() == 0
    results = {i: json.loads(await redis.get(f"{NAIVE_RESULT_PREFIX}{i}")) for i in "012"}
    assert results == {"0": {"result": 1}, "1": {"result": 2}, "2": {"result": 3}}
    error = json.loads(await redis.get(f"{NAIVE_RESULT_PREFIX}bad"))
    assert "TypeError" in error["error"]  # no retry, no dead letter: a string, and gone


def test_its_docstring_says_not_to_use_it():
    assert "do not use it" in NaiveListWorker.__doc__.lower()
