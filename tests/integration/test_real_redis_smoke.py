"""A real redis-server does what the course relies on: streams, pub/sub, Lua, restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

from course_lib.redis import connect

pytestmark = pytest.mark.real_redis


@pytest_asyncio.fixture
async def r(redis_server) -> AsyncIterator[Redis]:
    client = await connect(redis_server.url, decode_responses=True)
    try:
        await client.flushall()
        yield client
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_set_and_get(r):
    assert await r.set("greeting", "hello", ex=60)
    assert await r.get("greeting") == "hello"
    assert 0 < await r.ttl("greeting") <= 60


@pytest.mark.asyncio
async def test_stream_consumer_group_round_trip(r, redis_server):
    await r.xgroup_create("jobs", "workers", id="0", mkstream=True)
    producer = await connect(redis_server.url, decode_responses=True)
    try:
        # The worker blocks first; the entry arrives while it waits.
        read = asyncio.create_task(
            r.xreadgroup("workers", "w1", {"jobs": ">"}, count=10, block=5_000)
        )
        await asyncio.sleep(0.05)
        first = await producer.xadd("jobs", {"task": "resize", "n": "1"})
        [[stream, [(entry_id, fields)]]] = await asyncio.wait_for(read, 5)
        assert (stream, entry_id, fields) == ("jobs", first, {"task": "resize", "n": "1"})
        assert (await r.xpending("jobs", "workers"))["pending"] == 1
        assert await r.xack("jobs", "workers", entry_id) == 1
        assert (await r.xpending("jobs", "workers"))["pending"] == 0

        # w1 takes a second job and "dies" without acking: w2 reclaims it.
        second = await producer.xadd("jobs", {"task": "resize", "n": "2"})
        await r.xreadgroup("workers", "w1", {"jobs": ">"}, count=10)
        await asyncio.sleep(0.05)
        too_soon = await r.xautoclaim("jobs", "workers", "w2", min_idle_time=60_000)
        assert too_soon[1] == []
        _, claimed, deleted = await r.xautoclaim("jobs", "workers", "w2", min_idle_time=20)
        assert [entry_id for entry_id, _ in claimed] == [second] and deleted == []
        [pending] = await r.xpending_range("jobs", "workers", "-", "+", 10)
        assert (pending["consumer"], pending["times_delivered"]) == ("w2", 2)
    finally:
        await producer.aclose()


@pytest.mark.asyncio
async def test_pubsub(r, redis_server):
    listener = await connect(redis_server.url, decode_responses=True)
    pubsub = listener.pubsub()
    try:
        await pubsub.subscribe("events")
        confirmation = await pubsub.get_message(timeout=2)
        assert confirmation is not None and confirmation["type"] == "subscribe"
        assert await r.publish("events", "job done") == 1
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        assert message is not None and message["data"] == "job done"
    finally:
        await pubsub.aclose()
        await listener.aclose()


@pytest.mark.asyncio
async def test_lua_script(r):
    # Take a token if one is left, atomically: the shape of the course's rate limiter.
    take = r.register_script(
        """
        local left = tonumber(redis.call('GET', KEYS[1]) or ARGV[1])
        if left <= 0 then return 0 end
        redis.call('SET', KEYS[1], left - 1)
        return 1
        """
    )
    results = [await take(keys=["tokens"], args=[2]) for _ in range(3)]
    assert results == [1, 1, 0]
    assert await r.eval("return redis.call('GET', KEYS[1])", 1, "tokens") == "0"


@pytest.mark.asyncio
async def test_restart_with_appendonly_keeps_data(redis_server_factory):
    server = redis_server_factory(appendonly=True)
    client = await connect(server.url, decode_responses=True)
    try:
        await client.set("survives", "yes")
        await client.xadd("jobs", {"n": "1"})
        # In a thread, so the loop sees the old connection close while the
        # server is down: the pool then reconnects before the next command
        # instead of failing it (from_url clients do not retry commands).
        await asyncio.to_thread(server.restart)
        assert await client.get("survives") == "yes"
        assert await client.xlen("jobs") == 1
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_restart_without_appendonly_loses_data(redis_server_factory):
    server = redis_server_factory(appendonly=False)
    client = await connect(server.url)
    try:
        await client.set("survives", "no")
        await asyncio.to_thread(server.restart)
        assert await client.get("survives") is None
    finally:
        await client.aclose()


@pytest.mark.asyncio
async def test_kill_with_appendfsync_always_keeps_acknowledged_writes(redis_server_factory):
    server = redis_server_factory(appendonly=True, extra_args=["--appendfsync", "always"])
    client = await connect(server.url)
    try:
        await client.set("acked", "1")
        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(server.start)
        assert await client.get("acked") == b"1"
    finally:
        await client.aclose()
