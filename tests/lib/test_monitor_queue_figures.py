"""course_lib.monitor.queue_figures: one bounded read of a queue's figures, rates from the last.

The ``redis`` fixture runs each test on fakeredis, then on a real server. The stream is
driven by hand (XADD, XREADGROUP, XACK + XDEL as a worker settles), so every figure is
known in advance; the dashboard's tests check the same figures against real Workers.
Rates are checked against the interval the sample reports, never against a clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import subprocess
import sys

import pytest
import redis.asyncio
import redis.exceptions

from course_lib.distributed import Queue
from course_lib.monitor.queue_figures import RATED, QueueSample, read_queue_figures


async def add(client, queue: Queue, n: int) -> list[bytes]:
    return [await client.xadd(queue.keys.stream, {"job": b"{}"}) for _ in range(n)]


async def settle(client, queue: Queue, *ids: bytes) -> None:
    """What a worker does with an entry it is done with: XACK, then XDEL."""
    await client.xack(queue.keys.stream, queue.keys.group, *ids)
    await client.xdel(queue.keys.stream, *ids)


@pytest.mark.asyncio
async def test_a_queue_that_does_not_exist_yet_reads_as_empty_without_rates(redis):
    q = await read_queue_figures(Queue(redis, "nothing-here"), None, timeout_s=5)
    assert isinstance(q, QueueSample)
    assert (q.stream, q.pending, q.lag, q.delayed, q.dead, q.consumers) == (0, 0, 0, 0, 0, 0)
    assert (q.in_flight, q.idle_s, q.entries_added) == ({}, {}, 0)
    assert (q.settled, q.done, q.interval_s, q.rates, q.done_per_s) == (None,) * 5


@pytest.mark.asyncio
async def test_done_is_settled_minus_new_dead_and_new_retries_with_rates_per_second(redis):
    queue = Queue(redis, "figures")
    ids = await add(redis, queue, 6)
    await redis.xgroup_create(queue.keys.stream, queue.keys.group, id="0")
    first = await read_queue_figures(queue, None, timeout_s=5)
    assert (first.stream, first.pending, first.lag, first.entries_added) == (6, 0, 6, 6)

    await redis.xreadgroup(queue.keys.group, "w1", {queue.keys.stream: ">"}, count=4)
    await settle(redis, queue, ids[0])  # done
    await settle(redis, queue, ids[1])  # a retry: back in the delayed set
    await redis.zadd(queue.keys.delayed, {b"retry-of-1": 0})
    await settle(redis, queue, ids[2])  # a dead letter
    await redis.xadd(queue.keys.dead, {"job": b"{}"})
    await add(redis, queue, 2)  # and two new jobs come in
    q = await read_queue_figures(queue, first, timeout_s=5)

    assert (q.stream, q.pending, q.lag, q.delayed, q.dead, q.consumers) == (5, 1, 4, 1, 1, 1)
    assert q.in_flight == {"w1": 1} and q.idle_s["w1"] >= 0
    assert (q.entries_added, q.settled, q.done) == (8, 3, 1)
    assert q.interval_s == pytest.approx(q.read_at_s - first.read_at_s)
    assert set(q.rates) == set(RATED) == {"stream", "pending", "lag", "delayed", "dead"}
    for name in RATED:
        change = getattr(q, name) - getattr(first, name)
        assert q.rates[name] == pytest.approx(change / q.interval_s)
    assert q.done_per_s == pytest.approx(1 / q.interval_s)


@pytest.mark.asyncio
async def test_done_counts_settles_out_of_order_where_entries_read_gives_up(redis, redis_url):
    # Workers settle (XACK + XDEL) in any order. Once the group's last delivered entry
    # is deleted while an older one is pending, fakeredis 2.41 (which follows recent
    # Redis) reports entries-read as null; Redis 7.0.15 went on counting. The figures
    # count what left the stream instead (entries-added minus length): right on both.
    queue = Queue(redis, "dash")
    stream, group = queue.keys.stream, queue.keys.group
    ids = await add(redis, queue, 6)
    await redis.xgroup_create(stream, group, id="0")
    first = await read_queue_figures(queue, None, timeout_s=5)
    await redis.xreadgroup(group, "c1", {stream: ">"}, count=3)
    await settle(redis, queue, ids[2])  # the last one delivered, settled first
    await redis.xreadgroup(group, "c2", {stream: ">"}, count=2)
    await settle(redis, queue, ids[0], ids[3])
    q = await read_queue_figures(queue, first, timeout_s=5)
    if redis_url is None:  # fakeredis
        assert (await redis.xinfo_groups(stream))[0]["entries-read"] is None
    assert (q.settled, q.done, q.pending, q.in_flight) == (3, 3, 2, {"c1": 1, "c2": 1})


class NoEntriesAdded:
    """A client whose XINFO STREAM reply has no entries-added, as Redis 6.2's has none."""

    def __init__(self, real: redis.asyncio.Redis) -> None:
        self.real = real

    def pipeline(self, **kw):
        return _Pipeline(self.real.pipeline(**kw))

    def register_script(self, script):
        return self.real.register_script(script)


