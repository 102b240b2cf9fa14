"""Asyncio debug mode for one block of code, its reports collected into one table.

    with debug_block(slow_callback_s=0.05) as found:   # in a coroutine or a notebook cell
        await service()
    print(found)          # one row per finding: kind, task or coroutine, where, created at
    found.counts          # Counter({'slow callback': 2, 'never awaited': 1})

Debug mode reports four kinds of mistake, each in its own place and at its own time:

- **slow callback**: a callback or task step held the loop longer than
  ``loop.slow_callback_duration``; logged as "Executing <Task ...> took 0.123 seconds"
  (logger ``asyncio``, WARNING) right after the step.
- **never awaited**: a coroutine object was destroyed before it ever ran;
  ``RuntimeWarning: coroutine 'f' was never awaited``. With coroutine origin tracking
  (``sys.set_coroutine_origin_tracking_depth``) the warning names the lines that made it.
- **destroyed pending**: a task was garbage-collected while still waiting
  ("Task was destroyed but it is pending!"): the loop holds tasks only weakly.
- **never retrieved**: a task or future failed and was destroyed before anyone read its
  exception ("Task exception was never retrieved").

The last two go to the loop's exception handler when the object is destroyed, which
may be long after the mistake (at the next garbage collection). ``debug_block`` turns
everything on for the block only, on the running loop, collects the four kinds instead
of printing them, forces ``gc.collect()`` at the end so that the last two surface
inside the block, and restores every setting it changed, even when the block raises:
the loop's debug flag, ``slow_callback_duration`` and exception handler, the thread's
origin tracking depth, the warning filters, ``sys.unraisablehook``, the ``asyncio``
logger's filters and level. Reports that are none of the four (other loop errors,
other warnings) go where they would have gone.

The "created at" column comes from debug mode itself: while it is on, every Task,
Future and Handle records the stack that created it (``_source_traceback``). So it
exists only for objects created inside the block.

What debug mode costs (why it is off by default): that stack is extracted with
``traceback.extract_stack()`` at every Task, Future and ``call_soon``/``call_later``
handle, and origin tracking records frames at every coroutine created; each callback is
also timed and checked to run on the loop's thread. Measured by
``benchmarks/monitor_debug_cost.py`` (10,000 tasks that each yield once, Python 3.11,
a loaded 2-core machine): 7.6 µs per task with debug mode off, 186 µs inside
``debug_block()``, about 24 times slower; the deeper the stack that creates the tasks
(a notebook kernel's is deep), the slower. Turn it on to find a bug, for one block,
not for a service in production.

How each kind is caught: slow callbacks by a filter on the ``asyncio`` logger (it keeps
the record from reaching any handler; ``loop._current_handle`` names the task or
callback); never-awaited coroutines by a warning filter that turns only that warning
into an error, which Python then passes to ``sys.unraisablehook`` with the coroutine
itself (its ``cr_origin``); the other two by a loop exception handler.
"""

__all__ = ["CallSite", "DebugBlock", "DebugFinding", "DebugKind", "DebugReport", "debug_block"]

import asyncio
import collections
import dataclasses
import enum
import functools
import gc
import logging
import os
import re
import sys
import threading
import traceback
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_MONITOR_DIR = os.path.dirname(__file__) + os.sep
_TIMELINE_FILE = os.path.join(os.path.dirname(_MONITOR_DIR.rstrip(os.sep)), "timeline.py")
_UNAWAITED = r"coroutine .* was never awaited"
_LOGGER = logging.getLogger("asyncio")


class DebugKind(enum.StrEnum):
    SLOW_CALLBACK = "slow callback"  # a callback or task step held the loop too long
    NEVER_AWAITED = "never awaited"  # a coroutine object destroyed before it ran
    DESTROYED_PENDING = "destroyed pending"  # a pending task garbage-collected
    NEVER_RETRIEVED = "never retrieved"  # a failed task/future whose exception nobody read


class CallSite(NamedTuple):
    """One frame of a creation stack: ``str(site)`` is ``function (file.py:12)``."""

    filename: str
    lineno: int
    function: str

    @property
    def where(self) -> str:
        return f"{self.filename}:{self.lineno}"

    def __str__(self) -> str:
        return f"{self.function} ({self.where})"


