"""How fast redis-py's asyncio client runs the bare Streams job loop, per version and setting.

    python benchmarks/redis_client_probe.py --url redis://127.0.0.1:6390/0 \\
        [--jobs 20000] [--repeats 5] [--protocol 2|3|default[,...]] \\
        [--parser auto|hiredis|python[,...]] [--pipeline plain,multi] \\
        [--socket-timeout default|none|SECONDS[,...]] [--decode] [--json PATH]

Without ``--url`` or ``REDIS_URL`` it prints that it skipped and exits 0 (``make
bench`` runs it bare). Runs with any redis-py (5.x to 8.x) and needs only redis-py (plus hiredis if
installed): no course_lib, so the same file can be run from throwaway venvs
that pin different client versions. It needs a real server it may write to;
it only touches keys under ``probe:`` and deletes them after each run.

One run of one variant:

1. enqueue: XADD N no-op jobs (one small JSON field each), pipelined in
   batches of ``--batch`` (transaction=False); timed as the enqueue rate;
2. XGROUP CREATE from id 0 (untimed);
3. consume: one asyncio consumer loops XREADGROUP COUNT batch BLOCK 100, and
   for each batch sends one pipeline with XACK of the batch's ids plus one
   ``SET probe:result:<id> <json> EX 3600`` per job, until N are acked; timed
   as the consume rate. ``plain`` is ``pipeline(transaction=False)``,
   ``multi`` is ``pipeline(transaction=True)`` (MULTI/EXEC).

Variants are the product of --protocol x --parser x --pipeline x --socket-timeout, interleaved
(each repeat runs every variant once), so a busy moment hurts all alike.
Prints jobs/s median and spread ((max - min) / median) per variant, and the
redis-py / hiredis versions, the RESP version and the parser class actually in
use on the connection. ``--protocol default`` passes no ``protocol`` at all
(redis-py 8 then speaks RESP3, 5-7 RESP2). ``--parser python`` forces the
pure-Python parser (``_AsyncRESP2Parser``; redis-py swaps in
``_AsyncRESP3Parser`` for RESP3); ``hiredis`` forces ``_AsyncHiredisParser``.
``--socket-timeout default`` passes nothing (redis-py 8: 5 s, 5.x: None); with a
timeout, redis-py wraps every reply read in ``asyncio.timeout`` and every send in
``asyncio.wait_for``. Besides wall-clock jobs/s it prints the client process's
CPU time per job, which a busy machine disturbs less.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata as md
import itertools
import json
import os
import platform
import statistics
import sys
import time

import redis
import redis.asyncio
import redis.utils
from _common import unlink_matching

STREAM = "probe:jobs"
GROUP = "probe-workers"
RESULT_PREFIX = "probe:result:"


def _dist_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _parser_class(name: str):
    from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser

    if name == "auto":
        return None
    if name == "python":
        return _AsyncRESP2Parser
    if name == "hiredis":
        if not redis.utils.HIREDIS_AVAILABLE:
            raise SystemExit("--parser hiredis: hiredis is not installed (or too old)")
        return _AsyncHiredisParser
    raise SystemExit(f"unknown parser {name!r}")


def _client(
    url: str, protocol: str, parser: str, decode: bool, socket_timeout: str
) -> redis.asyncio.Redis:
    kw: dict = {"decode_responses": decode}
    if socket_timeout != "default":
        kw["socket_timeout"] = None if socket_timeout == "none" else float(socket_timeout)
    if protocol != "default":
        kw["protocol"] = int(protocol)
    cls = _parser_class(parser)
    if cls is not None:
        kw["parser_class"] = cls
    return redis.asyncio.Redis.from_url(url, **kw)


def _connection_facts(client: redis.asyncio.Redis) -> dict:
    """The RESP version and parser class of the (one) pooled connection, after a command."""
    pool = client.connection_pool
    conns = list(getattr(pool, "_available_connections", [])) + list(
        getattr(pool, "_in_use_connections", [])
    )
    if not conns:
        return {"resp": None, "parser": None, "socket_timeout": None}
    conn = conns[0]
    return {
        "resp": getattr(conn, "protocol", None),
        "parser": type(conn._parser).__name__,
        "socket_timeout": conn.socket_timeout,
    }


def _entries(response) -> list:
    """[(id, fields), ...] from any XREADGROUP reply shape redis-py gives.

    RESP2 (and redis-py 8's RESP3 with legacy shapes): [[stream, entries]];
    RESP3 with protocol=3: {stream: [entries]} (one extra list level).
    """
    if not response:
        return []
    out: list = []
    if isinstance(response, dict):
        for value in response.values():
            if value and isinstance(value[0], list):  # {stream: [[entry, ...]]}
                for entries in value:
                    out.extend(entries)
            else:
                out.extend(value)
        return out
    for _stream, entries in response:
        out.extend(entries)
    return out


async def _cleanup(r: redis.asyncio.Redis) -> None:
    await r.unlink(STREAM)
    await unlink_matching(r, RESULT_PREFIX + "*")


async def _enqueue(r: redis.asyncio.Redis, jobs: int, batch: int) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, jobs, batch):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(start + batch, jobs)):
            pipe.xadd(STREAM, {"job": json.dumps({"id": i, "fn": "noop", "args": [], "kw": {}})})
        await pipe.execute()
    return time.perf_counter() - t0, time.process_time() - c0


async def _consume(
    r: redis.asyncio.Redis, jobs: int, batch: int, transaction: bool
) -> tuple[float, float]:
    done = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while done < jobs:
        response = await r.xreadgroup(GROUP, "c1", {STREAM: ">"}, count=batch, block=100)
        entries = _entries(response)
        if not entries:
            continue
        pipe = r.pipeline(transaction=transaction)
        pipe.xack(STREAM, GROUP, *[entry_id for entry_id, _ in entries])
        for entry_id, fields in entries:
            raw = fields.get(b"job") if b"job" in fields else fields["job"]
            job = json.loads(raw)  # "run" the no-op job
            eid = entry_id if isinstance(entry_id, str) else entry_id.decode()
            pipe.set(RESULT_PREFIX + eid, json.dumps({"id": job["id"], "ok": True}), ex=3600)
        replies = await pipe.execute()
        if replies[0] != len(entries):
            raise RuntimeError(f"XACK acked {replies[0]} of {len(entries)}")
        done += len(entries)
    return time.perf_counter() - t0, time.process_time() - c0


async def _one_run(url: str, variant: tuple, jobs: int, batch: int, decode: bool) -> dict:
    protocol, parser, mode, socket_timeout = variant
    r = _client(url, protocol, parser, decode, socket_timeout)
    try:
        await r.ping()
        facts = _connection_facts(r)
        await _cleanup(r)
        gc.collect()
        enqueue_s, enqueue_cpu_s = await _enqueue(r, jobs, batch)
        await r.xgroup_create(STREAM, GROUP, id="0")
        consume_s, consume_cpu_s = await _consume(r, jobs, batch, transaction=(mode == "multi"))
        pending = await r.xpending(STREAM, GROUP)
        count = pending["pending"] if isinstance(pending, dict) else pending[0]
        if count:
            raise RuntimeError(f"{count} entries still pending")
        await _cleanup(r)
    finally:
        await r.aclose()
    return {
        "enqueue_s": enqueue_s,
        "consume_s": consume_s,
        "enqueue_cpu_s": enqueue_cpu_s,
        "consume_cpu_s": consume_cpu_s,
        **facts,
    }


def _summary(values: list[float]) -> dict:
    med = statistics.median(values)
    return {
        "median": med,
        "min": min(values),
        "max": max(values),
        "spread_pct": 100 * (max(values) - min(values)) / med if med else 0.0,
        "samples": values,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--url",
        default=os.environ.get("REDIS_URL") or None,
        help="redis://127.0.0.1:PORT/0, a real server you own (default: $REDIS_URL)",
    )
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=100, help="XREADGROUP COUNT and XADD batch")
    ap.add_argument("--protocol", default="2", help="comma list of 2, 3, default")
    ap.add_argument("--parser", default="auto", help="comma list of auto, hiredis, python")
    ap.add_argument("--pipeline", default="plain,multi", help="comma list of plain, multi")
    ap.add_argument(
        "--socket-timeout",
        default="default",
        help="comma list of default (pass nothing), none (socket_timeout=None), or seconds",
    )
    ap.add_argument("--decode", action="store_true", help="decode_responses=True")
    ap.add_argument("--warmup", type=int, default=1000, help="jobs in one untimed first run")
    ap.add_argument("--json", help="also write the samples as JSON to this path")
    args = ap.parse_args()
    if not args.url:
        # `make bench` runs every benchmark without arguments: skip, don't fail.
        print("redis_client_probe: skipped, needs --url or REDIS_URL (a real redis-server)")
        return

    protocols = args.protocol.split(",")
    parsers = args.parser.split(",")
    modes = args.pipeline.split(",")
    for p in protocols:
        if p not in ("2", "3", "default"):
            ap.error(f"--protocol {p!r}: expected 2, 3 or default")
    for m in modes:
        if m not in ("plain", "multi"):
            ap.error(f"--pipeline {m!r}: expected plain or multi")
    timeouts = args.socket_timeout.split(",")
    variants = list(itertools.product(protocols, parsers, modes, timeouts))

    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "redis_py": redis.__version__,
        "hiredis": _dist_version("hiredis"),
        "HIREDIS_AVAILABLE": redis.utils.HIREDIS_AVAILABLE,
        "uvloop": False,
        "decode_responses": args.decode,
        "jobs": args.jobs,
        "batch": args.batch,
        "repeats": args.repeats,
    }
    print(
        f"redis-py {env['redis_py']}  hiredis {env['hiredis']} "
        f"(HIREDIS_AVAILABLE={env['HIREDIS_AVAILABLE']})  python {env['python']}  "
        f"jobs {args.jobs}  batch {args.batch}  repeats {args.repeats}  decode {args.decode}",
        flush=True,
    )

    if args.warmup:
        asyncio.run(_one_run(args.url, variants[0], args.warmup, args.batch, args.decode))
    samples: dict[tuple, list[dict]] = {v: [] for v in variants}
    for _ in range(args.repeats):
        for v in variants:
            run = _one_run(args.url, v, args.jobs, args.batch, args.decode)
            samples[v].append(asyncio.run(run))

    rows = []
    print(
        f"  {'protocol':8} {'parser':8} {'pipeline':8} {'timeout':>7} {'RESP':>4}"
        f" {'parser class':20}"
        f" {'consume jobs/s':>14} {'spread':>7} {'cpu us/job':>10}"
        f" {'enqueue jobs/s':>14} {'spread':>7} {'cpu us/job':>10}"
    )
    for v, runs in samples.items():
        consume = _summary([args.jobs / s["consume_s"] for s in runs])
        enqueue = _summary([args.jobs / s["enqueue_s"] for s in runs])
        consume_cpu = _summary([1e6 * s["consume_cpu_s"] / args.jobs for s in runs])
        enqueue_cpu = _summary([1e6 * s["enqueue_cpu_s"] / args.jobs for s in runs])
        resp, parser_cls = runs[0]["resp"], runs[0]["parser"]
        rows.append(
            {
                "protocol": v[0],
                "parser": v[1],
                "pipeline": v[2],
                "socket_timeout_arg": v[3],
                "socket_timeout": runs[0]["socket_timeout"],
                "resp": resp,
                "parser_class": parser_cls,
                "consume_jobs_per_s": consume,
                "enqueue_jobs_per_s": enqueue,
                "consume_cpu_us_per_job": consume_cpu,
                "enqueue_cpu_us_per_job": enqueue_cpu,
            }
        )
        print(
            f"  {v[0]:8} {v[1]:8} {v[2]:8} {runs[0]['socket_timeout']!s:>7} {resp!s:>4}"
            f" {parser_cls!s:20}"
            f" {consume['median']:14,.0f} {consume['spread_pct']:6.1f}%"
            f" {consume_cpu['median']:10.1f}"
            f" {enqueue['median']:14,.0f} {enqueue['spread_pct']:6.1f}%"
            f" {enqueue_cpu['median']:10.1f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
