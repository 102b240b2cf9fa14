"""A Redis that accepts connections and never answers: the CLI gives up, the worker notices.

Three kinds of frozen server: a silent TCP listener (accepts, reads, never replies),
a proxy to a fakeredis that goes silent once the client sends a given command (to
freeze at a known step), and a real redis-server stopped with SIGSTOP (the kernel
still accepts connections for it; the process answers nothing). The CLI runs as a
subprocess, so a hang is a hang guard's TimeoutExpired (60 s, not a measure), and
every process is resumed and reaped whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from course_lib.distributed import TaskRegistry, Worker
from course_lib.distributed import worker as worker_module
from course_lib.redis import connect, serve_fake_tcp

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 60.0  # only so a hang fails the test instead of the session


class SilentListener:
    """Accepts TCP connections and reads what comes, never answering (a frozen server)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = f"redis://:s3cret@127.0.0.1:{self.port}/0"
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self._open.append(conn)

    def close(self) -> None:
        _close_listening(self.sock)
        for conn in self._open:
            conn.close()
        self._thread.join(timeout=10)


class FreezingProxy:
    """Forwards to ``upstream`` until a client sends ``trigger``; from then on, silence."""

    def __init__(self, upstream_port: int, trigger: bytes) -> None:
        self.upstream_port = upstream_port
        self.trigger = trigger
        self.frozen = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"redis://127.0.0.1:{self.sock.getsockname()[1]}/0"
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [conn, up]
            self._spawn(self._pump, conn, up, True)
            self._spawn(self._pump, up, conn, False)

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                return
            if from_client and self.trigger in data.upper():
                self.frozen.set()
            if self.frozen.is_set():
                continue  # read and dropped: the server "never answers"
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        _close_listening(self.sock)
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=10)


def _close_listening(sock: socket.socket) -> None:
    # shutdown() first: close() alone does not wake a thread blocked in accept().
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    listener = SilentListener()
    yield listener
    listener.close()


@pytest.fixture
def queue() -> str:
    return f"frozen-{uuid.uuid4().hex[:8]}"


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "course_lib.distributed", *argv], cwd=ROOT, env=env,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=HANG_GUARD_S,
    )  # fmt: skip


@contextlib.contextmanager
def stopped(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """The process frozen with SIGSTOP inside the block, resumed (SIGCONT) whatever happens."""
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGCONT)


# --- the CLI gives up: exit 3, or exit 4 at the --wait deadline ------------------------------


SILENT_COMMANDS = [
    ["stats"],
    ["enqueue", "add", "1", "2"],
    ["enqueue", "add", "1", "2", "--wait", "5"],
    ["dead", "list"],
    ["dead", "requeue", "--all"],
]


def run_together(runs: list) -> list:
    """Each of ``runs`` (a function, no argument) in a thread of its own, together: every
    one waits out a bound of seconds by design, so side by side they take one bound."""
    with ThreadPoolExecutor(len(runs)) as pool:
        return list(pool.map(lambda run: run(), runs))


def test_a_silent_server_ends_each_command_with_exit_3(silent):
    results = run_together([functools.partial(run_cli, "--redis-url", silent.url, *command)
                            for command in SILENT_COMMANDS])
    for command, done in zip(SILENT_COMMANDS, results, strict=True):
        assert done.returncode == 3, (command, done.stderr)
        assert "did not answer" in done.stderr and "s3cret" not in done.stderr, command
        assert "Traceback" not in done.stderr, command
        assert len(done.stderr.strip().splitlines()) == 1, (command, done.stderr)


FREEZES = [
    (["stats"], b"XLEN", "counting"),
    (["enqueue", "add", "1", "2"], b"EVAL", "enqueueing"),
    (["dead", "list"], b"XRANGE", "reading dead letters"),
    (["dead", "requeue", "--all"], b"XRANGE", "listing dead letters"),
]


def test_a_redis_that_freezes_after_the_connect_ends_a_command_with_exit_3(queue):
    """It answered the connect's PING, then nothing: each step has a bound of its own."""
    servers = [serve_fake_tcp() for _ in FREEZES]
    proxies = [FreezingProxy(server.port, trigger)
               for server, (_, trigger, _) in zip(servers, FREEZES, strict=True)]
    try:
        results = run_together([
            functools.partial(run_cli, "--redis-url", proxy.url, "--queue", queue, *command)
            for proxy, (command, _, _) in zip(proxies, FREEZES, strict=True)])
        assert all(proxy.frozen.is_set() for proxy in proxies)
    finally:
        for proxy, server in zip(proxies, servers, strict=True):
            proxy.close()
            server.stop()
    for (command, _, doing), done in zip(FREEZES, results, strict=True):
        assert done.returncode == 3, (command, done.stderr)
        assert f"did not answer within 5 s ({doing})" in done.stderr, command
        assert "Traceback" not in done.stderr, command


@pytest.mark.parametrize("trigger", [b"HGETALL", b"PSUBSCRIBE"])
def test_enqueue_wait_exits_4_at_its_deadline_when_redis_freezes_while_waiting(queue, trigger):
    """The server answers the enqueue, then nothing: the first read of the job's record,
    or the subscription the result waits on, never comes back."""
    server = serve_fake_tcp()
    proxy = FreezingProxy(server.port, trigger)
    try:
        done = run_cli("--redis-url", proxy.url, "--queue", queue,
                       "enqueue", "add", "1", "2", "--job-id", "f-1", "--wait", "1")
        assert proxy.frozen.is_set()
    finally:
        proxy.close()
        server.stop()
    assert (done.returncode, done.stdout) == (4, "f-1\n"), done.stderr
    assert "'f-1'" in done.stderr and "Traceback" not in done.stderr


