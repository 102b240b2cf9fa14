"""One way to reach Redis: a real server when a URL says so, else a fake one.

    r = await connect()                   # REDIS_URL if set, else the in-process fakeredis
    r = await connect("redis://:pw@host:6379/0", decode_responses=True)

Every chapter runs with no server installed, and the same code runs on a real
server when ``REDIS_URL`` is set. Without a URL, every ``connect()`` in a
process talks to one shared ``fakeredis.FakeServer``, so a queue client and a
worker started in the same notebook see the same data. To start over, send
``FLUSHALL``, as you would to a real server.

Several processes cannot share an in-process fake. ``serve_fake_tcp()`` puts a
fakeredis server on a real TCP port (from a thread of the current process), so
worker subprocesses can join with ``REDIS_URL=srv.url`` and still no server is
installed.

A Redis Cluster is one URL too, its scheme ``redis+cluster://`` (``rediss+cluster://``
for TLS) and one or more seed nodes, comma-separated; ``connect()`` then returns a
``redis.asyncio.RedisCluster``, which finds the other nodes and the slot map by itself:

    r = await connect("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000")

Passwords never reach a message, a ``repr`` or a log line: ``mask_url()``
hides them, and every error raised here names the masked URL.
"""

from __future__ import annotations

__all__ = [
    "CONNECT_TIMEOUT_S",
    "PROTOCOL",
    "FakeTcpServer",
    "RedisUnavailable",
    "cluster_seeds",
    "connect",
    "fake_server",
    "mask_url",
    "serve_fake_tcp",
]

import asyncio
import contextlib
import os
import re
import socket
import threading
from typing import Any
from urllib.parse import unquote, urlsplit

import fakeredis
import redis.asyncio
import redis.exceptions

# RESP version every client speaks unless told otherwise. redis-py 8 defaults
# to RESP3, redis-py 5-7 (and arq, SAQ, most examples) to RESP2, and the reply
# shapes differ: XREADGROUP gives [[stream, entries]] in RESP2 but
# {stream: [entries]} in RESP3, and so do XPENDING, XINFO, ZRANGE WITHSCORES...
# Code that must read the same on fakeredis, a real server and every redis-py
# version pins one. fakeredis's TCP server also starts connections in RESP2.
PROTOCOL = 2

# A reachable server answers on a LAN within milliseconds; a wrong host should
# fail while the learner is still looking at the cell, not after a minute. It
# bounds the TCP connect (socket_connect_timeout), and connect()'s ping (connect,
# handshake, PING) gets that plus this once more: a server that accepts and never
# answers (SIGSTOP, a silent proxy, not Redis at all) fails after 4 s.
CONNECT_TIMEOUT_S = 2.0

_SCHEMES = ("redis", "rediss", "unix")
# A cluster: the scheme says so (a query flag would be easy to drop when a URL is
# rebuilt, and a cluster client on a single server fails at its first command).
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
_EXPECTED = (
    "expected redis://[[user]:password@]host[:port][/db], rediss://... (TLS), "
    "unix://[[user]:password@]/path/to/socket[?db=N] "
    "or redis+cluster://[[user]:password@]host:port[,host:port...] (a Redis Cluster)"
)
# redis-py also reads a password from the query string (unix:// URLs need it).
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)

_fake_lock = threading.Lock()
_fake: fakeredis.FakeServer | None = None


class RedisUnavailable(ConnectionError):
    """No Redis answered at ``url`` (masked); the message says why.

        try:
            r = await connect("redis://:pw@db.example:6379/0")
        except RedisUnavailable as exc:
            print(exc)  # Redis unavailable at redis://:***@db.example:6379/0: Error 111 ...
    """

    def __init__(self, url: str, cause: str) -> None:
        super().__init__(f"Redis unavailable at {url}: {cause}")
        self.url = url


def mask_url(url: str) -> str:
    """``url`` with every password replaced by ``***``, fit for logs and messages.

        mask_url("redis://user:s3cret@host:6379/0")        # 'redis://user:***@host:6379/0'
        mask_url("unix:///run/redis.sock?password=s3cret")  # 'unix:///run/redis.sock?password=***'

    When in doubt it hides more: a lone user-info part (``redis://s3cret@host``,
    which redis-py would read as a user name) is masked whole.
    """
    return _mask(url)[0]


