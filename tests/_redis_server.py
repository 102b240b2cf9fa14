"""pytest plugin: a real redis-server for the session, and tests that run on fake and real Redis.

Fixtures:
- ``redis_server`` (session): a ``RedisServer`` on a free loopback port in a
  temporary folder, no persistence. ``.url``, ``.port``, ``.dir``,
  ``.stop()``, ``.restart()``, ``.kill()``, ``.log_tail()``.
- ``redis_server_factory`` (function): ``make(appendonly=True)`` starts a
  server of the test's own (for tests that stop, kill or restart it); every
  server it made is stopped after the test.
- ``redis_url``: ``None`` (the shared in-process fakeredis) or the real
  server's URL; parametrized, ids ``fake`` and ``real``.
- ``redis``: ``await course_lib.redis.connect(redis_url)`` after FLUSHALL, so
  a test that takes it runs twice, once per kind of server.

Tests that use a real server carry the ``real_redis`` marker (added here), so
``-m "not real_redis"`` runs without one. Without the ``redis-server`` binary
they skip, unless ``REQUIRE_REDIS=1`` (CI), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import NoReturn

import pytest
import pytest_asyncio
import redis as redis_sync
from redis.asyncio import Redis as AsyncRedis

from course_lib.redis import connect

MISSING = "redis-server not installed: apt-get install redis-server (CI installs it)"
# XAUTOCLAIM (reclaiming stale jobs) arrived in Redis 6.2.
MIN_VERSION = (6, 2)
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


class RedisServer:
    """One redis-server process on 127.0.0.1, its files and log in ``dir``.

        srv = RedisServer(binary, tmp_path, appendonly=True).start()
        srv.restart()        # same port; with appendonly the data survives
        srv.stop()
    """

    def __init__(
        self,
        binary: str,
        dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = False,
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.binary = binary
        self.dir = Path(dir)
        self.port = port or _free_port()
        self.appendonly = appendonly
        self.password = password
        self.extra_args = list(extra_args)
        self.log_path = self.dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        aof = " appendonly" if self.appendonly else ""
        return f"<RedisServer 127.0.0.1:{self.port}{aof} {state} dir={self.dir}>"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RedisServer:
        """Start the process and wait until it answers PING (RuntimeError with the log if not)."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            "--dir", str(self.dir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--save", "",  # no RDB snapshots: a test's data must not leak into the next run
            "--appendonly", "yes" if self.appendonly else "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        # In pytest's process group, on purpose: when pytest is killed as a
        # group (Ctrl-C, a CI timeout), the server goes with it, not left running.
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_until_ready()
        return self

    def stop(self) -> None:
        """SIGTERM (Redis then writes its AOF and exits), SIGKILL if it hangs; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to flush anything (for fault tests)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def restart(self, *, appendonly: bool | None = None) -> RedisServer:
        """Stop, then start on the same port and folder (optionally switching appendonly).

        It blocks: from a coroutine, ``await asyncio.to_thread(server.restart)``.
        Called inline, the loop cannot see the old connections close, and each
        client's next command fails once with ConnectionError (clients made by
        ``connect(url)`` do not retry) before the pool reconnects.
        """
        self.stop()
        if appendonly is not None:
            self.appendonly = appendonly
        return self.start()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    def _wait_until_ready(self) -> None:
        assert self._proc is not None
        client = redis_sync.Redis(
            host="127.0.0.1",
            port=self.port,
            password=self.password,
            socket_connect_timeout=0.5,
            socket_timeout=0.5,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if self._proc.poll() is not None:
                    problem = f"exited with code {self._proc.returncode}"
                    break
                try:
                    if client.ping():
                        return
                # Refused until it listens; BusyLoadingError while it replays the AOF.
                except redis_sync.exceptions.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    problem = f"did not answer PING within {START_TIMEOUT_S:g}s"
                    break
                time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} {problem}; log:\n{self.log_tail()}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _missing(reason: str) -> NoReturn:
    if os.environ.get("REQUIRE_REDIS") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def redis_server_binary() -> str:
    """The path of a recent enough ``redis-server``, or skip (fail under REQUIRE_REDIS=1)."""
    binary = shutil.which("redis-server")
    if binary is None:
        _missing(MISSING)
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"v=((\d+)\.(\d+)\S*)", out.stdout)
    if found is None or (int(found[2]), int(found[3])) < MIN_VERSION:
        version = found[1] if found else "of unknown version"
        _missing(f"redis-server {version} is too old: the course needs Redis 6.2+ (XAUTOCLAIM)")
    return binary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that ask for a real server directly; `redis_url` marks its own "real" case.
    for item in items:
        if {"redis_server", "redis_server_factory"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_redis)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server shared by the session; a test that stops it must start it again."""
    server = RedisServer(redis_server_binary(), tmp_path_factory.mktemp("redis-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RedisServer]]:
    """``make(appendonly=..., password=..., extra_args=...)``: a started server, the test's."""
    binary = redis_server_binary()
    made: list[RedisServer] = []

    def make(
        *,
        appendonly: bool = False,
        password: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> RedisServer:
        folder = tmp_path_factory.mktemp("redis-server")
        server = RedisServer(
            binary, folder, appendonly=appendonly, password=password, extra_args=extra_args
        )
        made.append(server)
        return server.start()

    yield make
    for server in made:
        server.stop()


@pytest.fixture(
    params=["fake", pytest.param("real", marks=pytest.mark.real_redis)], ids=["fake", "real"]
)
def redis_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """``None`` for the in-process fakeredis, the real server's URL for ``real``."""
    if request.param == "real":
        return request.getfixturevalue("redis_server").url
    # A REDIS_URL in the environment would turn connect(None) into a real client.
    monkeypatch.delenv("REDIS_URL", raising=False)
    return None


@pytest_asyncio.fixture
async def redis(redis_url: str | None) -> AsyncIterator[AsyncRedis]:
    """A client of an empty database (FLUSHALL first), closed after the test."""
    client = await connect(redis_url)
    try:
        await client.flushall()
        yield client
    finally:
        await client.aclose()


@pytest_asyncio.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AsyncRedis]:
    """The shared in-process fakeredis only, emptied: for looptime tests (no sockets, and
    no time passes in Redis, so virtual time is the tasks' own)."""
    monkeypatch.delenv("REDIS_URL", raising=False)
    client = await connect(None)
    try:
        await client.flushall()
        yield client
    finally:
        await client.aclose()
