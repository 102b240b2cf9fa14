"""course_lib.distributed: how soon a free slot is refilled, and a script's first runs.

- A slot freed while entries wait is refilled within a few round trips, never after a
  ``block_s`` (a read of the reader's that found the stream emptied by a settle's
  read, blocking while that settle's entries waited here, unstarted: chapter 4's
  Gantt chart showed ``resize(6)`` starting ~100 ms after slots freed).
- A script with a flags line that the server cannot compile (fakeredis, Redis 6.2):
  calls racing at a worker's first settles all fall back to the plain body.

Timing runs in virtual time (looptime) on the in-process fakeredis, each reply delayed
by a virtual round trip, so that the server has run a command before its sender sees
the reply, as over a network.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from course_lib.distributed import Queue, TaskRegistry, Worker, scripts
from course_lib.redis import connect, serve_fake_tcp


@pytest_asyncio.fixture
async def fake(monkeypatch):
    """The shared in-process fakeredis, emptied (looptime tests: no sockets)."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    client = await connect(None)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.mark.asyncio
async def test_calls_racing_at_a_scripts_first_run_all_fall_back_to_the_plain_body():
    """fakeredis cannot compile ``#!lua flags=``: the first call to fail switches to the
    plain body; another that failed meanwhile must retry with it too, not raise.

    On fakeredis served over TCP (as chapter 4's notebook uses it): the in-process one
    runs each call to its end before the next, so the calls never race there."""
    server = serve_fake_tcp()
    client = await connect(server.url)
    try:
        for _ in range(5):
            script = scripts.Script(client, f"return ARGV[1] -- {_}", flags="allow-oom")
            replies = await asyncio.gather(*(script(keys=[], args=[n]) for n in range(5)))
            assert [int(r) for r in replies] == list(range(5))
    finally:
        await client.aclose()
        server.stop()
