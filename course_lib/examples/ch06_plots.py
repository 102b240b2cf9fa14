"""Chapter 6's figures, drawn from the JSON that the benchmarks stored.

    result = load("perf_concurrency")          # benchmarks/results/perf_concurrency.json
    plot_concurrency(result)                   # a matplotlib Figure

Every figure shows medians with their min-max spread (error bars or bands), labels
beside the bars rather than on them, and legends outside the data. ``load`` finds
the results folder from this file, so it works from a notebook, a test or a script.
"""

from __future__ import annotations

__all__ = ["RESULTS", "load", "machine_line", "plot_concurrency", "plot_cpu", "plot_eager",
           "plot_peers", "plot_profile", "plot_scaling", "plot_uvloop"]

import json
import math
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]


def load(name: str, results: Path = RESULTS) -> dict[str, Any]:
    """The stored result ``name`` (``benchmarks/results/<name>.json``)."""
    return json.loads((results / f"{name}.json").read_text())


def machine_line(result: dict[str, Any]) -> str:
    """One line: when, where and how loaded the machine was when it ran."""
    m = result["machine"]
    load_text = ""
    if "load_before" in result:
        load_text = (f", load {result['load_before'][0]:.1f} before, "
                     f"{result['load_after'][0]:.1f} after")
    return (f"{result['benchmark']}: {result['when'][:16]}, CPython {m['python']}, "
            f"{m['cpus']} CPUs{load_text}")


def _figure(rows: int, cols: int, width: float, height: float) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False,
                             layout="constrained")
    return fig, axes


def _hbars(ax: Any, labels: list[str], stats: list[dict | None], *, fmt: str, color: str,
           log: bool = False, unit: str = "", ticks: bool = True) -> None:
    """Horizontal bars at the medians, min-max whiskers, the value right of the whisker.

    A ``None`` in ``stats`` keeps its row empty, marked "not measured".
    """
    rows = list(range(len(labels)))[::-1]
    given = [(y, s) for y, s in zip(rows, stats, strict=True) if s is not None]
    med = [s["median"] for _, s in given]
    ys = [y for y, _ in given]
    ax.barh(ys, med, color=color, height=0.6)
    ax.errorbar(med, ys, xerr=[[s["median"] - s["min"] for _, s in given],
                               [s["max"] - s["median"] for _, s in given]],
                fmt="none", ecolor="black", capsize=3, linewidth=1)
    ax.set_yticks(rows, labels if ticks else [""] * len(labels))
    ax.set_ylim(-0.6, len(labels) - 0.4)
    top = max(s["max"] for _, s in given)
    if log:
        ax.set_xscale("log")
        low = min(s["min"] for _, s in given if s["min"] > 0)
        left = 10 ** math.floor(math.log10(low))
        ax.set_xlim(left, top * 12)
    else:
        left = 0
        ax.set_xlim(0, top * 1.35)
    for y, s in zip(rows, stats, strict=True):
        if s is None:
            ax.text(left * (1.2 if log else 1) + (0 if log else top * 0.02), y, "not measured",
                    va="center", fontsize=8, color="grey")
            continue
        x = s["max"] * 1.2 if log else s["max"] + top * 0.04
        ax.text(x, y, format(s["median"], fmt) + unit, va="center", fontsize=8)
    ax.grid(axis="x", alpha=0.3)