class _Pipeline:
    def __init__(self, pipe) -> None:
        self.pipe = pipe

    async def __aenter__(self):
        await self.pipe.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self.pipe.__aexit__(*exc)

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    async def execute(self, **kw):
        replies = await self.pipe.execute(**kw)
        replies[0].pop("entries-added", None)
        return replies


@pytest.mark.asyncio
async def test_without_entries_added_done_is_unknown_and_the_rates_still_come(redis):
    real = Queue(redis, "old")
    ids = await add(redis, real, 3)
    await redis.xgroup_create(real.keys.stream, real.keys.group, id="0")
    queue = Queue(NoEntriesAdded(redis), "old")
    first = await read_queue_figures(queue, None, timeout_s=5)
    await redis.xreadgroup(real.keys.group, "w1", {real.keys.stream: ">"}, count=1)
    await settle(redis, real, ids[0])
    q = await read_queue_figures(queue, first, timeout_s=5)
    assert (first.entries_added, q.entries_added, q.settled, q.done, q.done_per_s) == (
        None, None, None, None, None)
    assert q.stream == 2 and q.rates["stream"] == pytest.approx(-1 / q.interval_s)


@pytest.mark.asyncio
async def test_as_dict_is_every_figure_ready_for_json(redis):
    queue = Queue(redis, "json")
    await add(redis, queue, 2)
    await redis.xgroup_create(queue.keys.stream, queue.keys.group, id="0")
    await redis.xreadgroup(queue.keys.group, "w1", {queue.keys.stream: ">"}, count=1)
    first = await read_queue_figures(queue, None, timeout_s=5)
    q = await read_queue_figures(queue, first, timeout_s=5)
    row = json.loads(json.dumps(q.as_dict()))
    assert row["in_flight"] == {"w1": 1} and row["stream"] == 2 and row["done"] == 0
    assert set(row["rates"]) == set(RATED) and row["done_per_s"] == 0
    assert set(row) == {f.name for f in dataclasses.fields(q)} | {"done_per_s"}


async def silent_server():
    """A TCP server that accepts, reads, and never answers."""
    async def swallow(reader, writer):
        try:
            while await reader.read(4096):
                pass
        finally:
            writer.close()

    return await asyncio.start_server(swallow, "127.0.0.1", 0)


@pytest.mark.asyncio
async def test_a_silent_server_raises_timeout_error_and_a_cancel_stays_a_cancel():
    server = await silent_server()
    client = redis.asyncio.Redis(host="127.0.0.1", port=server.sockets[0].getsockname()[1])
    try:
        with pytest.raises(TimeoutError):
            await read_queue_figures(Queue(client, "q"), None, timeout_s=0.05)
        # A cancel while it waits: its own bound must not turn it into a TimeoutError.
        task = asyncio.create_task(read_queue_figures(Queue(client, "q"), timeout_s=3600))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_a_refused_connection_raises_the_clients_error():
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    try:
        with pytest.raises((redis.exceptions.ConnectionError, OSError)):
            await read_queue_figures(Queue(client, "q"), None, timeout_s=5)
    finally:
        await client.aclose()


def test_importing_it_imports_neither_ipython_nor_matplotlib():
    code = ("import sys, course_lib.monitor.queue_figures; "
            "print('IPython' in sys.modules, 'matplotlib' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False False"
