"""Record what the event loop did: every task's creation, first step, end and outcome.

    async with Timeline() as tl:
        tl.mark("go")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(asyncio.sleep(0.1), name="fast")
            tg.create_task(asyncio.sleep(0.3), name="slow")
    tl.table()   # a text table, one row per task, times in ms
    tl.plot()    # a matplotlib Gantt chart (a Figure: a notebook shows it, a script saves it)

How it works: while active, the Timeline is the running loop's task factory. It
wraps each new task's coroutine in `_Recorded`, a thin proxy that notes the
first `send()` (the moment the coroutine's code first runs) and the moment the
coroutine stops (returned, raised CancelledError, raised anything else). The
outcome is read from that, never from `task.exception()`: asking a task for its
exception marks it retrieved and would silence asyncio's "Task exception was
never retrieved", hiding the very bug a learner should see.

Times are `loop.time()` seconds since the Timeline was entered, so under
looptime's virtual clock they are exact. Records are frozen when the Timeline
exits: a task still running then stays PENDING with no end, so plotting twice
draws the same picture.
"""

__all__ = ["Mark", "Outcome", "Row", "Span", "Table", "TaskRecord", "Timeline"]

import asyncio
import collections.abc
import contextlib
import dataclasses
import enum
import functools
import io
import sys
import weakref
from collections.abc import Iterator
from typing import Any, NamedTuple


class Outcome(enum.StrEnum):
    PENDING = "pending"  # not finished when the timeline closed (or not yet, while active)
    DONE = "done"  # the coroutine returned
    CANCELLED = "cancelled"  # CancelledError ended it
    FAILED = "failed"  # any other exception ended it (see TaskRecord.error)


@dataclasses.dataclass(slots=True)
class TaskRecord:
    """One task as the timeline saw it; times in seconds since the timeline started.

    started_s is None for a task whose code never ran (cancelled before its first
    step, or still waiting when the timeline closed); ended_s is None while pending.
    """

    name: str
    created_s: float
    started_s: float | None = None
    ended_s: float | None = None
    outcome: Outcome = Outcome.PENDING
    # The task that was running when this one was created, if any. Not a parent: a
    # task has none. Its creator may end first, and a cancel of the creator does not
    # reach it (cancellation travels down the await chain, not the creation history).
    created_by: str | None = None
    error: str | None = None  # repr() of the exception of a FAILED task
    created_by_record: "TaskRecord | None" = dataclasses.field(
        default=None, repr=False, compare=False
    )
    _task: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)


@dataclasses.dataclass(frozen=True, slots=True)
class Mark:
    label: str
    at_s: float


@dataclasses.dataclass(slots=True)
class Span:
    label: str
    start_s: float
    end_s: float | None = None  # None: still open when the timeline closed


class _State(enum.Enum):
    NEW = "new"
    ACTIVE = "active"
    CLOSED = "closed"


# Python 3.13.0-3.13.2: loop.create_task() calls task.set_name(None) after any
# custom task factory, naming every task "None" (CPython gh-130033). Without a
# Timeline the learner's tasks would be called Task-N, so we put that name back.
_NAME_BECOMES_NONE = (3, 13) <= sys.version_info[:3] < (3, 13, 3)


class _Recorded(collections.abc.Coroutine):
    """A task's coroutine, reporting its first step and its end to a Timeline.

    asyncio accepts any collections.abc.Coroutine as a task's coroutine. Everything
    else (__name__, __qualname__, cr_frame, cr_code, cr_await, cr_running, ...) is
    the real coroutine's, so task reprs and task.get_stack() name the user's code.
    """

    __slots__ = ("_coro", "_record", "_stepped", "_timeline")

    def __init__(self, coro, record: TaskRecord, timeline: "Timeline") -> None:
        self._coro = coro
        self._record = record
        self._timeline = timeline
        self._stepped = False

    def send(self, value):
        if not self._stepped:
            self._stepped = True
            self._timeline._on_first_step(self._record)
        try:
            return self._coro.send(value)  # Timeline recorder; your coroutine is the next frame
        except BaseException as exc:  # any exception out of send() means the coroutine ended
            self._timeline._on_end(self._record, exc)
            raise

    def throw(self, typ, val=None, tb=None):
        # A throw before any send (a task cancelled before it ever ran) ends the
        # coroutine without running its code: started_s stays None.
        try:
            if val is None and tb is None:  # the 3-argument form is deprecated since 3.12
                return self._coro.throw(typ)  # Timeline recorder; your coroutine is next
            return self._coro.throw(typ, val, tb)
        except BaseException as exc:
            self._timeline._on_end(self._record, exc)
            raise

    def close(self):
        return self._coro.close()

    def _task_done(self, task) -> None:
        # A bound method, not a partial: task reprs then show `cb=[_Recorded._task_done()]`.
        self._timeline._on_done(self._record, task)

    def __await__(self):
        return self._coro.__await__()

    def __getattr__(self, name):
        if name == "_coro":  # not set yet (copy, pickle): do not recurse
            raise AttributeError(name)
        return getattr(self._coro, name)

    def __repr__(self) -> str:
        return f"<recorded {self._coro!r}>"