def test_a_stopped_redis_server_ends_commands_with_exit_3(redis_server_factory, queue):
    """SIGSTOP: the kernel still accepts connections and nothing answers (a real server
    is needed: only it freezes with its listening socket open)."""
    server = redis_server_factory()
    url = server.url
    assert server._proc is not None
    with stopped(server._proc):
        stats, enqueue = run_together([
            functools.partial(run_cli, "--redis-url", url, "--queue", queue, "stats"),
            functools.partial(run_cli, "--redis-url", url, "--queue", queue, "enqueue", "add",
                              "1", "2", "--wait", "5")])
    for done in (stats, enqueue):
        assert done.returncode == 3 and "did not answer" in done.stderr, done.stderr
    # Resumed: the same commands work again.
    assert run_cli("--redis-url", url, "--queue", queue, "stats").returncode == 0


def test_enqueue_wait_exits_4_when_the_real_server_is_stopped_mid_wait(redis_server_factory,
                                                                        queue):
    """The job is enqueued, then the server is stopped (SIGSTOP, a real server: see above)
    wherever the wait has got to: exit 4 at the deadline, never a hang."""
    server = redis_server_factory()
    assert server._proc is not None
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "course_lib.distributed", "--redis-url", server.url, "--queue",
         queue, "enqueue", "add", "1", "2", "--job-id", "s-1", "--wait", "3"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "s-1\n"  # enqueued: the wait begins
        with stopped(server._proc):
            _, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 4 and "Traceback" not in err, err


def test_plain_enqueue_wait_exits_3_when_the_real_server_is_stopped_mid_wait(
        redis_server_factory, queue):
    """``--wait`` with no SECONDS waits as long as the job takes, but not on a server that
    has stopped answering (SIGSTOP, a real server: see above): its health PING, every
    HEALTH_PING_S and bounded by REPLY_TIMEOUT_S, ends the wait with exit 3."""
    server = redis_server_factory()
    assert server._proc is not None
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "course_lib.distributed", "--redis-url", server.url, "--queue",
         queue, "enqueue", "add", "1", "2", "--job-id", "p-1", "--wait"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "p-1\n"  # enqueued: the wait begins (no worker)
        with stopped(server._proc):
            _, err = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 3 and "Traceback" not in err, err
    assert "did not answer within 5 s (a health ping while waiting for the result)" in err
    assert len(err.strip().splitlines()) == 1, err


def test_plain_enqueue_wait_outlasts_many_health_pings_while_redis_answers(
        capsys, monkeypatch, redis_server, queue):
    """The PINGs only tell a frozen server apart: one that answers is waited on for as
    long as the job takes (here dozens of PINGs), and the result printed."""
    from _cli_support import WorkerProcess

    from course_lib.distributed import cli_common
    from course_lib.distributed.cli import main

    pings = []
    answered = cli_common._answered

    async def counted(step, doing):
        pings.append(doing)
        return await answered(step, doing)

    monkeypatch.setattr(cli_common, "HEALTH_PING_S", 0.02)
    monkeypatch.setattr(cli_common, "_answered", counted)
    monkeypatch.delenv("REDIS_URL", raising=False)
    with WorkerProcess(redis_server.url, queue, "--name", "pinged") as worker:
        worker.wait_for("worker pinged ready")
        code = main(["--redis-url", redis_server.url, "--queue", queue, "enqueue", "slow",
                     "1", "--job-id", "long", "--wait"])
        worker.proc.terminate()
        assert worker.exit_code() == 0
    out, err = capsys.readouterr()
    assert (code, out) == (0, 'long\n"slept 1"\n'), err
    assert pings.count("a health ping while waiting for the result") >= 5


# --- the worker notices, and carries on once the server answers again ------------------------


LOG = "course_lib.distributed.worker"
registry = TaskRegistry()


@registry.task
async def echo(value: int) -> int:
    return value


async def _eventually(condition, timeout_s: float = HANG_GUARD_S) -> None:
    async with asyncio.timeout(timeout_s):  # a hang guard, not a measure
        while not condition():  # noqa: ASYNC110 (log records: no Event to wait on)
            await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_a_worker_says_when_redis_stops_answering_and_when_it_answers_again(
        redis_server_factory, queue, caplog, monkeypatch):
    """SIGSTOP on a real server (see above). The worker's BLOCK read waits as it should;
    its maintenance step is bounded, so the freeze is logged once, and so is the end."""
    monkeypatch.setattr(worker_module, "ANSWER_TIMEOUT_S", 0.5, raising=False)
    caplog.set_level(logging.WARNING, logger=LOG)
    server = redis_server_factory()
    assert server._proc is not None
    client = await connect(server.url)
    worker = Worker(client, registry, queue=queue, block_s=2.0, visibility_timeout_s=10,
                    maintenance_s=0.1, reconnect_max_s=0.2)
    said = lambda text: [r for r in caplog.records if text in r.getMessage()]  # noqa: E731
    try:
        await worker.start()
        with stopped(server._proc):
            await _eventually(lambda: said("not answering"))
            await asyncio.sleep(1.0)  # a few more bounded tries: still one line
        await _eventually(lambda: said("reachable again"))
        assert len(said("not answering")) == 1
        handle = await worker.queue.enqueue("echo", 7)
        assert await asyncio.wait_for(handle.result(), HANG_GUARD_S) == 7
    finally:
        await worker.stop()
        await worker.queue.aclose()
        await client.aclose()
