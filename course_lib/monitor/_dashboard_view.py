"""What the dashboard draws: the text of a sample, its HTML, the report's plot, the output.

Private to ``course_lib.monitor.dashboard``, which holds the data (samples, report)
and calls these functions with it; nothing here samples, waits or keeps state, so a
change of layout cannot change what is measured. ``DashboardView`` is re-exported
from ``course_lib.monitor.dashboard``.

    view = DashboardView(sample, render(sample, every_s=1, until_text="...", top=8,
                                        queue_name="jobs", last_queue=None, stopped=None))
    out = open_display("auto", view)   # a display handle in a kernel, else a printer
    out.update(view)                   # the next redraws

IPython is imported only by ``open_display`` in a running kernel, and matplotlib only
by ``plot_report``.
"""

from __future__ import annotations

__all__ = ["DashboardView", "open_display", "plot_report", "render", "report_text",
           "until_name", "until_text"]

import asyncio
import functools
import html
import io
import math
import sys
import time
from typing import TYPE_CHECKING, Any

from course_lib.monitor.queue_figures import COUNTS, QueueSample

if TYPE_CHECKING:
    from course_lib.monitor.dashboard import DashboardReport, Sample, Until

_STATES = ("waiting", "ready", "cancelling")
_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen: only on a terminal


class DashboardView:
    """What one redraw shows: a monospace block (``_repr_html_`` in a notebook, else text)."""

    def __init__(self, sample: Sample, text: str) -> None:
        self.sample = sample
        self.text = text

    def __repr__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        return (f'<pre style="font-size: 12px; line-height: 1.3; margin: 0">'
                f"{html.escape(self.text)}</pre>")


# --- the text of one sample -------------------------------------------------------------