class Row(NamedTuple):
    name: str
    created_by: str  # the task running when it was created ("" for none), not a parent
    created_ms: float
    started_ms: float | None
    ended_ms: float | None
    outcome: str
    error: str


class Table(list):
    """Rows of a timeline (tuples, `row._asdict()` for dicts) that print as an aligned table."""

    columns = Row._fields
    repr_rows = 60  # a notebook cell shows this many; print(table) shows them all

    def render(self, max_rows: int | None = None) -> str:
        def cell(value) -> str:
            if value is None:
                return "-"
            return f"{value:.1f}" if isinstance(value, float) else str(value)

        shown = self if max_rows is None else self[:max_rows]
        lines = [list(self.columns), *([cell(v) for v in row] for row in shown)]
        widths = [max(len(line[i]) for line in lines) for i in range(len(self.columns))]
        numeric = {"created_ms", "started_ms", "ended_ms"}
        text = [
            "  ".join(
                v.rjust(w) if c in numeric else v.ljust(w)
                for c, v, w in zip(self.columns, line, widths, strict=True)
            ).rstrip()
            for line in lines
        ]
        if len(shown) < len(self):
            text.append(f"... {len(self) - len(shown)} more rows (print() shows all)")
        return "\n".join(text)

    def __str__(self) -> str:
        return self.render()

    def __repr__(self) -> str:
        return self.render(self.repr_rows)

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython: the table, not a list repr
        printer.text(repr(self))


