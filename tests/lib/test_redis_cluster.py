"""course_lib.redis.connect() on a redis+cluster:// URL, against a local three-master cluster."""

from __future__ import annotations

import socket
import traceback

import pytest
import pytest_asyncio
import redis.asyncio

from course_lib.distributed.worker import _describe
from course_lib.redis import (
    PROTOCOL,
    RedisUnavailable,
    cluster_seeds,
    connect,
    mask_url,
)

SECRET = "s3cret-Pa55"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _everything_printed(exc: BaseException) -> str:
    return str(exc) + "".join(traceback.format_exception(exc))


@pytest_asyncio.fixture
async def cluster(redis_cluster):
    client = await connect(redis_cluster.url)
    try:
        await client.flushall()  # to every master
        yield client
    finally:
        await client.aclose()


# --- the URL ----------------------------------------------------------------------------


def test_cluster_url_names_its_seeds():
    assert cluster_seeds("redis+cluster://:pw@a:7000,b:7001/0?protocol=3") == (
        [("a", 7000), ("b", 7001)], "redis://:pw@a:7000/0?protocol=3")
    assert cluster_seeds("rediss+cluster://[::1]:7000")[0] == [("::1", 7000)]


@pytest.mark.parametrize("url, why", [
    ("redis+cluster://a:7000,b", "has no port"),
    ("redis+cluster://a:7000/1", "only database 0"),
    ("redis+cluster://a:99999", "port must be a number"),
])
def test_malformed_cluster_urls_are_refused_with_the_reason(url, why):
    with pytest.raises(ValueError, match=why):
        cluster_seeds(url)


@pytest.mark.asyncio
async def test_malformed_cluster_url_never_shows_the_password():
    with pytest.raises(ValueError) as info:
        await connect(f"redis+cluster://:{SECRET}@a:7000,b")
    assert SECRET not in _everything_printed(info.value)
    assert "redis+cluster://:***@a:7000,b" in str(info.value)


def test_mask_url_hides_a_cluster_password():
    assert mask_url(f"redis+cluster://u:{SECRET}@a:1,b:2") == "redis+cluster://u:***@a:1,b:2"


@pytest.mark.asyncio
async def test_no_reachable_seed_is_unavailable_and_masked():
    url = f"redis+cluster://:{SECRET}@127.0.0.1:{_free_port()},127.0.0.1:{_free_port()}"
    with pytest.raises(RedisUnavailable) as info:
        await connect(url)
    assert SECRET not in _everything_printed(info.value)
    assert info.value.url == mask_url(url)


# --- a real cluster ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_connect_returns_a_cluster_client_with_the_usual_bounds(cluster, redis_cluster):
    assert isinstance(cluster, redis.asyncio.RedisCluster)
    kw = cluster.connection_kwargs
    assert kw["protocol"] == PROTOCOL
    assert kw["socket_timeout"] is None  # as connect() gives a single server
    assert kw["socket_connect_timeout"] == 2.0
    assert len(cluster.get_primaries()) == 3  # found from the seeds


@pytest.mark.asyncio
async def test_one_seed_is_enough_and_keys_spread_over_the_masters(redis_cluster):
    client = await connect(f"redis+cluster://127.0.0.1:{redis_cluster.ports[1]}")
    try:
        for i in range(30):
            await client.set(f"k{i}", i)
        assert [int(await client.get(f"k{i}")) for i in range(30)] == list(range(30))
        holders = {client.get_node_from_key(f"k{i}").port for i in range(30)}
        assert holders == set(redis_cluster.ports)
        # RESP2, as on one server: XREADGROUP replies a list of [stream, entries].
        await client.xadd("cq:{t}:stream", {"a": "1"})
        await client.xgroup_create("cq:{t}:stream", "g", id="0")
        reply = await client.xreadgroup("g", "c", {"cq:{t}:stream": ">"}, count=1)
        assert isinstance(reply, list)
    finally:
        await client.flushall()
        await client.aclose()


@pytest.mark.asyncio
async def test_wrong_password_on_a_cluster_is_unavailable_and_masked(redis_cluster):
    url = redis_cluster.url.replace("://", f"://:{SECRET}@")
    with pytest.raises(RedisUnavailable) as info:
        await connect(url)
    assert SECRET not in _everything_printed(info.value)


@pytest.mark.asyncio
async def test_a_worker_describes_a_cluster_by_its_nodes(cluster, redis_cluster):
    shown = _describe(cluster)
    assert shown.startswith("redis+cluster://")
    assert all(str(port) in shown for port in redis_cluster.ports)
