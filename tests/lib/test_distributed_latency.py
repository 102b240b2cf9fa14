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

from course_lib.distributed import Queue, TaskRegistry, Worker, scripts
from course_lib.redis import connect, serve_fake_tcp


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


RTT_S = 0.002  # a virtual round trip


def _late_replies(worker: Worker) -> None:
    """Delay the replies of the worker's settles: one that reads by three round trips,
    the others by one. The server has run each call (taking the entries it read) by the
    time its sender sees the reply, and a settle sent later on another connection may
    answer first (a shorter reply): what made chapter 4's chart wait."""
    settle = worker._settler.script

    async def late(keys, args):
        reply = await settle(keys=keys, args=args)
        reads = len(args) >= 2 and args[-2] == worker.name
        await asyncio.sleep(3 * RTT_S if reads else RTT_S)
        return reply

    worker._settler.script = late  # type: ignore[assignment]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_slot_freed_while_an_entry_waits_is_refilled_within_a_few_round_trips(fake):
    loop = asyncio.get_running_loop()
    registry = TaskRegistry()
    started: dict[str, float] = {}
    ended: dict[str, float] = {}
    go_on = asyncio.Event()
    all_three = asyncio.Event()

    @registry.task
    async def work(name: str, run_s: float) -> str:
        started[name] = loop.time()
        if len(started) == 3:
            all_three.set()
        if run_s:
            await asyncio.sleep(run_s)
        else:
            await go_on.wait()
        ended[name] = loop.time()
        return name

    queue = Queue(fake, registry=registry)
    worker = Worker(fake, registry, concurrency=3, block_s=1.0)
    _late_replies(worker)
    async with asyncio.timeout(60):
        async with worker:
            # a and b end one after the other (two settles: the first one reads), c runs on.
            busy = [await queue.enqueue("work", "a", 0.1),
                    await queue.enqueue("work", "b", 0.1 + RTT_S / 2),
                    await queue.enqueue("work", "c", 0)]
            await all_three.wait()
            waiting = await queue.enqueue("work", "d", 0.01)  # every slot taken
            assert await waiting.result() == "d"
            go_on.set()
            assert [await h.result() for h in busy] == ["a", "b", "c"]
    # A slot was free from the settle of a (a few round trips after it ended) on: d
    # starts within a few more, not after the reader's BLOCK (1 s) ran out.
    assert started["d"] - ended["a"] <= 10 * RTT_S
