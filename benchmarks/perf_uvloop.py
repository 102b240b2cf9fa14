"""asyncio's own event loop against uvloop, where the loop is the work and where Redis is.

    python benchmarks/perf_uvloop.py [--rounds 4] [--quick]

Each measurement runs in a fresh child process (this script with ``--child``) on one
loop, ``asyncio.run()`` or ``uvloop.run()``, so nothing of one loop leaks into the
other:

- **echo, streams**: an echo server (``asyncio.start_server``) and 20 clients on
  the same loop, each sending 100-byte messages and waiting for each echo
  (``readexactly``), over loopback TCP. Almost all the work is the loop's own:
  waking on a socket, calling back, writing.
- **echo, protocols**: the same with ``asyncio.Protocol`` on both sides (no
  StreamReader, no coroutine per message): what uvloop's own benchmarks stress.
- **Redis-bound worker**: course_lib's ``Worker`` (concurrency 10) consuming 3,000
  no-op jobs from a real redis-server (started here, loopback, no persistence),
  enqueued before it starts. Most of the time goes to redis-py and Redis itself.

Each round runs every (case, loop) once, in rotated order; messages or jobs per
second, median and min-max over rounds, and uvloop's ratio to asyncio within each
round. Writes benchmarks/results/perf_uvloop.json (machine, load before and after).
Skips the Redis case, saying so, when redis-server is not installed; skips all when
uvloop is not (Windows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLIENTS = 20
MESSAGE = b"x" * 100
HERE = Path(__file__).resolve()


# --- the child: one case on one loop ------------------------------------------------


async def _echo_streams(messages: int) -> float:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(messages):
            writer.write(MESSAGE)
            await reader.readexactly(len(MESSAGE))
        writer.close()
        await writer.wait_closed()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    seconds = time.perf_counter() - start
    server.close()
    return seconds


class _EchoServer(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class _EchoClient(asyncio.Protocol):
    def __init__(self, messages: int, done: asyncio.Future[None]) -> None:
        self.left, self.done, self.pending = messages, done, 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(MESSAGE)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.pending += len(data)
        if self.pending < len(MESSAGE):
            return
        self.pending -= len(MESSAGE)
        self.left -= 1
        if self.left:
            self.transport.write(MESSAGE)  # type: ignore[attr-defined]
        else:
            self.transport.close()
            self.done.set_result(None)


async def _echo_protocols(messages: int) -> float:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_EchoServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    start = time.perf_counter()
    dones = [loop.create_future() for _ in range(CLIENTS)]
    for done in dones:
        await loop.create_connection(lambda d=done: _EchoClient(messages, d), "127.0.0.1", port)
    await asyncio.gather(*dones)
    seconds = time.perf_counter() - start
    server.close()
    return seconds


_target = {"jobs": 0, "done": 0, "event": None}


async def noop() -> None:
    """The worker's job: count itself; the last one says so."""
    _target["done"] += 1
    if _target["done"] == _target["jobs"]:
        _target["event"].set()


async def _worker(url: str, jobs: int) -> float:
    from course_lib.distributed import Queue, TaskRegistry, Worker
    from course_lib.redis import connect

    registry = TaskRegistry()
    registry.add(noop)
    redis = await connect(url)
    await redis.flushdb()
    queue = Queue(redis, "uvbench", registry=registry)
    for first in range(0, jobs, 500):
        await queue.enqueue_many([("noop", [])] * min(500, jobs - first))
    worker = Worker(redis, registry, queue="uvbench", concurrency=10)
    _target.update(jobs=jobs, done=0, event=asyncio.Event())
    start = time.perf_counter()
    await worker.start()
    await _target["event"].wait()
    seconds = time.perf_counter() - start
    await worker.stop()
    await redis.flushdb()
    await redis.aclose()
    return seconds


def child(case: str, loop: str, count: int, url: str) -> None:
    cases = {"echo, streams": lambda: _echo_streams(count),
             "echo, protocols": lambda: _echo_protocols(count),
             "Redis-bound worker": lambda: _worker(url, count)}
    if loop == "uvloop":
        import uvloop

        seconds = uvloop.run(cases[case]())
    else:
        seconds = asyncio.run(cases[case]())
    print(json.dumps({"seconds": seconds}))


# --- the parent: rounds, ratios, the saved result ----------------------------------


def run_child(case: str, loop: str, count: int, url: str) -> float:
    out = subprocess.run([sys.executable, str(HERE), "--child", case, "--loop", loop,
                          "--count", str(count), "--url", url],
                         capture_output=True, text=True, timeout=300, check=False)
    if out.returncode:
        raise RuntimeError(f"{case} on {loop} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def summary(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "samples": xs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="one round, smaller runs")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--loop", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.loop, args.count, args.url)
        return
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed (it does not exist on Windows): nothing to compare")
        return
    sys.path.insert(0, str(HERE.parent))
    from _common import save
    from queue_throughput import _LocalServer

    rounds = 1 if args.quick else args.rounds
    scale = 4 if args.quick else 1
    counts = {"echo, streams": 2000 // scale, "echo, protocols": 2000 // scale,
              "Redis-bound worker": 3000 // scale}
    units = {"echo, streams": CLIENTS, "echo, protocols": CLIENTS, "Redis-bound worker": 1}
    binary = shutil.which("redis-server")
    server = None
    if binary is None:
        print("redis-server not found: the Redis-bound worker is skipped")
        del counts["Redis-bound worker"]
    else:
        server = _LocalServer(binary)
        asyncio.run(server.wait_ready())
    combos = [(case, loop) for case in counts for loop in ("asyncio", "uvloop")]
    rates: dict[tuple[str, str], list[float]] = {c: [] for c in combos}
    ratios: dict[str, list[float]] = {case: [] for case in counts}
    load_before, started = os.getloadavg(), time.perf_counter()
    try:
        for r in range(rounds):
            order = combos[r % len(combos):] + combos[:r % len(combos)]
            got = {}
            for case, loop in order:
                seconds = run_child(case, loop, counts[case], server.url if server else "")
                got[(case, loop)] = counts[case] * units[case] / seconds
            for case, loop in combos:
                rates[(case, loop)].append(got[(case, loop)])
            for case in counts:
                ratios[case].append(got[(case, "uvloop")] / got[(case, "asyncio")])
            print(f"  round {r + 1}/{rounds} done", flush=True)
    finally:
        if server is not None:
            server.stop()
    results = {case: {"unit": "jobs/s" if case.startswith("Redis") else "messages/s",
                      "count": counts[case] * units[case],
                      "asyncio": summary(rates[(case, "asyncio")]),
                      "uvloop": summary(rates[(case, "uvloop")]),
                      "ratio_uvloop_to_asyncio": summary(ratios[case])} for case in counts}
    for case, v in results.items():
        print(f"{case:>20}: asyncio {v['asyncio']['median']:8.0f}  uvloop "
              f"{v['uvloop']['median']:8.0f} {v['unit']}  uvloop/asyncio "
              f"x{v['ratio_uvloop_to_asyncio']['median']:.2f} "
              f"({v['ratio_uvloop_to_asyncio']['min']:.2f}-{v['ratio_uvloop_to_asyncio']['max']:.2f})")
    path = save("perf_uvloop_quick" if args.quick else "perf_uvloop", {
        "rounds": rounds, "quick": args.quick, "clients": CLIENTS, "message_bytes": len(MESSAGE),
        "uvloop": uvloop.__version__, "load_before": load_before, "load_after": os.getloadavg(),
        "seconds": round(time.perf_counter() - started, 1), "cases": results})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
