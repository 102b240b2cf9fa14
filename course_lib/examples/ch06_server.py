"""Chapter 6's backend: a small TCP server with real latency and a capacity, in a subprocess.

    with start_server(latency_s=0.02, capacity=16) as server:   # a process of its own
        async with Client(server.address) as client:
            seconds = await client.get()                         # one request, timed
        print(await fetch_stats(server.address))                 # {'served': 1, ...}

The server answers each ``GET`` line with ``OK`` after ``latency_s`` (an
``asyncio.sleep``: a database or an API that takes that long), serving at most
``capacity`` requests at once. Past that, requests wait in its queue: throughput stays
at ``capacity / latency_s`` and every extra request only waits longer, as a real
backend does (a connection pool, a thread pool, a rate limit). ``cpu_s`` adds that much
CPU work per request on the server's loop, for a server whose own CPU is the limit.

The wire protocol, one line each way, on connections that stay open (keep-alive):
``GET`` -> ``OK``; ``STATS`` -> one JSON line (``served``, ``active``, ``max_active``,
``queued_max``, and ``cpu_s``, the server process's CPU time so far); ``RESET`` -> ``OK``
(zero the counters).

Run alone: ``python -m course_lib.examples.ch06_server --latency-ms 20 --capacity 16``
prints ``listening 127.0.0.1 PORT`` and serves until its stdin closes (so it ends
with the process that started it, even one killed) or it gets SIGTERM or SIGINT.
"""

from __future__ import annotations

__all__ = ["Client", "ServerProcess", "fetch_stats", "reset_stats", "start_server"]

import argparse
import asyncio
import atexit
import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import Any

_READY = "listening"