def fake_server() -> fakeredis.FakeServer:
    """The process's shared fakeredis server, the one ``connect()`` uses without a URL.

        fake_server().connected = False   # every fake client now fails to connect
    """
    global _fake
    with _fake_lock:  # runtime.run() may call connect() from helper threads
        if _fake is None:
            _fake = fakeredis.FakeServer()
        return _fake


async def connect(
    url: str | None = None, *, ping: bool = True, **kw: Any
) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """A ``redis.asyncio.Redis`` client for ``url``, ``$REDIS_URL``, or the shared fake.

        r = await connect()                                # fake, unless REDIS_URL is set
        r = await connect("redis://localhost:6379/0")      # a real server
        r = await connect(decode_responses=True)           # **kw goes to the client
        r = await connect("redis+cluster://h1:7000,h2:7000")  # a RedisCluster (see below)

    An empty ``url`` or ``REDIS_URL`` counts as unset. ``protocol`` defaults to
    ``PROTOCOL`` (2), ``socket_timeout`` to None (see the comment below) and
    ``socket_connect_timeout`` to ``CONNECT_TIMEOUT_S``.
    With ``ping`` the server is asked once, so a wrong address fails here
    (``RedisUnavailable``) rather than at the first command; so does a server
    that accepts the connection and does not answer (frozen, overloaded, not
    Redis): the ping, connect included, gets ``socket_connect_timeout`` +
    ``CONNECT_TIMEOUT_S`` (4 s by default).
    Later commands have no such bound (``socket_timeout`` None): bound your own
    waits. A malformed URL (``?protocol=9`` included) raises ``ValueError``.
    Close the client with ``await r.aclose()``.

    Commands are not retried (``from_url`` clients get no ``retry``, unlike
    ``Redis(host=...)``): after a server restart, a command sent on a
    connection the loop has not yet seen close raises ``ConnectionError``,
    which the caller handles (the
    worker of chapter 4 backs off and reconnects). Pass ``retry=Retry(...)``
    (``redis.asyncio.retry``) to retry inside the client instead.

    ``redis+cluster://[[user]:password@]host:port[,host:port...][/0][?option=value]``
    (``rediss+cluster://`` for TLS) returns a ``redis.asyncio.RedisCluster`` with the
    same bounds (protocol, timeouts, the bounded ping, to every master). Any reachable
    seed is enough: the client reads the slot map from it and reaches every node. No
    database but 0 on a cluster. Unlike a single server's client, it keeps redis-py's
    cluster retries (3, with backoff): a moved slot or a failed-over master is found
    again by retrying after re-reading the slot map, which is its job.
    """
    url = url or os.environ.get("REDIS_URL") or None
    kw.setdefault("protocol", PROTOCOL)
    # redis-py 8 reads and writes under a 5 s socket_timeout by default: a timer per
    # reply and a wait_for per send (about 15 % of the Streams loop's throughput,
    # benchmarks/results/redis_client_probe.md), XREADGROUP BLOCK >= 5 s fails, and on
    # 3.11 a cancel landing in that wait_for can be lost. Callers bound their own waits.
    kw.setdefault("socket_timeout", None)
    if url is not None and url.partition("://")[0].lower() in _CLUSTER_SCHEMES:
        from ._cluster import connect_cluster  # here: it imports this module

        return await connect_cluster(url, ping=ping, **kw)
    if url is None:
        shown = "fakeredis (in process)"
        client: redis.asyncio.Redis = fakeredis.FakeAsyncRedis(server=fake_server(), **kw)
    else:
        shown = mask_url(url)
        _check_url(url)
        kw.setdefault("socket_connect_timeout", CONNECT_TIMEOUT_S)
        try:
            client = redis.asyncio.Redis.from_url(url, **kw)
        except ValueError as exc:  # e.g. ?db=x: redis-py's reason, scrubbed to be sure
            reason = _scrub(str(exc), url)
            raise ValueError(f"malformed Redis URL {shown!r}: {reason}; {_EXPECTED}") from None
        protocol = client.connection_pool.connection_kwargs.get("protocol")
        if str(protocol) not in ("2", "3"):  # e.g. ?protocol=9: a usage error, not an outage
            await client.aclose()
            raise ValueError(f"malformed Redis URL {shown!r}: protocol must be 2 or 3, "
                             f"not {_scrub(str(protocol), url)!r}; {_EXPECTED}")
    if ping:
        # The connect has its own bound (socket_connect_timeout); the ping as a whole
        # (connect, handshake, PING) gets CONNECT_TIMEOUT_S more: with no socket_timeout,
        # a server that accepts and never answers would otherwise hold us for ever.
        bound_s = (kw.get("socket_connect_timeout") or 0) + CONNECT_TIMEOUT_S
        try:
            async with asyncio.timeout(bound_s if url is not None else None) as scope:
                await client.ping()
        except BaseException as exc:
            await client.aclose()  # also when cancelled: leave no half-open pool behind
            # ConnectionError covers refused, unresolvable and wrong password
            # (AuthenticationError); InvalidResponse is "something answered, not Redis".
            if not isinstance(exc, (redis.exceptions.RedisError, OSError)):
                raise
            cause = _scrub(str(exc) or type(exc).__name__, url or "")
            if scope.expired():
                cause = (f"it did not answer within {bound_s:g} s (a server that accepts "
                         "connections and never replies: stopped, overloaded, or not Redis)")
            # `from None`: a chained traceback would print redis-py's own
            # message, which we have not scrubbed.
            raise RedisUnavailable(shown, cause) from None
    return client


