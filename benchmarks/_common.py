"""What every benchmark here shares: repeat, summarize, record the machine, save JSON.

Benchmarks compare variants side by side in one run (interleaved, so a busy
moment hurts every variant alike) and report the median and spread of the
repeats, plus ratios against a baseline. Results go to benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """The facts that make two results comparable, or not."""
    import importlib.metadata as md

    def version(dist: str) -> str | None:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return None

    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "processor": platform.machine(),
        "cpus": os.cpu_count(),
        "packages": {d: version(d) for d in ("redis", "hiredis", "fakeredis", "uvloop")},
    }


def compare(variants: dict[str, Callable[[], float]], *, repeats: int, baseline: str) -> dict:
    """Run each variant ``repeats`` times, interleaved; each call returns its own seconds."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            samples[name].append(run())
    base = statistics.median(samples[baseline])
    return {
        name: {
            "median_s": statistics.median(xs),
            "min_s": min(xs),
            "max_s": max(xs),
            "spread_pct": 100 * (max(xs) - min(xs)) / statistics.median(xs),
            "ratio_to_" + baseline: statistics.median(xs) / base,
            "samples_s": xs,
        }
        for name, xs in samples.items()
    }


def report(title: str, results: dict, *, baseline: str, unit_count: int, unit: str) -> None:
    print(title)
    for name, r in results.items():
        per = r["median_s"] / unit_count * 1e6
        print(
            f"  {name:32} median {r['median_s'] * 1e3:8.1f} ms  ({per:6.2f} µs/{unit})"
            f"  spread {r['spread_pct']:5.1f}%  ratio {r['ratio_to_' + baseline]:.2f}x"
        )


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


async def unlink_matching(redis, *patterns: str, batch: int = 1000) -> None:
    """UNLINK every key matching ``patterns`` (SCAN globs), ``batch`` keys per call."""
    for pattern in patterns:
        keys = []
        async for key in redis.scan_iter(match=pattern, count=batch):
            keys.append(key)
            if len(keys) >= batch:
                await redis.unlink(*keys)
                keys = []
        if keys:
            await redis.unlink(*keys)