def plot_concurrency(result: dict[str, Any]) -> Any:
    """Requests/s and p99 latency against the number in flight, per server."""
    fig, axes = _figure(1, 2, 11, 4.2)
    rate_ax, p99_ax = axes[0]
    for i, (name, server) in enumerate(result["servers"].items()):
        color = COLORS[i]
        vs = server["variants"]
        bounded = sorted((v for v in vs.values() if v["strategy"] == "bounded"),
                         key=lambda v: v["limit"])
        xs = [v["limit"] for v in bounded]
        for ax, key in ((rate_ax, "rate_per_s"), (p99_ax, "p99_ms")):
            ax.plot(xs, [v[key]["median"] for v in bounded], marker="o", color=color,
                    label=f"{name}: Semaphore(n)")
            ax.fill_between(xs, [v[key]["min"] for v in bounded],
                            [v[key]["max"] for v in bounded], color=color, alpha=0.2)
            for v in vs.values():
                if v["strategy"] == "bounded":
                    continue
                marker = {"sequential": "s", "pool": "^", "gather": "D"}[v["strategy"]]
                ax.errorbar([v["limit"]], [v[key]["median"]],
                            yerr=[[v[key]["median"] - v[key]["min"]],
                                  [v[key]["max"] - v[key]["median"]]],
                            fmt=marker, color=color, markeredgecolor="black", capsize=3)
        if server.get("max_rate_per_s", 0) < 1e5:
            rate_ax.axhline(server["max_rate_per_s"], color=color, linestyle=":", linewidth=1)
        if server.get("parse_ms"):
            cpu_us = [v["client_cpu_us_per_request"]["median"] for v in vs.values()]
            cpu_us.sort()
            rate_ax.axhline(1e6 / cpu_us[len(cpu_us) // 2], color=color, linestyle="--",
                            linewidth=1)
    for ax in (rate_ax, p99_ax):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("requests in flight (n)")
        ax.grid(alpha=0.3)
    p99_ax.set_yscale("log")
    rate_ax.set_ylabel("requests/s (median, band: min-max)")
    p99_ax.set_ylabel("p99 latency, ms (log scale)")
    rate_ax.set_title("throughput")
    p99_ax.set_title("99th percentile latency")
    _shape_legend(fig, rate_ax, ncol=4)
    rate_ax.set_ylim(0, rate_ax.get_ylim()[1] * 1.05)
    return fig


def _shape_legend(fig: Any, ax: Any, ncol: int) -> None:
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], marker=m, linestyle="none", color="grey",
                       markeredgecolor="black") for m in ("s", "^", "D")]
    labels += ["sequential", "pool of n workers", "gather(all)"]
    handles.append(Line2D([], [], linestyle=":", color="grey"))
    labels.append("server: capacity / latency")
    handles.append(Line2D([], [], linestyle="--", color="grey"))
    labels.append("client: 1 s / its CPU per request")
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8,
               frameon=False)


def plot_cpu(result: dict[str, Any]) -> Any:
    """Wall time of the jobs and the loop's lag p99, per kind of work and way to run it."""
    fig, axes = _figure(1, 2, 11, 3.4)
    panels = ((axes[0][0], "wall_s", "all jobs done, ms (shorter: faster)"),
              (axes[0][1], "lag_p99_ms", "loop lag p99, ms (shorter: more responsive)"))
    for ax, key, title in panels:
        labels, stats = [], []
        for kind, modes in result["kinds"].items():
            for mode, v in modes.items():
                labels.append(f"{kind.split(' (')[0]}, {mode}")
                s = v[key]
                if key == "wall_s":
                    s = {k: s[k] * 1e3 for k in ("median", "min", "max")}
                stats.append(s)
        _hbars(ax, labels, stats, fmt=".0f", color=COLORS[0] if key == "wall_s" else COLORS[3],
               ticks=key == "wall_s")
        ax.set_title(title, fontsize=10)
    return fig


def plot_uvloop(result: dict[str, Any]) -> Any:
    """uvloop over asyncio, per case: the ratio within each round, median and min-max."""
    fig, axes = _figure(1, 1, 8, 0.7 + 0.55 * len(result["cases"]))
    ax = axes[0][0]
    cases = list(result["cases"])
    _hbars(ax, cases, [result["cases"][c]["ratio_uvloop_to_asyncio"] for c in cases],
           fmt=".2f", color=COLORS[2], unit="x")
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xlabel("uvloop's rate / asyncio's rate, same round (1.0: no gain)")
    return fig