class FakeTcpServer:
    """A fakeredis server on a TCP port, served by threads of this process.

        with serve_fake_tcp() as srv:
            subprocess.run([sys.executable, "worker.py"], env={**os.environ, "REDIS_URL": srv.url})
            r = await connect(srv.url)

    It serves what the course uses (tested): Streams with consumer groups
    (XREADGROUP BLOCK, XACK, XPENDING, XAUTOCLAIM), pub/sub, Lua, WATCH/MULTI,
    HELLO 3. ``stop()`` drops every client connection, as a dying server would.

    Limits (fakeredis 2.41): no INFO; BLMOVE on a missing list returns at once.
    A client that disconnects (or is killed) inside a blocking read stays
    blocked in the server, so the next entry can still be delivered to it and
    sit in its PEL until XAUTOCLAIM (a real server cancels the read): give
    blocking reads a finite timeout.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, server: fakeredis.FakeServer | None = None
    ) -> None:
        self._tcp = _TcpFakeServer((host, port))
        if server is not None:
            self._tcp.fake_server = server
        self.server = self._tcp.fake_server
        self.host, self.port = self._tcp.server_address[:2]
        self.url = f"redis://{self.host}:{self.port}/0"
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(
            target=self._tcp.serve_forever,
            kwargs={"poll_interval": 0.05},  # shutdown() waits up to one interval
            name=f"fakeredis-tcp:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"<FakeTcpServer {self.url} {'stopped' if self._stopped else 'serving'}>"

    def stop(self) -> None:
        """Close the listening socket and every client connection; safe to call twice."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        self._tcp.shutdown()  # also tells every connection handler to leave its loop
        self._tcp.server_close()
        self._tcp.drop_connections()
        self._thread.join()

    def __enter__(self) -> FakeTcpServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve_fake_tcp(
    port: int = 0, host: str = "127.0.0.1", *, server: fakeredis.FakeServer | None = None
) -> FakeTcpServer:
    """Start a fakeredis TCP server (port 0: a free one) in a daemon thread.

        srv = serve_fake_tcp()                        # an empty server of its own
        srv = serve_fake_tcp(server=fake_server())    # the data connect() sees without a URL
        srv.stop(); srv = serve_fake_tcp(srv.port, server=srv.server)  # a "restart" that keeps data
    """
    return FakeTcpServer(host, port, server)