class ServerProcess:
    """A running ch06 server in a subprocess; ``stop()`` (or ``with``) ends it.

        server = start_server(latency_s=0.02, capacity=16)
        server.address   # ('127.0.0.1', 40123)
        server.stop()    # 0: it exited cleanly
    """

    def __init__(self, proc: subprocess.Popen[str], address: tuple[str, int],
                 latency_s: float, capacity: int, cpu_s: float) -> None:
        self.proc = proc
        self.address = address
        self.latency_s = latency_s
        self.capacity = capacity
        self.cpu_s = cpu_s
        atexit.register(self.stop)

    def __repr__(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited {self.proc.returncode}"
        return (f"<ServerProcess {self.address[0]}:{self.address[1]} {state}, latency "
                f"{self.latency_s * 1e3:g} ms, capacity {self.capacity}, pid {self.proc.pid}>")

    @property
    def max_rate_per_s(self) -> float:
        """The most it can serve per second: capacity / latency (and 1 / cpu_s)."""
        rate = self.capacity / self.latency_s if self.latency_s > 0 else float("inf")
        return min(rate, 1 / self.cpu_s) if self.cpu_s > 0 else rate

    def stop(self, timeout_s: float = 5.0) -> int:
        """Close its stdin (it ends at once), wait; kill it if it lingers. Returns its code."""
        atexit.unregister(self.stop)
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_server(*, latency_s: float = 0.02, capacity: int = 16, cpu_s: float = 0.0,
                 timeout_s: float = 30.0) -> ServerProcess:
    """Start the server on a free loopback port in a subprocess; return once it listens."""
    if latency_s < 0 or cpu_s < 0 or capacity < 1:
        raise ValueError(f"latency_s and cpu_s must be >= 0 and capacity >= 1, not "
                         f"{latency_s!r}, {cpu_s!r}, {capacity!r}")
    cmd = [sys.executable, "-m", "course_lib.examples.ch06_server",
           "--latency-ms", repr(latency_s * 1e3), "--capacity", str(capacity),
           "--cpu-ms", repr(cpu_s * 1e3)]
    env = {**os.environ, "PYTHONPATH": _course_root() + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    line = _read_line(proc, timeout_s)
    parts = line.split()
    if len(parts) != 3 or parts[0] != _READY:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the ch06 server did not start (exit {proc.returncode}): {line!r}")
    return ServerProcess(proc, (parts[1], int(parts[2])), latency_s, capacity, cpu_s)


def _course_root() -> str:
    # The folder that holds course_lib, so that the child imports this very copy.
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            proc.kill()
            proc.wait()
            raise TimeoutError(f"the ch06 server did not say it listens within {timeout_s} s")
    return proc.stdout.readline().strip()


class Client:
    """Requests to the server over kept-alive connections, one per request in flight.

        async with Client(address) as client:
            seconds = await client.get()

    A connection is taken from the idle ones (or opened) for each request and given
    back after it; a request cancelled half-way closes its connection instead (its
    reply would otherwise arrive to the next user). So ``n`` requests at once hold
    ``n`` connections, the way an HTTP client's connection pool behaves.
    """

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def connections(self) -> int:
        """Connections open now (idle or in use)."""
        return len(self._open)

    async def get(self) -> float:
        """One request; returns its latency in seconds as the client saw it."""
        start = time.perf_counter()
        if self._idle:
            reader, writer = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(*self.address)
            self._open.add(writer)
        try:
            writer.write(b"GET\n")
            line = await reader.readline()
            if line != b"OK\n":
                raise ConnectionError(f"unexpected reply {line!r} from {self.address}")
        except BaseException:
            self._open.discard(writer)
            writer.close()
            raise
        self._idle.append((reader, writer))
        return time.perf_counter() - start

    async def aclose(self) -> None:
        writers, self._open, self._idle = list(self._open), set(), []
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _command(address: tuple[str, int], command: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(command + b"\n")
        return await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def fetch_stats(address: tuple[str, int]) -> dict[str, Any]:
    """The server's counters: served, active, max_active (never above capacity), queued_max.

    Also ``cpu_s``, the server process's CPU seconds so far: two readings around a run
    say how busy its loop was.
    """
    return json.loads(await _command(address, b"STATS"))


async def reset_stats(address: tuple[str, int]) -> None:
    """Zero the server's counters (between two measured runs)."""
    await _command(address, b"RESET")


# --- the server, as it runs in its own process -------------------------------------


class _Server:
    def __init__(self, latency_s: float, capacity: int, cpu_s: float) -> None:
        self.latency_s, self.cpu_s = latency_s, cpu_s
        self.slots = asyncio.Semaphore(capacity)
        self.writers: set[asyncio.StreamWriter] = set()
        self.reset()

    def reset(self) -> None:
        self.served = self.max_active = self.waiting = self.queued_max = 0
        self.active = 0

    def stats(self) -> dict[str, int]:
        return {"served": self.served, "active": self.active, "max_active": self.max_active,
                "queued_max": self.queued_max, "cpu_s": time.process_time()}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        try:
            while line := await reader.readline():
                command = line.strip()
                if command == b"GET":
                    await self._serve_one()
                    writer.write(b"OK\n")
                elif command == b"STATS":
                    writer.write(json.dumps(self.stats()).encode() + b"\n")
                elif command == b"RESET":
                    self.reset()
                    writer.write(b"OK\n")
                else:
                    writer.write(b"ERR unknown command\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _serve_one(self) -> None:
        queued = self.slots.locked()  # every slot taken: this request waits its turn
        if queued:
            self.waiting += 1
            self.queued_max = max(self.queued_max, self.waiting)
        try:
            await self.slots.acquire()
        finally:
            if queued:
                self.waiting -= 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.cpu_s:
                _spin(self.cpu_s)  # CPU work on the server's loop: it serves no one meanwhile
            await asyncio.sleep(self.latency_s)
        finally:
            self.active -= 1
            self.slots.release()
        self.served += 1


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def _serve(latency_s: float, capacity: int, cpu_s: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    # stdin closing means the parent is gone (or called stop()): end with it.
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)),
                     daemon=True).start()
    state = _Server(latency_s, capacity, cpu_s)
    server = await asyncio.start_server(state.handle, "127.0.0.1", 0, backlog=4096)
    host, port = server.sockets[0].getsockname()[:2]
    print(_READY, host, port, flush=True)
    async with server:
        await stop.wait()
        server.close()
        for writer in list(state.writers):
            writer.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--capacity", type=int, default=16)
    parser.add_argument("--cpu-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.latency_ms / 1e3, args.capacity, args.cpu_ms / 1e3))


if __name__ == "__main__":
    main()