@dataclasses.dataclass(frozen=True, slots=True)
class DebugFinding:
    """One report of debug mode, as data.

        DebugFinding(kind=<DebugKind.NEVER_AWAITED: 'never awaited'>, name='fetch',
                where='demo.py:12', origin=(CallSite('demo.py', 12, 'main'),), ...)

    ``where``, by kind: slow callback, the line where the task stopped after its slow
    step (its next ``await``) or the callback's definition; never awaited, the line
    that created the coroutine; destroyed pending, the line where the task was
    suspended (its coroutine's definition when gc had already closed it); never
    retrieved, the line that raised. ``origin`` is the stack that created the object,
    most recent call last, asyncio's own frames left out (empty when unknown).
    """

    kind: DebugKind
    name: str  # the task's name, or the coroutine's/callback's qualified name
    where: str  # "file:line", or "" when unknown
    message: str  # asyncio's own words (first line)
    origin: tuple[CallSite, ...] = ()
    detail: str = ""  # "took 0.123 s", the exception's repr, ...
    duration_s: float | None = None  # slow callbacks: how long the loop was held

    @property
    def created_at(self) -> str:
        """The line that created the task, coroutine or callback ("" when unknown)."""
        return self.origin[-1].where if self.origin else ""


class DebugReport:
    """The findings of one ``debug_block``, in the order they were reported.

        found.findings            # [DebugFinding(...), ...]
        found.counts              # Counter({'never awaited': 1})
        found.of("slow callback") # the findings of one kind
        print(found)              # the same as found.table()
    """

    def __init__(self) -> None:
        self.findings: list[DebugFinding] = []

    def __iter__(self) -> Iterator[DebugFinding]:
        return iter(list(self.findings))

    def __len__(self) -> int:
        return len(self.findings)

    @property
    def counts(self) -> collections.Counter[DebugKind]:
        """How many findings of each kind (DebugKind is a str: ``counts["never awaited"]``)."""
        return collections.Counter(f.kind for f in self.findings)

    def of(self, kind: DebugKind | str) -> list[DebugFinding]:
        return [f for f in self.findings if f.kind == DebugKind(kind)]

    def table(self) -> str:
        """A text table, one row per finding; paths shortened."""
        if not self.findings:
            return "debug mode: no findings"
        header = ("kind", "task / coroutine", "where", "created at", "detail")
        rows = [
            (f.kind.value, f.name, _short(f.where), _short(f.created_at), f.detail)
            for f in self.findings
        ]
        return _format_table(header, rows)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        counts = ", ".join(f"{kind.value}: {n}" for kind, n in self.counts.items())
        return f"<DebugReport {len(self)} findings ({counts or 'none'})>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython shows the table
        printer.text(self.table())


class _State(enum.Enum):
    NEW = "new"
    ACTIVE = "active"
    CLOSED = "closed"