class _TcpFakeServer(fakeredis.TcpFakeServer):
    """fakeredis's server, with connections that cannot outlive stop()."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(address)
        # fakeredis makes its per-connection threads non-daemon and joins them
        # on close. A handler inside `XREADGROUP ... BLOCK 0` waits in the
        # command, not on its socket, so that join would hang stop() and then
        # interpreter exit. Daemon threads, not joined; drop_connections()
        # makes their clients see the server go.
        self.daemon_threads = True
        self.block_on_close = False
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._open_lock:
            open_now = list(self._open)
        for sock in open_now:
            # shutdown, not close: the handler thread still owns the descriptor,
            # and closing it under that thread could hit a reused fd.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _mask(url: str) -> tuple[str, list[str]]:
    """The masked URL, and the secrets it hid (for scrubbing other text)."""
    secrets: list[str] = []

    def hide(match: re.Match[str]) -> str:
        secrets.append(match.group(2))
        return match.group(1) + "***"

    scheme, sep, rest = url.partition("://")
    if not sep:  # not a URL, but "user:pw@host" is still worth hiding
        scheme, rest = "", url
    # Query passwords first: one may hold an '@' that is not the user-info's.
    rest = _QUERY_PASSWORD.sub(hide, rest)
    # The user-info ends at the LAST '@', as urllib reads it, so a password
    # pasted without percent-encoding ('/', '?', '#', '@', ':') stays inside.
    userinfo, at, hostpart = rest.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if colon and not any(c in user for c in "/?#"):
            secrets.append(password)
            userinfo = f"{user}:***"
        else:
            secrets.append(userinfo)
            userinfo = "***"
        rest = f"{userinfo}@{hostpart}"
    return scheme + sep + rest, [s for s in secrets if s]


def _scrub(text: str, url: str) -> str:
    """``text`` with every secret of ``url`` (raw or percent-decoded) replaced by ``***``."""
    for secret in _mask(url)[1]:
        for form in {secret, unquote(secret)}:
            text = text.replace(form, "***")
    return text


def _check_url(url: str) -> None:
    """Raise ValueError for what redis-py would reject, or silently misread."""
    shown = mask_url(url)

    def bad(reason: str) -> ValueError:
        # The reason may quote a piece of the URL: a password pasted without
        # percent-encoding can land in the "port" or the "path".
        return ValueError(f"malformed Redis URL {shown!r}: {_scrub(reason, url)}; {_EXPECTED}")

    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "Invalid IPv6 URL": an unclosed '['
        raise bad(str(exc)) from None
    if parts.scheme not in _SCHEMES or "://" not in url:
        raise bad("the scheme must be redis://, rediss:// or unix://")
    if parts.scheme == "unix":
        if not parts.path:
            raise bad("unix:// needs the socket's path")
        return
    try:
        port = parts.port  # parsed lazily: 'host:abc' or 'host:99999' raise here
    except ValueError:
        port = 0
    if port == 0:  # redis-py would quietly use 6379 for port 0
        raise bad(_unencoded(url) or "the port must be a number from 1 to 65535")
    # redis-py quietly uses db 0 when the path is not a number.
    db = unquote(parts.path).strip("/")
    if db and not (db.isascii() and db.isdigit()):
        raise bad(_unencoded(url) or f"the path must be a database number, not {db!r}")


def _unencoded(url: str) -> str | None:
    """The likely reason when the user-info holds '/', '?' or '#' (not percent-encoded)."""
    # urllib ends the host part at the first '/', '?' or '#', so an '@' after one of
    # them is a password pasted as it is: its tail is read as the port or the path.
    rest = url.partition("://")[2]
    userinfo, at, _ = rest.rpartition("@")
    if at and any(c in userinfo for c in "/?#"):
        return ("a password (or user name) holding '/', '?' or '#' must be percent-encoded "
                "('/' as %2F, '?' as %3F, '#' as %23, '@' as %40: urllib.parse.quote(password, "
                "safe='')); as it is, what follows that character is read as the port or path")
    return None


def cluster_seeds(url: str) -> tuple[list[tuple[str, int]], str]:
    """The seed nodes of a ``redis+cluster://`` URL, and the single-node URL of the first.

        cluster_seeds("redis+cluster://:pw@a:7000,b:7001/0?protocol=3")
        # ([('a', 7000), ('b', 7001)], 'redis://:pw@a:7000/0?protocol=3')

    ValueError (naming the masked URL) when it is not one, or a seed has no port.
    """
    from ._cluster import cluster_seeds as seeds

    return seeds(url)