def plot_eager(result: dict[str, Any]) -> Any:
    """Microseconds per coroutine, per Python and way of running it, for each kind."""
    pythons = list(result["pythons"])
    kinds = list(next(iter(result["pythons"].values()))["kinds"])
    fig, axes = _figure(1, len(kinds), 11, 3.6)
    for ax, kind in zip(axes[0], kinds, strict=True):
        ways = ["await directly", "create_task", "eager task"]
        width = 0.8 / len(ways)
        for j, way in enumerate(ways):
            xs, med, lo, hi = [], [], [], []
            for i, py in enumerate(pythons):
                v = result["pythons"][py]["kinds"][kind].get(way)
                if v is None:
                    continue
                s = v["us_per_coroutine"]
                xs.append(i + (j - 1) * width)
                med.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
            ax.bar(xs, med, width=width, color=COLORS[j], label=way)
            ax.errorbar(xs, med, yerr=[lo, hi], fmt="none", ecolor="black", capsize=2)
        ax.set_xticks(range(len(pythons)), [f"CPython {p}" for p in pythons])
        ax.set_title(f"a coroutine that {kind}", fontsize=10)
        ax.set_ylabel("µs per coroutine")
        ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return fig


def plot_profile(result: dict[str, Any]) -> Any:
    """Orders/s of the slow worker, the fixed one, and the slow one under each profiler."""
    names = list(result["variants"])
    fig, axes = _figure(1, 1, 8, 0.7 + 0.5 * len(names))
    _hbars(axes[0][0], names, [result["variants"][n]["orders_per_s"] for n in names],
           fmt=",.0f", color=COLORS[4], log=True)
    axes[0][0].set_xlabel("orders/s (log scale; median, whiskers: min-max)")
    return fig


def plot_peers(result: dict[str, Any]) -> Any:
    """Jobs/s of each consumer: no-op jobs and 10 ms I/O jobs, one process each (log)."""
    consumers = result["consumers"]
    fig, axes = _figure(1, 2, 11, 0.9 + 0.42 * len(consumers))
    for ax, kind, title, color in ((axes[0][0], "noop", "no-op jobs", COLORS[0]),
                                   (axes[0][1], "io", "10 ms I/O jobs", COLORS[1])):
        names = list(consumers)
        jobs = next(consumers[n][kind]["jobs"] for n in names if kind in consumers[n])
        _hbars(ax, names, [consumers[n][kind]["jobs_per_s"] if kind in consumers[n] else None
                           for n in names], fmt=",.0f", color=color, log=True,
               ticks=kind == "noop")
        ax.set_title(f"{title} ({jobs:,} per run)", fontsize=10)
        ax.set_xlabel("jobs/s (log scale)")
    return fig


def plot_scaling(result: dict[str, Any]) -> Any:
    """Jobs/s by setup and worker processes (no-op, 10 ms I/O); where each Redis caps.

    The third panel is the ceiling worked out from redis-server's CPU per job (its
    busiest node at 100 % of a core), for no-op jobs with two worker processes.
    """
    variants = result["variants"]
    fig, axes = _figure(1, 3, 13, 3.6)
    for ax, task, title, color in ((axes[0][0], "noop", "no-op jobs", COLORS[0]),
                                   (axes[0][1], "io", "10 ms I/O jobs", COLORS[1])):
        rows = [v for v in variants.values() if v["task"] == task]
        _hbars(ax, [f"{v['setup']} · {v['procs']} proc{'s' * (v['procs'] > 1)}" for v in rows],
               [v["jobs_per_s"] for v in rows], fmt=",.0f", color=color, ticks=task == "noop")
        ax.set_title(f"{title}: jobs/s", fontsize=10)
        ax.set_xlabel("jobs/s (median, whiskers: min-max)")
    caps = [v for v in variants.values() if v["task"] == "noop" and v["procs"] == 2]
    _hbars(axes[0][2], [v["setup"] for v in caps], [v["redis_ceiling_jobs_per_s"] for v in caps],
           fmt=",.0f", color=COLORS[2])
    axes[0][2].set_title("where Redis would cap (no-op, 2 procs)", fontsize=10)
    axes[0][2].set_xlabel("jobs/s at 100 % of the busiest node's core")
    return fig