class DebugBlock:
    """Debug mode on the running loop for one block; a ``DebugReport`` as the result.

        with DebugBlock(slow_callback_s=0.05) as found: ...        # inside a coroutine
        async with DebugBlock() as found: ...                     # also lets callbacks run

    Use ``debug_block(...)``; the class is public for its docstring and type. The
    ``async with`` form yields to the loop once before collecting (callbacks of tasks
    that have just ended run, so what they drop is destroyed inside the block) and
    once after restoring (the loop applies its own origin-tracking change then), so
    right after the block every setting reads as before. The ``with`` form restores
    the same settings; two of them at the loop's next iteration: its own
    origin-tracking bookkeeping, and the logger filter (kept one step longer so that
    the report of the step that left the block, its ``gc.collect()`` included, does
    not reach a loop that had debug mode off).
    """

    def __init__(
        self, *, slow_callback_s: float = 0.1, origin_depth: int = 10, collect: bool = True
    ) -> None:
        if slow_callback_s < 0:
            raise ValueError(f"slow_callback_s must be >= 0, not {slow_callback_s!r}")
        if origin_depth < 0:
            raise ValueError(f"origin_depth must be >= 0, not {origin_depth!r}")
        self.slow_callback_s = slow_callback_s
        self.origin_depth = origin_depth
        self.collect = collect
        self.report = DebugReport()
        self._state = _State.NEW
        self._draining = False

    def __repr__(self) -> str:
        return f"<DebugBlock {self._state.value}, {len(self.report)} findings>"

    # -- entering and leaving ---------------------------------------------------------

    def __enter__(self) -> DebugReport:
        if self._state is not _State.NEW:
            raise RuntimeError(f"{self!r} was already entered; use a new debug_block()")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "debug_block() watches the running loop: use it inside a coroutine or a "
                "notebook cell"
            ) from None
        self._loop = loop
        self._thread = threading.get_ident()
        self._saved_debug = loop.get_debug()
        self._saved_slow = loop.slow_callback_duration
        self._saved_depth = sys.get_coroutine_origin_tracking_depth()
        self._saved_handler = loop.get_exception_handler()
        self._saved_hook = sys.unraisablehook
        self._saved_level = _LOGGER.level
        self._warnings = warnings.catch_warnings()  # restores filters and showwarning
        self._warnings.__enter__()
        self._state = _State.ACTIVE
        # Only this warning becomes an error, so that Python hands it to
        # sys.unraisablehook together with the coroutine (and its cr_origin).
        warnings.filterwarnings("error", message=_UNAWAITED, category=RuntimeWarning)
        sys.unraisablehook = self._on_unraisable
        loop.set_exception_handler(self._on_exception)
        _LOGGER.addFilter(self._on_log)
        if not _LOGGER.isEnabledFor(logging.WARNING):
            _LOGGER.setLevel(logging.WARNING)
        loop.slow_callback_duration = self.slow_callback_s
        self._set_debug(True)
        self._set_depth(self.origin_depth)
        return self.report

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.collect:
                gc.collect()  # what was dropped in the block is destroyed (and reported) now
        finally:
            self._restore()

    async def __aenter__(self) -> DebugReport:
        return self.__enter__()

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        try:
            if exc_type is None:
                await asyncio.sleep(0)  # let the callbacks of tasks that just ended run
        finally:
            self.__exit__(exc_type, *exc_info)
        if exc_type is None:
            await asyncio.sleep(0)  # the loop applies its origin-tracking change now

    def _restore(self) -> None:
        loop = self._loop
        self._state = _State.CLOSED
        self._set_debug(self._saved_debug)
        self._set_depth(self._saved_depth)
        loop.slow_callback_duration = self._saved_slow
        if _LOGGER.level != self._saved_level:
            _LOGGER.setLevel(self._saved_level)
        # The loop read its debug flag when the step now running began, and times it:
        # if it is slow (this very gc.collect()), it reports it once the step ends.
        # Keep the filter until then, to drop that report when debug mode was off
        # before the block (nobody would have seen it without us).
        self._draining = not self._saved_debug
        loop.call_soon(self._stop_filtering)
        # Put back what we replaced only if ours is still installed: code in the block
        # that installed its own handler or hook keeps it (as Timeline does its factory).
        if loop.get_exception_handler() == self._on_exception:
            loop.set_exception_handler(self._saved_handler)
        if sys.unraisablehook == self._on_unraisable:
            sys.unraisablehook = self._saved_hook
        self._warnings.__exit__(None, None, None)

    def _set_debug(self, enabled: bool) -> None:
        if self._loop.get_debug() != enabled:
            self._loop.set_debug(enabled)

    def _set_depth(self, depth: int) -> None:
        # loop.set_debug() on a running loop does not change the origin tracking depth
        # at once: it schedules loop._set_coroutine_origin_tracking(), which saves the
        # depth of that moment and sets 10 (on), or puts the saved depth back (off).
        # Set ours now, so the very next coroutine is tracked, and again right after
        # the loop's callback, so ours is what holds while the block runs and what
        # remains afterwards.
        sys.set_coroutine_origin_tracking_depth(depth)
        self._loop.call_soon(sys.set_coroutine_origin_tracking_depth, depth)

    def _stop_filtering(self) -> None:
        self._draining = False
        _LOGGER.removeFilter(self._on_log)

    # -- the three listeners ----------------------------------------------------------

    def _on_log(self, record: logging.LogRecord) -> bool:
        """Logger filter: keep slow-callback records of our loop; pass everything else."""
        if (
            record.levelno != logging.WARNING
            or not str(record.msg).startswith("Executing ")
            or not isinstance(record.args, tuple)
            or len(record.args) != 2
            or record.thread != self._thread  # another loop's report (in another thread)
        ):
            return True
        if self._state is not _State.ACTIVE:
            return not self._draining  # the step that left the block: see _restore()
        handle = getattr(self._loop, "_current_handle", None)  # set while the callback ran
        text, duration_s = record.args
        self.report.findings.append(_slow_callback(handle, str(text), float(duration_s)))
        return False  # collected: no handler prints it

    def _on_unraisable(self, unraisable: Any) -> None:
        exc, obj = unraisable.exc_value, unraisable.object
        if isinstance(exc, RuntimeWarning) and re.match(_UNAWAITED, str(exc)):
            self.report.findings.append(_never_awaited(obj, str(exc)))
            return
        (self._saved_hook or sys.__unraisablehook__)(unraisable)

    def _on_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        if "destroyed but it is pending" in message and "task" in context:
            self.report.findings.append(_destroyed_pending(context))
        elif "exception was never retrieved" in message and "exception" in context:
            self.report.findings.append(_never_retrieved(context))
        elif self._saved_handler is not None:
            self._saved_handler(loop, context)
        else:
            loop.default_exception_handler(context)