def render(s: Sample, *, every_s: float, until_text: str, top: int, queue_name: str | None,
           last_queue: tuple[float, QueueSample] | None, stopped: str | None) -> str:
    """The block one redraw shows. ``last_queue``: (at_s, figures) of the last good read,
    drawn when this sample's read failed; ``stopped``: the last line, once it stopped."""
    head = (f"dashboard  {time.strftime('%H:%M:%S', time.localtime(s.wall))}  sample {s.n} "
            f"at {s.at_s:.1f} s, every {every_s:g} s  ({until_text})")
    lines = [head]
    states = ", ".join(f"{s.by_state.get(k, 0)} {k}" for k in _STATES)
    lines.append(f"tasks      {s.task_count}: {states}  (the dashboard's own left out)")
    rows = sorted(s.tasks.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    if rows and top:
        width = max(9, *(len(name) for name, _ in rows[:top]))
        lines.append(f"  {'coroutine':<{width}}  " + "  ".join(f"{k:>10}" for k in _STATES))
        for name, counts in rows[:top]:
            lines.append(f"  {name:<{width}}  "
                         + "  ".join(f"{counts.get(k, 0):>10}" for k in _STATES))
        if len(rows) > top:
            lines.append(f"  ... {len(rows) - top} more coroutine names")
    if s.loop_lag is not None:
        lag = s.loop_lag
        lines.append(f"loop lag   p50 {_ms(lag.p50_s)}, p99 {_ms(lag.p99_s)}, max "
                     f"{_ms(lag.max_s)}  ({lag.probes} probes since the last sample)")
    if queue_name is not None:
        lines += _render_queue(queue_name, s, last_queue)
    if stopped is not None:
        lines.append(f"stopped    {stopped}")
    return "\n".join(lines)


def _render_queue(queue_name: str, s: Sample, last_queue: tuple[float, QueueSample] | None
                  ) -> list[str]:
    lines = [f"queue      {queue_name!r}"]
    if s.error:
        lines.append(f"  error    {s.error}")
    if s.queue is None and last_queue is None:
        return lines
    q = s.queue
    if q is None:
        at_s, q = last_queue  # type: ignore[misc]
        lines.append(f"  (the last figures Redis gave, {s.at_s - at_s:.1f} s ago)")
    for name in COUNTS:
        line = f"  {name:<10} {getattr(q, name):>7}"
        if q.rates is not None and name in q.rates:
            line += f"   {q.rates[name]:+.1f}/s"
        lines.append(line)
    rate = q.done_per_s
    if q.entries_added is None:
        lines.append("  done/s        n/a   (the server reports no entries-added)")
    elif rate is None:
        lines.append("  done/s          -   (from the next sample on)")
    else:
        lines.append(f"  done/s     {rate:>7.1f}   ({q.done} done in the last "
                     f"{q.interval_s:.1f} s)")
    most = max(q.in_flight.values(), default=0)
    for i, (name, n) in enumerate(q.in_flight.items()):
        bar = "#" * (math.ceil(20 * n / most) if most else 0)
        label = "in flight" if i == 0 else ""
        lines.append(f"  {label:<10} {name:>7} {n:>4} {bar:<20}  idle {q.idle_s[name]:.1f} s")
    if not q.in_flight:
        lines.append("  in flight  (no worker in the group)")
    return lines


def until_text(duration_s: float | None, until: Until | None) -> str:
    """What stops it, for the head line: "until drained, 60 s at most, an interrupt..."."""
    parts = []
    if until is not None:
        parts.append(f"until {until_name(until)}")
    if duration_s is not None:
        parts.append(f"{duration_s:g} s at most")
    return ", ".join([*parts, "an interrupt stops it"])


def until_name(until: Until | None) -> str:
    if isinstance(until, asyncio.Event):
        return "the event is set"
    return getattr(until, "__name__", type(until).__name__)


# --- the report -------------------------------------------------------------------------


def report_text(report: DashboardReport) -> str:
    """``str(report)``: how it stopped, tasks, loop lag, done and done/s, the last errors."""
    how = report.stopped_by.value if report.stopped_by else "still running"
    lines = [f"dashboard: {len(report.samples) + report.dropped} samples every "
             f"{report.every_s:g} s over {report.duration_s:.1f} s, {report.updates} redraws; "
             f"stopped: {how}"]
    if report.samples:
        peak = max(report.samples, key=lambda s: s.task_count)
        lines.append(f"tasks: at most {peak.task_count} (at {peak.at_s:.1f} s), "
                     f"{report.samples[-1].task_count} at the end")
    lags = [v for _, v in report.series("max_s")]
    if lags:
        lines.append(f"loop lag: max {max(lags) * 1e3:.1f} ms")
    if report.queue_name is not None:
        rate = report.done_per_s
        lines.append(f"queue {report.queue_name!r}: done {_n(report.done_total)}, "
                     f"{'n/a' if rate is None else f'{rate:.1f}'} done/s on average")
        peaks = ", ".join(f"{k} {v}" for k, v in report.in_flight_peak().items())
        lines.append(f"in flight at most: {peaks or '-'}")
        last = next((s.queue for s in reversed(report.samples) if s.queue), None)
        if last is not None:
            lines.append("at the end: " + ", ".join(f"{k} {getattr(last, k)}" for k in COUNTS))
    for at_s, error in report.errors[-5:]:
        lines.append(f"error at {at_s:.1f} s: {error}")
    return "\n".join(lines)


def plot_report(report: DashboardReport) -> Any:
    """A matplotlib Figure (no pyplot): done/s, in flight per worker, backlog, loop lag."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    # (title, {label: points}, how): "interval" figures hold over the interval that
    # ends at their sample (a step drawn backwards), "stack" bands add up to a total.
    panels: list[tuple[str, dict[str, list[tuple[float, float]]], str]] = []
    if report.queue_name is not None:
        panels.append(("done/s", {"done/s": report.series("done_per_s")}, "interval"))
        workers = sorted({w for s in report.samples if s.queue for w in s.queue.in_flight})
        panels.append(("in flight per worker", {
            w: [(s.at_s, s.queue.in_flight.get(w, 0)) for s in report.samples if s.queue]
            for w in workers}, "stack"))
        panels.append(("backlog", {k: report.series(k) for k in ("lag", "delayed", "dead")},
                       "line"))
    panels.append(("tasks", {"tasks": report.series("tasks")}, "line"))
    if any(s.loop_lag for s in report.samples):
        panels.append(("loop lag (ms)", {
            k: [(t, v * 1e3) for t, v in report.series(f"{k}_s")] for k in ("p50", "max")},
            "interval"))
    fig = Figure(figsize=(8, 1.5 * len(panels) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    fig._repr_png_ = functools.partial(_png, fig)  # shown even before pyplot is imported
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, lines, how) in zip(axes, panels, strict=True):
        drawn = {k: v for k, v in lines.items() if v}
        if how == "stack" and drawn:
            times = [t for t, _ in next(iter(drawn.values()))]
            ax.stackplot(times, *([v for _, v in pts] for pts in drawn.values()),
                         labels=list(drawn), alpha=0.8)
        for label, points in drawn.items() if how != "stack" else ():
            xs, ys = [t for t, _ in points], [v for _, v in points]
            if how == "interval":
                ax.step(xs, ys, where="pre", label=label)
            else:
                ax.plot(xs, ys, marker=".", label=label)
        ax.set_ylabel(title, fontsize=9)
        ax.set_ylim(bottom=0)
        ax.margins(y=0.15)
        ax.grid(alpha=0.3)
        if title != "loop lag (ms)":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if len(lines) > 1:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    axes[-1].set_xlabel("seconds since the dashboard started")
    how = report.stopped_by.value if report.stopped_by else "running"
    axes[0].set_title(f"dashboard{f' of {report.queue_name!r}' if report.queue_name else ''}: "
                      f"{len(report.samples)} samples, stopped: {how}", loc="left", fontsize=10)
    return fig


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


# --- where it draws ---------------------------------------------------------------------


class _Printer:
    """The display outside a kernel: print each view (redrawn in place on a terminal)."""

    def __init__(self) -> None:
        self.redraw = sys.stdout.isatty()

    def update(self, view: DashboardView) -> None:
        print((_CLEAR if self.redraw else "") + view.text, end="\n" if self.redraw else "\n\n",
              flush=True)


def open_display(display: Any, view: DashboardView) -> Any:
    """Draw ``view`` the first time; the object that takes the next ones (``update``)."""
    if display != "auto":
        display.update(view)
        return display
    # A kernel has imported IPython long before: never import it here just to look.
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None and getattr(shell, "kernel", None) is not None:
        from IPython.display import display as ipython_display

        return ipython_display(view, display_id=True)
    printer = _Printer()
    printer.update(view)
    return printer


def _n(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f} ms"
