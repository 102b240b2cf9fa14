"""course_lib.redis: connect(), mask_url(), serve_fake_tcp(), and the fake/real fixtures."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from urllib.parse import quote

import fakeredis
import pytest
import redis.exceptions
from _redis_server import MISSING, redis_server_binary
from hypothesis import assume, given
from hypothesis import strategies as st

from course_lib.redis import (
    PROTOCOL,
    RedisUnavailable,
    connect,
    fake_server,
    mask_url,
    serve_fake_tcp,
)

SECRET = "s3cret-Pa55"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _everything_printed(exc: BaseException) -> str:
    """What a traceback of ``exc`` would show: its message and every chained one."""
    return str(exc) + "".join(traceback.format_exception(exc))


async def _python(code: str, *, env: dict[str, str] | None = None) -> str:
    """Run ``python -c code`` in a subprocess and return its stdout (fail on exit code)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


# --- connect(): which server ------------------------------------------------------------


@pytest.mark.asyncio
async def test_connect_without_url_shares_one_fake_server(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    first, second = await connect(), await connect(decode_responses=True)
    try:
        assert isinstance(first, fakeredis.FakeAsyncRedis)
        await first.set("shared:key", "seen by both")
        assert await second.get("shared:key") == "seen by both"
        assert first.connection_pool.connection_kwargs["server"] is fake_server()
        assert second.connection_pool.connection_kwargs["server"] is fake_server()
    finally:
        await first.delete("shared:key")
        await first.aclose()
        await second.aclose()


@pytest.mark.asyncio
async def test_connect_honours_redis_url(monkeypatch):
    with serve_fake_tcp() as srv:
        monkeypatch.setenv("REDIS_URL", srv.url)
        client = await connect()
        try:
            assert not isinstance(client, fakeredis.FakeAsyncRedis)
            await client.set("where", "tcp")
            # The key went to the TCP server, not to the in-process fake.
            assert srv.server is not fake_server()
            local = await connect("")  # empty means unset: still REDIS_URL
            assert await local.get("where") == b"tcp"
            await local.aclose()
        finally:
            await client.aclose()


@pytest.mark.asyncio
async def test_empty_redis_url_means_the_in_process_fake(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "")
    client = await connect()
    assert isinstance(client, fakeredis.FakeAsyncRedis)
    await client.aclose()


@pytest.mark.asyncio
async def test_protocol_is_pinned_and_overridable(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    default, resp3 = await connect(), await connect(protocol=3)
    try:
        assert default.connection_pool.connection_kwargs["protocol"] == PROTOCOL == 2
        for client, key in ((default, "s2"), (resp3, "s3")):
            await client.delete(key)
            await client.xgroup_create(key, "g", id="0", mkstream=True)
            await client.xadd(key, {"f": "v"}, id="1-0")
        # The same command, two reply shapes: why connect() pins one.
        entries = [(b"1-0", {b"f": b"v"})]
        assert await default.xreadgroup("g", "c", {"s2": ">"}) == [[b"s2", entries]]
        assert await resp3.xreadgroup("g", "c", {"s3": ">"}) == {b"s3": [entries]}
    finally:
        await default.delete("s2", "s3")
        await default.aclose()
        await resp3.aclose()


@pytest.mark.asyncio
async def test_client_repr_hides_the_password():
    client = await connect(f"redis://user:{SECRET}@127.0.0.1:{_free_port()}/0", ping=False)
    try:
        assert SECRET not in repr(client)
        assert SECRET not in repr(client.connection_pool)
    finally:
        await client.aclose()


# --- connect(): failures --------------------------------------------------------------


@pytest.mark.asyncio
async def test_unreachable_server_fails_fast_with_masked_url():
    url = f"redis://user:{SECRET}@127.0.0.1:{_free_port()}/0"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(RedisUnavailable) as caught:
        await connect(url)
    assert time.monotonic() - started < 2
    exc = caught.value
    assert isinstance(exc, ConnectionError)
    assert exc.url == mask_url(url) == url.replace(SECRET, "***")
    assert mask_url(url) in str(exc)
    assert "refused" in str(exc).lower() or "connect" in str(exc).lower()
    assert SECRET not in _everything_printed(exc)


@pytest.mark.asyncio
async def test_a_server_that_accepts_and_never_answers_is_unavailable(monkeypatch):
    """A silent listener (a stopped or overloaded server, a proxy, not Redis): the ping
    has a bound of its own, CONNECT_TIMEOUT_S after the connect, instead of none."""
    monkeypatch.setattr("course_lib.redis.CONNECT_TIMEOUT_S", 0.2)
    accepted: list[socket.socket] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"redis://:{SECRET}@127.0.0.1:{listener.getsockname()[1]}/0"
        try:
            async with asyncio.timeout(60):  # a hang guard, not a measure
                connecting = asyncio.create_task(connect(url))
                conn, _ = await asyncio.to_thread(listener.accept)
                accepted.append(conn)
                with pytest.raises(RedisUnavailable, match="did not answer within") as caught:
                    await connecting
        finally:
            for conn in accepted:
                conn.close()
    assert mask_url(url) in str(caught.value)
    assert SECRET not in _everything_printed(caught.value)


@pytest.mark.asyncio
async def test_fake_server_outage_is_reported_like_a_real_one(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    fake_server().connected = False
    try:
        with pytest.raises(RedisUnavailable, match="fakeredis"):
            await connect()
    finally:
        fake_server().connected = True


@pytest.mark.asyncio
async def test_wrong_or_missing_password_is_unavailable_and_masked(redis_server_factory):
    server = redis_server_factory(password=SECRET)
    client = await connect(server.url)  # the right one works
    assert await client.ping()
    await client.aclose()
    for url in (server.url.replace(SECRET, "wrong-" + SECRET), server.url.replace(SECRET, "")):
        with pytest.raises(RedisUnavailable) as caught:
            await connect(url)
        assert mask_url(url) in str(caught.value)
        assert SECRET not in _everything_printed(caught.value)


@pytest.mark.parametrize(
    "url, reason",
    [
        (f"http://:{SECRET}@host:6379/0", "scheme"),
        (f"redis:/{SECRET}@host", "scheme"),
        ("localhost:6379", "scheme"),
        ("garbage", "scheme"),
        (f"redis://:{SECRET}@host:port/0", "port"),
        (f"redis://:{SECRET}@host:99999/0", "port"),
        (f"redis://:{SECRET}@host:0/0", "port"),
        (f"redis://:{SECRET}@host:6379/notadb", "database number"),
        (f"redis://:{SECRET}@host:6379/0?db=x", "db"),
        (f"unix://:{SECRET}@", "path"),
        (f"redis://:{SECRET}@[::1:6379/0", "IPv6"),
        (f"redis://:{SECRET}@host:6379/\N{SUPERSCRIPT TWO}", "database number"),
        # A password pasted without percent-encoding: urllib reads its tail as a port
        # (or a path); the message says to encode it, not that the port is wrong.
        (f"redis://user:{SECRET}/x@host:6379/0", "must be percent-encoded"),
        (f"redis://:{SECRET}#x@host:6379/0", "must be percent-encoded.*'#' as %23"),
        (f"redis://:{SECRET}?x@host:6379/0", "must be percent-encoded"),
        (f"redis://:a#{SECRET}@host:6379/0", "must be percent-encoded"),
        # A protocol redis-py refuses only when it connects: a usage error, not an outage.
        (f"redis://:{SECRET}@host:6379/0?protocol=9", "protocol must be 2 or 3"),
        (f"redis://:{SECRET}@host:6379/0?protocol=x", "protocol"),
    ],
)
@pytest.mark.asyncio
async def test_malformed_url_is_a_clear_value_error(url, reason):
    with pytest.raises(ValueError, match=reason) as caught:
        await connect(url)
    message = str(caught.value)
    assert repr(mask_url(url)) in message
    assert "redis://" in message and "rediss://" in message and "unix://" in message
    assert SECRET not in _everything_printed(caught.value)


# --- mask_url ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, masked",
    [
        ("redis://user:s3cret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://[::1]:6379/0", "redis://[::1]:6379/0"),
        ("redis://user:@host", "redis://user:***@host"),
        ("redis://s3cret@host", "redis://***@host"),  # redis-py: a user name; maybe not
        ("rediss://default:s3cret@cache.example.com:6380/1", "rediss://default:***@cache.example.com:6380/1"),
        ("unix:///run/redis.sock?db=2&password=s3cret", "unix:///run/redis.sock?db=2&password=***"),
        ("unix://u:s3cret@/run/r.sock?password=s3cret&db=1", "unix://u:***@/run/r.sock?password=***&db=1"),
        ("unix:///run/r.sock?password=a@b", "unix:///run/r.sock?password=***"),
        ("redis://:p%40ss%2Fw%3Ard@host/0", "redis://:***@host/0"),
        ("redis://:p@ss/w?rd#x:y@host:6379/0", "redis://:***@host:6379/0"),  # not encoded
        ("user:s3cret@host:6379", "user:***@host:6379"),  # not even a URL
        ("", ""),
    ],
)  # fmt: skip
def test_mask_url(url, masked):
    assert mask_url(url) == masked


_USERS = st.text(st.characters(blacklist_characters=":@/?#", codec="utf-8"), max_size=8)


@given(user=_USERS, password=st.text(min_size=1), host=st.sampled_from(["h", "10.0.0.1:6380/3"]))
def test_masked_url_does_not_depend_on_the_password(user, password, host):
    # The strongest form of "never shows the password": the output is the same
    # whatever the password is, raw or percent-encoded, in user-info or query.
    assume("password=" not in password.lower())  # raw text that *is* a query password
    for template in (
        "redis://{user}:{pw}@{host}",
        "rediss://{user}:{pw}@{host}?socket_timeout=1",
        "unix://{user}@/tmp/r.sock?db=1&password={pw}",
    ):
        forms = [quote(password, safe="")]
        if "?password" not in template and "&password" not in template:
            forms.append(password)  # pasted raw: ':', '@', '/', '?', '#' and all
        for pw in forms:
            masked = mask_url(template.format(user=user, pw=pw, host=host))
            assert masked == mask_url(template.format(user=user, pw="x", host=host))


@given(password=st.text(st.characters(codec="utf-8"), min_size=4))
def test_masked_url_never_shows_a_distinctive_password(password):
    password = "Zq" + password  # no accidental match with the rest of the URL
    for url in (
        f"redis://admin:{password}@db.example:6379/0",
        f"redis://:{quote(password, safe='')}@db.example:6379/0",
        f"unix:///run/r.sock?password={quote(password, safe='')}",
    ):
        masked = mask_url(url)
        assert password not in masked and quote(password, safe="") not in masked


# --- serve_fake_tcp ---------------------------------------------------------------------


_CHILD = """
import os, redis
r = redis.Redis.from_url(os.environ["REDIS_URL"], protocol=2, decode_responses=True)
print(r.get("from:parent"))
r.xadd("jobs", {"n": "1"})
r.set("from:child", "hello")
"""


@pytest.mark.asyncio
async def test_fake_tcp_server_is_shared_with_another_process():
    with serve_fake_tcp() as srv:
        assert srv.url == f"redis://127.0.0.1:{srv.port}/0" and srv.port != 0
        client = await connect(srv.url, decode_responses=True)
        try:
            await client.set("from:parent", "hi")
            await client.xgroup_create("jobs", "workers", id="0", mkstream=True)
            # Block on the stream while the child process adds to it.
            read = asyncio.create_task(
                client.xreadgroup("workers", "w1", {"jobs": ">"}, count=1, block=10_000)
            )
            await asyncio.sleep(0.05)  # let the read reach the server first
            out = await _python(_CHILD, env={"REDIS_URL": srv.url})
            assert out.strip() == "hi"
            [[stream, [(_, fields)]]] = await asyncio.wait_for(read, 10)
            assert (stream, fields) == ("jobs", {"n": "1"})
            assert await client.get("from:child") == "hello"
        finally:
            await client.aclose()


@pytest.mark.asyncio
async def test_fake_tcp_stop_is_idempotent_and_drops_clients():
    srv = serve_fake_tcp()
    client = await connect(srv.url)
    blocked = await connect(srv.url)
    try:
        await client.xgroup_create("s", "g", id="0", mkstream=True)
        # BLOCK 0 waits inside fakeredis's command, not on the socket: stop()
        # must still end it (the client sees the server go).
        read = asyncio.create_task(blocked.xreadgroup("g", "c", {"s": ">"}, block=0))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        srv.stop()
        srv.stop()
        assert time.monotonic() - started < 2
        assert "stopped" in repr(srv)
        with pytest.raises(redis.exceptions.ConnectionError):
            await asyncio.wait_for(read, 5)
        with pytest.raises(RedisUnavailable):
            await connect(srv.url)
    finally:
        await client.aclose()
        await blocked.aclose()


@pytest.mark.asyncio
async def test_fake_tcp_restart_on_the_same_port_keeps_data_when_asked():
    with serve_fake_tcp() as first:
        client = await connect(first.url)
        await client.set("k", "v")
        await client.aclose()
    with serve_fake_tcp(first.port, server=first.server) as again:
        assert again.url == first.url
        client = await connect(again.url)
        assert await client.get("k") == b"v"
        await client.aclose()


@pytest.mark.asyncio
async def test_fake_tcp_can_serve_the_in_process_fake(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    with serve_fake_tcp(server=fake_server()) as srv:
        local, remote = await connect(), await connect(srv.url)
        try:
            await local.set("both:see", "1")
            assert await remote.get("both:see") == b"1"
        finally:
            await local.delete("both:see")
            await local.aclose()
            await remote.aclose()


@pytest.mark.asyncio
async def test_fake_tcp_serves_what_the_course_uses():
    with serve_fake_tcp() as srv:
        client = await connect(srv.url, decode_responses=True)
        listener = await connect(srv.url, decode_responses=True)
        pubsub = listener.pubsub()
        try:
            await client.xgroup_create("s", "g", id="0", mkstream=True)
            started = time.monotonic()
            assert await client.xreadgroup("g", "c", {"s": ">"}, block=100) == []
            assert time.monotonic() - started >= 0.09  # it did block
            await client.xadd("s", {"n": "1"}, id="1-0")
            await client.xreadgroup("g", "c", {"s": ">"})
            assert await client.xautoclaim("s", "g", "c2", min_idle_time=0) == [
                "0-0", [("1-0", {"n": "1"})], []
            ]
            assert await client.eval("return redis.call('INCRBY', KEYS[1], 2)", 1, "n") == 2
            async with client.pipeline(transaction=True) as pipe:
                await pipe.watch("n")
                pipe.multi()
                pipe.incr("n")
                assert await pipe.execute() == [3]
            await pubsub.subscribe("events")
            assert (await pubsub.get_message(timeout=2))["type"] == "subscribe"
            assert await client.publish("events", "hi") == 1
            assert (await pubsub.get_message(timeout=2))["data"] == "hi"
        finally:
            await pubsub.aclose()
            await listener.aclose()
            await client.aclose()


# --- the fixtures: the same test on fake and real Redis ------------------------------


@pytest.mark.asyncio
async def test_redis_fixture_starts_empty(redis):
    assert await redis.dbsize() == 0
    await redis.set("left:behind", 1)  # the next test must not see it


@pytest.mark.asyncio
async def test_reply_shapes_are_the_same_on_fake_and_real(redis):
    assert await redis.dbsize() == 0
    await redis.hset("h", mapping={"a": 1, "b": "x"})
    assert await redis.hgetall("h") == {b"a": b"1", b"b": b"x"}
    await redis.zadd("z", {"m": 1.5})
    assert await redis.zrange("z", 0, -1, withscores=True) == [(b"m", 1.5)]

    await redis.xgroup_create("s", "g", id="0", mkstream=True)
    await redis.xadd("s", {"f": "v"}, id="1-0")
    assert await redis.xreadgroup("g", "c", {"s": ">"}, count=1, block=100) == [
        [b"s", [(b"1-0", {b"f": b"v"})]]
    ]
    assert await redis.xreadgroup("g", "c", {"s": ">"}, count=1, block=50) == []
    pending = await redis.xpending("s", "g")
    assert pending == {
        "pending": 1,
        "min": b"1-0",
        "max": b"1-0",
        "consumers": [{"name": b"c", "pending": 1}],
    }
    claimed = await redis.xautoclaim("s", "g", "c2", min_idle_time=0, start_id="0-0")
    assert claimed == [b"0-0", [(b"1-0", {b"f": b"v"})], []]
    assert await redis.xack("s", "g", "1-0") == 1


# --- the plugin: skip or fail without redis-server ------------------------------------


def test_missing_redis_server_skips(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("REQUIRE_REDIS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server not installed"):
        redis_server_binary()


def test_missing_redis_server_fails_when_required(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("REQUIRE_REDIS", "1")
    with pytest.raises(pytest.fail.Exception) as caught:
        redis_server_binary()
    assert str(caught.value) == MISSING


def test_too_old_redis_server_is_refused(monkeypatch, tmp_path: Path):
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'Redis server v=6.0.16 sha=00000000:0 malloc=jemalloc'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("REQUIRE_REDIS", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"6\.0\.16 is too old"):
        redis_server_binary()


@pytest.mark.asyncio
async def test_clients_have_no_socket_timeout_so_long_blocking_reads_work(redis):
    # redis-py 8's default of 5 s would cut XREADGROUP BLOCK 5000+ short and costs a
    # timer per reply (benchmarks/results/redis_client_probe.md).
    assert redis.connection_pool.connection_kwargs.get("socket_timeout") is None