def debug_block(
    *, slow_callback_s: float = 0.1, origin_depth: int = 10, collect: bool = True
) -> DebugBlock:
    """Asyncio debug mode on the running loop for one ``with`` (or ``async with``) block.

        with debug_block(slow_callback_s=0.05) as found:
            asyncio.create_task(work())   # noqa: RUF006 -- the mistake being hunted
            await asyncio.sleep(1)
        print(found)

    ``slow_callback_s``: report any callback or task step that holds the loop at least
    this long (asyncio's default is 0.1 s). ``origin_depth``: how many frames each new
    coroutine records, for "never awaited" reports (10, as debug mode itself).
    ``collect``: run ``gc.collect()`` at the end so that tasks and futures dropped in
    the block are destroyed, and reported, inside it.
    """
    return DebugBlock(
        slow_callback_s=slow_callback_s, origin_depth=origin_depth, collect=collect
    )


# -- turning asyncio's reports into findings ----------------------------------------------


def _slow_callback(handle: Any, text: str, duration_s: float) -> DebugFinding:
    message = f"Executing {text} took {duration_s:.3f} seconds"
    detail = f"took {duration_s:.3f} s"
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        return DebugFinding(
            DebugKind.SLOW_CALLBACK, task.get_name(), _task_where(task), message,
            _origin(getattr(task, "_source_traceback", None)), detail, duration_s,
        )
    if handle is not None:  # a plain callback: call_soon(f), call_later(...)
        code = _code_of(callback)
        return DebugFinding(
            DebugKind.SLOW_CALLBACK, _callable_name(callback),
            f"{code.co_filename}:{code.co_firstlineno}" if code else "", message,
            _origin(getattr(handle, "_source_traceback", None)), detail, duration_s,
        )
    # No handle (uvloop has no _current_handle): read what the text says.
    name = re.search(r"name='([^']*)'", text) or re.search(r"Handle ([^\s(>]+)", text)
    where = re.search(r"(?:running|defined) at (\S+?):(\d+)", text)
    created = re.search(r"created at (\S+?):(\d+)", text)
    origin = _origin([CallSite(created.group(1), int(created.group(2)), "")] if created else ())
    return DebugFinding(
        DebugKind.SLOW_CALLBACK, name.group(1) if name else text[:60],
        f"{where.group(1)}:{where.group(2)}" if where else "", message, origin, detail,
        duration_s,
    )