class Timeline:
    """Record every task created on the running loop while active, plus marks and spans.

        async with Timeline() as tl:
            task = asyncio.create_task(asyncio.sleep(0.2), name="nap")
            tl.mark("created")
            with tl.span("waiting"):
                await task
        tl.tasks[0]   # TaskRecord(name='nap', created_s=0.0, started_s=0.0, ended_s=0.2, ...)
    """

    def __init__(self) -> None:
        self._state = _State.NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous = None  # the task factory we replaced, called by ours
        self._installed = None  # our bound method, kept: each `self._factory` is a new object
        self._t0 = 0.0
        self._exit_s: float | None = None
        self._records: list[TaskRecord] = []
        self._marks: list[Mark] = []
        self._spans: list[Span] = []

    def __repr__(self) -> str:
        return (
            f"<Timeline {self._state.value}: {len(self._records)} tasks, "
            f"{len(self._marks)} marks, {len(self._spans)} spans>"
        )

    @property
    def tasks(self) -> list[TaskRecord]:
        return list(self._records)

    @property
    def marks(self) -> list[Mark]:
        return list(self._marks)

    @property
    def spans(self) -> list[Span]:
        return list(self._spans)

    @property
    def duration_s(self) -> float | None:
        """Seconds from entering to leaving; None before entering, the elapsed time while active."""
        if self._state is _State.ACTIVE:
            return self._now()
        return self._exit_s

    async def __aenter__(self) -> "Timeline":
        if self._state is not _State.NEW:
            # A second window would share t0 and records with the first: make a new Timeline.
            raise RuntimeError(f"{self!r} was already entered; use a new Timeline per run")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._previous = loop.get_task_factory()
        self._installed = self._factory
        self._t0 = loop.time()
        self._state = _State.ACTIVE
        loop.set_task_factory(self._installed)
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._exit_s = self._now()
        self._state = _State.CLOSED
        # Put back the previous factory only if ours is still the loop's. If someone
        # installed another factory meanwhile (an inner Timeline left open, user code),
        # theirs stays; ours, still in their chain, now only passes tasks through.
        if self._loop.get_task_factory() is self._installed:
            self._loop.set_task_factory(self._previous)
        for record in self._records:  # final names for tasks still running
            if record.outcome is Outcome.PENDING:
                self._refresh_name(record)
            if record.created_by_record is not None:
                record.created_by = record.created_by_record.name

    def mark(self, label: str) -> Mark:
        """Record an instant, drawn as a dashed vertical line."""
        mark = Mark(label, self._now())
        self._marks.append(mark)
        return mark

    @contextlib.contextmanager
    def span(self, label: str) -> Iterator[Span]:
        """Record an interval: `with tl.span("db"): await query()`; drawn as a shaded band."""
        span = Span(label, self._now())
        self._spans.append(span)
        try:
            yield span
        finally:
            if self._state is _State.ACTIVE:
                span.end_s = self._now()

    def _now(self) -> float:
        if self._state is not _State.ACTIVE:
            raise RuntimeError(f"{self!r} is not active: use it inside `async with`")
        # Rounded to the nanosecond so that subtracting t0 leaves no float noise:
        # under looptime, a task that slept 0.3 s ended at exactly 0.3.
        return round(self._loop.time() - self._t0, 9)

    # -- the task factory and what the proxy reports ---------------------------------

    def _factory(self, loop, coro, **kwargs):
        # kwargs: context (3.11+), name and eager_start (3.13.3+, 3.14): passed on untouched.
        if self._state is not _State.ACTIVE:
            return self._create(loop, coro, kwargs)
        creator = asyncio.current_task(loop)
        record = TaskRecord(
            name=kwargs.get("name") or "",
            created_s=self._now(),
            created_by=creator.get_name() if creator is not None else None,
            created_by_record=self._record_of(creator),
        )
        # Appended before the task exists: an eager task (3.12+) runs inside the
        # factory, and the tasks it creates must come after it.
        self._records.append(record)
        recorded = _Recorded(coro, record, self)
        try:
            task = self._create(loop, recorded, kwargs)
        except BaseException:
            self._records.remove(record)
            raise
        record._task = weakref.ref(task)  # weak: the timeline must not keep 10,000 tasks alive
        if not record.name:
            # 3.11-3.13.2 name the task after the factory returns; the done callback
            # and __aexit__ read the final name.
            record.name = task.get_name()
        task.add_done_callback(recorded._task_done)
        return task

    def _create(self, loop, coro, kwargs):
        if self._previous is not None:
            return self._previous(loop, coro, **kwargs)
        task = asyncio.Task(coro, loop=loop, **kwargs)
        # Debug mode: "created at" should end at the user's line, as it does without a
        # factory: drop our frames, then loop.create_task's (it trims itself only when
        # it makes the task itself).
        source = getattr(task, "_source_traceback", None)
        while source and source[-1].filename == __file__:
            del source[-1]
        if source and source[-1].name == "create_task":
            del source[-1]
        return task

    def _record_of(self, task) -> TaskRecord | None:
        coro = task.get_coro() if task is not None else None
        while isinstance(coro, _Recorded):  # nested Timelines: proxies inside proxies
            if coro._timeline is self:
                return coro._record
            coro = coro._coro
        return None

    def _on_first_step(self, record: TaskRecord) -> None:
        if self._state is _State.ACTIVE:
            record.started_s = self._now()
            self._refresh_name(record)

    def _on_end(self, record: TaskRecord, exc: BaseException) -> None:
        if self._state is not _State.ACTIVE:
            return  # frozen: it was still running when the timeline closed
        record.ended_s = self._now()
        if isinstance(exc, StopIteration):
            record.outcome = Outcome.DONE
        elif isinstance(exc, asyncio.CancelledError):
            record.outcome = Outcome.CANCELLED
        else:
            record.outcome = Outcome.FAILED
            record.error = repr(exc)  # a string: keeping the exception would keep its frames

    def _on_done(self, record: TaskRecord, task: asyncio.Task) -> None:
        # Runs soon after the end, maybe after the timeline closed: names may still
        # settle, timings may not. A coroutine can return while a cancel() is pending
        # (it cancelled itself, say); the task then ends cancelled, not done.
        # task.cancelled() is safe to ask; task.exception() is not (see the module doc).
        self._refresh_name(record)
        if record.ended_s is not None and task.cancelled():
            record.outcome, record.error = Outcome.CANCELLED, None

    def _refresh_name(self, record: TaskRecord) -> None:
        task = record._task() if record._task is not None else None
        if task is None:
            return
        name = task.get_name()
        if _NAME_BECOMES_NONE and name == "None" and record.name not in ("", "None"):
            task.set_name(record.name)
            name = record.name
        record.name = name

    # -- presentation ----------------------------------------------------------------

    def table(self) -> Table:
        """One row per task in creation order, times in milliseconds.

        ``created_by`` names the task that was running when the row's task was created
        (empty for none): who called ``create_task``, not a parent, which tasks lack.
        """

        def ms(s: float | None) -> float | None:
            return None if s is None else round(s * 1000, 6)

        return Table(
            Row(r.name, r.created_by or "", ms(r.created_s), ms(r.started_s), ms(r.ended_s),
                r.outcome.value, r.error or "")
            for r in self._records
        )

    def plot(
        self,
        *,
        title: str | None = None,
        max_rows: int = 40,
        xlim_ms: tuple[float, float] | None = None,
    ):
        """A Gantt chart: a row per task (first at the top), milliseconds across.

        ``xlim_ms`` fixes the time axis, e.g. to draw two timelines on one scale.

        Returns a matplotlib Figure (not pyplot's): a notebook cell ending with it
        shows it once, a script calls `fig.savefig("timeline.png")`.
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
        from matplotlib.transforms import blended_transform_factory

        records = self._records[:max_rows]
        end_s = self.duration_s or 0.0  # where bars of still-running tasks stop
        span_ms = max(end_s * 1000, 1e-3)
        sliver = span_ms / 150  # so that a task that took no time still shows its colour

        fig = Figure(figsize=(9, 1.8 + 0.3 * max(len(records), 1)), layout="constrained")
        FigureCanvasAgg(fig)  # headless: savefig and the notebook's PNG both work
        ax = fig.add_subplot()
        # Texts to keep inside the axes once the layout is known: outcome labels,
        # span labels, mark labels.
        outcomes, spans, marks = [], [], []
        for y, r in enumerate(records):
            created, ended = r.created_s * 1000, (end_s if r.ended_s is None else r.ended_s) * 1000
            started = ended if r.started_s is None else r.started_s * 1000
            if started > created:  # waiting to be scheduled: thin and hatched
                ax.barh(y, started - created, left=created, height=0.22, color=_WAIT_COLOUR,
                        hatch="////", edgecolor="#999999", linewidth=0)
            ax.barh(y, max(ended - started, sliver), left=started, height=0.6,
                    color=_COLOURS[r.outcome])
            if r.outcome is Outcome.FAILED and r.error:
                outcomes.append(ax.text(ended + sliver, y, " " + r.error.split("(", 1)[0],
                                        va="center", fontsize=8,
                                        color=_COLOURS[Outcome.FAILED]))
        for s in self._spans:
            stop = (end_s if s.end_s is None else s.end_s) * 1000
            ax.axvspan(s.start_s * 1000, stop, color="#4C72B0", alpha=0.10, linewidth=0)
            spans.append(ax.text(s.start_s * 1000, 0.01, f" {s.label}",
                                  transform=ax.get_xaxis_transform(), fontsize=8,
                                  color="#2F4B7C", va="bottom"))
        for m in self._marks:
            ax.axvline(m.at_s * 1000, color="#333333", linestyle="--", linewidth=1)
            marks.append(ax.text(m.at_s * 1000, 1.01, f" {m.label}",
                                  transform=ax.get_xaxis_transform(), fontsize=8,
                                  va="bottom", ha="left"))

        ax.set_yticks(range(len(records)), [_short(r.name) for r in records], fontsize=9)
        ax.set_ylim(len(records) - 0.5 if records else 0.5, -0.5)  # first task at the top
        ax.set_xlim(*(xlim_ms or (0, span_ms * 1.08)))
        ax.set_xlabel("time since the timeline started (ms)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_axisbelow(True)
        heading = title or "Timeline"
        if len(self._records) > len(records):
            heading += f"\n(first {len(records)} of {len(self._records)} tasks shown)"
        # Mark labels sit in one line of 8 pt text just above the axes; the title
        # goes above that line, whatever the labels' length.
        ax.set_title(heading, loc="left", pad=18 if self._marks else 6)

        handles = [Patch(color=colour, label=label) for colour, label in _LEGEND]
        handles.append(Patch(facecolor=_WAIT_COLOUR, hatch="////", edgecolor="#999999",
                             label="created, waiting for first step"))
        if self._marks:
            handles.append(Line2D([], [], color="#333333", linestyle="--", label="mark"))
        if self._spans:
            handles.append(Patch(color="#4C72B0", alpha=0.10, label="span"))
        # One row: with fewer columns than entries matplotlib fills them top to
        # bottom, and "cancelled" lands under "done" as if the line had wrapped.
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles),
                   fontsize=8, frameon=False, columnspacing=1.2, handletextpad=0.5)
        _keep_inside(fig, ax, outcomes, spans, marks, widen=xlim_ms is None,
                     blend=blended_transform_factory)
        # Jupyter shows a Figure through the inline backend's formatter, which exists
        # only once pyplot or %matplotlib has loaded it; until then this is the fallback.
        # Either way the picture appears once: a registered formatter wins over _repr_png_.
        fig._repr_png_ = functools.partial(_png, fig)
        return fig


_COLOURS = {
    Outcome.DONE: "#2E8B57",
    Outcome.CANCELLED: "#E69F00",
    Outcome.FAILED: "#D62728",
    Outcome.PENDING: "#8C8C8C",
}
_LEGEND = [  # legend order: the usual story first
    (_COLOURS[Outcome.DONE], "done"),
    (_COLOURS[Outcome.CANCELLED], "cancelled"),
    (_COLOURS[Outcome.FAILED], "failed"),
    (_COLOURS[Outcome.PENDING], "still running at exit"),
]
_WAIT_COLOUR = "#E8E8E8"


def _keep_inside(fig, ax, outcomes, spans, marks, *, widen, blend) -> None:
    """Keep every label within the axes, never past its right (or left) edge.

    An outcome label ("ValueError") starts where its bar ends, so the last task's
    runs past the axes. With no ``xlim_ms`` the time axis is widened just enough
    for it (text widths are known in pixels only after a layout pass). A mark's
    label near the right edge ends at its line instead of starting there. Any
    label that still does not fit is pinned to the edge of the axes, its y
    unchanged; a mark's or span's whose line is out of view is hidden with it.
    """
    texts = [*outcomes, *spans, *marks]
    if not texts:
        return
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()  # runs the constrained layout: real positions
    if widen and outcomes:
        width_px = ax.get_window_extent(renderer).width
        low, high = ax.get_xlim()
        needed = high - low
        for text in outcomes:
            room_px = 0.99 * width_px - text.get_window_extent(renderer).width
            if room_px > 0:  # x's share of the axis, in pixels, plus the text: W at most
                needed = max(needed, (text.get_position()[0] - low) * width_px / room_px)
        if high - low < needed <= 3 * (high - low):  # no wider: the bars would shrink
            ax.set_xlim(low, low + needed)
            fig.draw_without_rendering()
    box = ax.get_window_extent(renderer)

    def inside(text) -> bool:
        extent = text.get_window_extent(renderer)
        return box.x0 <= extent.x0 and extent.x1 <= box.x1

    low, high = ax.get_xlim()
    for text in texts:
        if inside(text):
            continue
        if text not in outcomes and not low <= text.get_position()[0] <= high:
            text.set_visible(False)  # its line is out of view (xlim_ms): so is its label
            continue
        if text in marks:  # first try ending at its line
            text.set_text(text.get_text().strip() + " ")
            text.set_horizontalalignment("right")
            if inside(text):
                continue
        right = text.get_window_extent(renderer).x1 > box.x1
        text.set_transform(blend(ax.transAxes, text.get_transform()))
        text.set_x(0.995 if right else 0.005)
        text.set_horizontalalignment("right" if right else "left")
        if text in outcomes:  # over a bar now: keep it readable
            text.set_bbox({"facecolor": "white", "alpha": 0.8, "linewidth": 0, "pad": 1})


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"