def _never_awaited(coro: Any, text: str) -> DebugFinding:
    name = getattr(coro, "__qualname__", None) or repr(coro)
    # cr_origin: (filename, lineno, function) tuples, most recent call first.
    origin = _origin(
        CallSite(*entry) for entry in reversed(getattr(coro, "cr_origin", None) or ())
    )
    if origin:
        where = origin[-1].where
    else:
        code = getattr(coro, "cr_code", None)
        where = f"{code.co_filename}:{code.co_firstlineno}" if code else ""
    return DebugFinding(DebugKind.NEVER_AWAITED, name, where, text.splitlines()[0], origin)


def _destroyed_pending(context: dict[str, Any]) -> DebugFinding:
    task = context["task"]
    name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
    return DebugFinding(
        DebugKind.DESTROYED_PENDING, name, _task_where(task), str(context["message"]),
        _origin(context.get("source_traceback")), _coro_name(task),
    )


def _never_retrieved(context: dict[str, Any]) -> DebugFinding:
    exc: BaseException = context["exception"]
    future = context.get("future")
    name = future.get_name() if isinstance(future, asyncio.Task) else type(future).__name__
    raised = traceback.extract_tb(exc.__traceback__)
    where = f"{raised[-1].filename}:{raised[-1].lineno}" if raised else ""
    return DebugFinding(
        DebugKind.NEVER_RETRIEVED, name, where, str(context["message"]),
        _origin(context.get("source_traceback")), repr(exc),
    )


# -- frames, names, tables -----------------------------------------------------------------


@functools.lru_cache(maxsize=1024)  # called for every frame of every recorded creation
def _is_internal(filename: str) -> bool:
    """asyncio's own files and the course's recorders: never the line you are after."""
    return (
        filename.startswith((_ASYNCIO_DIR, _MONITOR_DIR))
        or filename == _TIMELINE_FILE
        or filename.startswith("<frozen ")
    )


def _origin(frames: Iterable[Any] | None) -> tuple[CallSite, ...]:
    """A creation stack as Frames, most recent call last, asyncio's own frames left out."""
    if not frames:
        return ()
    return tuple(
        f if isinstance(f, CallSite) else CallSite(f.filename, f.lineno or 0, f.name)
        for f in frames
        if not _is_internal(f.filename)
    )


def _task_where(task: Any) -> str:
    """The line where a task is suspended: the innermost line of yours in its await chain.

    asyncio's own frames (``sleep``, ``Queue.get``, ...) are skipped: the line that
    matters is the ``await`` in your code. A coroutine already closed (gc closes it
    before the task reports "destroyed pending") gives the line where it is defined.
    """
    get_coro = getattr(task, "get_coro", None)
    coro = get_coro() if get_coro is not None else None
    where = defined = ""
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        if frame is not None and (not where or not _is_internal(frame.f_code.co_filename)):
            where = f"{frame.f_code.co_filename}:{frame.f_lineno}"
        elif code is not None and not defined:
            defined = f"{code.co_filename}:{code.co_firstlineno}"
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return where or defined


def _coro_name(task: Any) -> str:
    get_coro = getattr(task, "get_coro", None)
    coro = get_coro() if get_coro is not None else None
    return getattr(coro, "__qualname__", None) or type(coro).__qualname__


def _code_of(callback: Any) -> Any:
    while hasattr(callback, "func"):  # functools.partial
        callback = callback.func
    callback = getattr(callback, "__func__", callback)  # bound method
    return getattr(callback, "__code__", None)


def _callable_name(callback: Any) -> str:
    while hasattr(callback, "func"):
        callback = callback.func
    return getattr(callback, "__qualname__", None) or repr(callback)


def _short(path_and_line: str) -> str:
    """'/home/me/course/demo.py:12' -> 'demo.py:12' relative to the working directory."""
    if not path_and_line:
        return ""
    path, _, line = path_and_line.rpartition(":")
    if not path:
        return path_and_line
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        rel = path
    if rel.startswith(".."):
        rel = os.path.join(*path.split(os.sep)[-2:])
    return f"{rel}:{line}"


def _format_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in (header, *rows)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
