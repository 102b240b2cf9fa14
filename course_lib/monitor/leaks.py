"""Leak hunting: tasks that pile up, memory that grows, tasks that vanish.

    async with TaskCensus(interval_s=1.0) as census:   # tasks by coroutine, every second
        await service()
    census.growing()          # [Growth('handle_client', counts=(2, 4, 7, 11))]
    census.lingering(5)       # tasks seen in 5 samples or more: should they not have ended?

    with memory_diff(top=10) as diff:                  # tracemalloc, before vs after
        cache_everything()
    print(diff)               # the lines that allocated the most, and how much

    async with VanishedTasks() as vanished:            # chapter 1's weak-reference trap
        asyncio.create_task(wait_for_reply())          # noqa: RUF006 -- no reference kept
        ...
    print(vanished)           # the task the garbage collector destroyed, and its line

Three ways a program leaks, three tools:

- A task that should have ended and did not (a handler waiting on a client that left,
  a retry loop that never gives up) shows as a coroutine name whose count only grows,
  or as a task that is still there sample after sample. ``TaskCensus`` counts
  ``asyncio.all_tasks()`` by coroutine name at each sample and keeps a bounded history.
- Memory that grows: ``memory_diff`` takes a tracemalloc snapshot before and after a
  block and lists the lines whose allocations grew the most.
- The opposite leak: a task that disappears. The loop keeps only weak references to
  tasks; a task that nobody else references and that waits on something only it knows
  is garbage, and the collector destroys it mid-``await`` (asyncio's only trace: "Task
  was destroyed but it is pending!"). ``VanishedTasks`` records where each task was
  created and reports those destroyed while pending, with that line.
"""

__all__ = [
    "CensusSample",
    "Growth",
    "Lingering",
    "MemoryDiff",
    "MemoryRow",
    "TaskCensus",
    "VanishedTask",
    "VanishedTasks",
    "memory_diff",
]

import asyncio
import collections
import dataclasses
import enum
import functools
import gc
import itertools
import linecache
import sys
import tracemalloc
import weakref
from collections.abc import Iterator
from typing import Any

from course_lib.lifecycle import cancel_and_wait
from course_lib.monitor.debug import (
    CallSite,
    _coro_name,
    _format_table,
    _is_internal,
    _short,
    _task_where,
)

# -- 1. tasks by coroutine name, over time ---------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CensusSample:
    """One look at the loop: how many unfinished tasks run each coroutine."""

    index: int  # 0 for the first sample ever taken by this census, then 1, 2, ...
    at_s: float  # loop.time()
    counts: dict[str, int]  # coroutine qualified name -> unfinished tasks

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclasses.dataclass(frozen=True, slots=True)
class Growth:
    """A coroutine name whose task count only grew over the samples looked at."""

    name: str
    counts: tuple[int, ...]  # one per sample, oldest first

    def __str__(self) -> str:
        return f"{self.name}: {self.counts[0]} -> {self.counts[-1]} over {len(self.counts)} samples"


@dataclasses.dataclass(frozen=True, slots=True)
class Lingering:
    """A task still unfinished after many samples: perhaps one that should have ended."""

    name: str  # the task's name
    coroutine: str
    samples: int  # how many samples in a row have seen it
    age_s: float  # loop time since the first sample that saw it
    where: str  # the line where it is suspended, "file:line"
    task: asyncio.Task[Any] = dataclasses.field(repr=False, compare=False)


class TaskCensus:
    """Count a loop's tasks by coroutine name, sample after sample; flag what only grows.

        async with TaskCensus(interval_s=1.0, history=120) as census:
            await service()
        census.growing()       # names whose count only grew
        census.lingering(10)   # tasks seen in 10 samples in a row
        print(census)          # one row per name: now, max, the recent counts

    Or by hand, from any coroutine of the loop: ``census = TaskCensus()``, then
    ``census.sample()`` whenever you like. The ``async with`` form samples on entry,
    every ``interval_s`` and on exit, in a task of its own that it cancels and awaits on
    exit (and never counts). At most ``history`` samples are kept (oldest dropped), so a
    census left running for a day holds ``history`` small dicts, not a day of them.
    Tasks are held weakly: the census keeps none of them alive.
    """

    def __init__(
        self,
        *,
        interval_s: float = 1.0,
        history: int = 120,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s!r}")
        if history < 2:
            raise ValueError(f"history must be >= 2 samples, not {history!r}")
        self.interval_s = interval_s
        self.history = history
        self._loop = loop
        self._samples: collections.deque[CensusSample] = collections.deque(maxlen=history)
        # task -> (index, at_s) of the first sample that saw it; weak: tasks are not kept.
        self._first_seen: weakref.WeakKeyDictionary[asyncio.Task[Any], tuple[int, float]] = (
            weakref.WeakKeyDictionary()
        )
        self._next_index = 0
        self._sampler: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        running = "sampling" if self._sampler is not None else "idle"
        return f"<TaskCensus {running}, {len(self._samples)}/{self.history} samples>"

    @property
    def samples(self) -> list[CensusSample]:
        """The samples kept, oldest first."""
        return list(self._samples)

    def sample(self) -> CensusSample:
        """Count the unfinished tasks of the loop now, by coroutine name."""
        loop = self._loop or asyncio.get_running_loop()
        counts: collections.Counter[str] = collections.Counter()
        index, now = self._next_index, loop.time()
        for task in asyncio.all_tasks(loop):
            if task is self._sampler:
                continue  # the census does not count itself
            counts[_coro_name(task)] += 1
            self._first_seen.setdefault(task, (index, now))
        sample = CensusSample(index, now, dict(counts.most_common()))
        self._samples.append(sample)
        self._next_index += 1
        return sample

    def series(self, name: str) -> tuple[int, ...]:
        """The count of ``name`` in each kept sample, oldest first (0 where absent)."""
        return tuple(s.counts.get(name, 0) for s in self._samples)

    def growing(self, *, window: int | None = None, min_samples: int = 3) -> list[Growth]:
        """Names whose count never fell and rose overall, over the last ``window`` samples.

        Fewer than ``min_samples`` samples say nothing yet (an empty list). A pool that
        grows and shrinks with load is not flagged; a leak is a count that only grows.
        """
        samples = list(self._samples)[-window:] if window else list(self._samples)
        if len(samples) < max(min_samples, 2):
            return []
        names = {name for s in samples for name in s.counts}
        found = []
        for name in sorted(names):
            counts = tuple(s.counts.get(name, 0) for s in samples)
            rises = all(a <= b for a, b in itertools.pairwise(counts))
            if rises and counts[-1] > counts[0]:
                found.append(Growth(name, counts))
        return sorted(found, key=lambda g: g.counts[0] - g.counts[-1])

    def lingering(self, samples: int) -> list[Lingering]:
        """Unfinished tasks that the last ``samples`` samples all saw, oldest first."""
        if samples < 1:
            raise ValueError(f"samples must be >= 1, not {samples!r}")
        if not self._samples:
            return []
        last = self._samples[-1]
        found = []
        for task, (first, first_at_s) in list(self._first_seen.items()):
            seen = last.index - first + 1
            if task.done() or seen < samples:
                continue
            found.append(Lingering(
                task.get_name(), _coro_name(task), seen, last.at_s - first_at_s,
                _task_where(task), task,
            ))
        return sorted(found, key=lambda row: (-row.samples, row.name))

    def table(self, *, last: int = 10) -> str:
        """One row per coroutine name: count now, max, the last ``last`` counts."""
        if not self._samples:
            return "task census: no samples yet"
        growing = {g.name for g in self.growing()}
        latest = self._samples[-1].counts
        names = sorted({n for s in self._samples for n in s.counts},
                       key=lambda n: (-latest.get(n, 0), n))
        rows = [
            (name, str(latest.get(name, 0)), str(max(self.series(name))),
             " ".join(map(str, self.series(name)[-last:])),
             "only grows" if name in growing else "")
            for name in names
        ]
        header = ("coroutine", "now", "max", f"last {min(last, len(self._samples))} samples", "")
        return _format_table(header, rows)

    def __str__(self) -> str:
        return self.table()

    async def __aenter__(self) -> "TaskCensus":
        if self._sampler is not None:
            raise RuntimeError(f"{self!r} is already sampling")
        self._loop = self._loop or asyncio.get_running_loop()
        self.sample()
        self._sampler = asyncio.create_task(self._run(), name="TaskCensus sampler")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            await cancel_and_wait(sampler)  # waits for it even if we are cancelled meanwhile
        loop = self._loop or asyncio.get_running_loop()
        if self._samples[-1].at_s != loop.time():
            self.sample()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.sample()


# -- 2. memory: a tracemalloc diff around a block --------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class MemoryRow:
    """One source line and how its live allocations changed across the block."""

    where: str  # "file:line"
    size_diff_b: int  # bytes still allocated from this line, after minus before
    count_diff: int  # blocks, after minus before
    size_b: int  # bytes allocated from this line after the block
    line: str  # the source line, stripped

    def __str__(self) -> str:
        return f"{_short(self.where)}: {_kib(self.size_diff_b)} ({self.line})"


class MemoryDiff:
    """What a block left allocated, by source line (tracemalloc, before vs after).

        with memory_diff(top=5) as diff:
            cache = [bytes(1024) for _ in range(1000)]
        diff.rows[0]        # MemoryRow(where='demo.py:2', size_diff_b=1081344, ...)
        print(diff)         # the table

    Tracing starts on entry and stops on exit, unless tracemalloc was already tracing
    (then it is left as it was). Only memory still allocated at the end counts: what
    the block allocated and freed does not show. tracemalloc sees every thread: a
    busy thread beside the block shows too. Tracing slows allocation down several
    times: measure leaks with it, not speed.
    """

    def __init__(self, *, top: int = 10) -> None:
        if top < 1:
            raise ValueError(f"top must be >= 1, not {top!r}")
        self.top = top
        self.rows: list[MemoryRow] = []
        self.total_diff_b = 0  # net change over all lines (negative: the block freed memory)
        self._before: tracemalloc.Snapshot | None = None
        self._started = False
        self._entered = False

    def __enter__(self) -> "MemoryDiff":
        if self._entered:
            raise RuntimeError("a MemoryDiff measures one block; use a new memory_diff()")
        self._entered = True
        self._started = not tracemalloc.is_tracing()
        if self._started:
            tracemalloc.start()
        self._before = _snapshot()
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            after = _snapshot()
        finally:
            if self._started:
                tracemalloc.stop()
        assert self._before is not None
        stats = after.compare_to(self._before, "lineno")
        self.total_diff_b = sum(s.size_diff for s in stats)
        grown = sorted((s for s in stats if s.size_diff > 0), key=lambda s: -s.size_diff)
        self.rows = [_memory_row(s) for s in grown[: self.top]]
        self._before = None  # the snapshot can be large: drop it now

    def table(self) -> str:
        if not self.rows:
            return f"memory: no line grew (net {_kib(self.total_diff_b)})"
        rows = [(_short(r.where), _kib(r.size_diff_b), f"{r.count_diff:+d}", r.line)
                for r in self.rows]
        table = _format_table(("where", "grew", "blocks", "line"), rows)
        return f"{table}\nnet change, all lines: {_kib(self.total_diff_b)}"

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return f"<MemoryDiff {len(self.rows)} rows, net {_kib(self.total_diff_b)}>"


def memory_diff(*, top: int = 10) -> MemoryDiff:
    """A tracemalloc snapshot diff around a ``with`` block: the ``top`` lines that grew most."""
    return MemoryDiff(top=top)


_MEMORY_FILTERS = (
    tracemalloc.Filter(False, tracemalloc.__file__),
    tracemalloc.Filter(False, __file__),
    tracemalloc.Filter(False, linecache.__file__),
    tracemalloc.Filter(False, "<frozen *>"),  # importlib, abc caches: the interpreter's
    tracemalloc.Filter(False, "<unknown>"),
)


def _snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces(_MEMORY_FILTERS)


def _memory_row(stat: tracemalloc.StatisticDiff) -> MemoryRow:
    frame = stat.traceback[0]
    line = linecache.getline(frame.filename, frame.lineno).strip()
    return MemoryRow(f"{frame.filename}:{frame.lineno}", stat.size_diff, stat.count_diff,
                     stat.size, line)


def _kib(size_b: int) -> str:
    return f"{size_b / 1024:+,.1f} KiB"


# -- 3. tasks that vanish: the weak-reference trap ---------------------------------------------


@dataclasses.dataclass(slots=True)
class VanishedTask:
    """A task the garbage collector destroyed while it was still pending."""

    name: str
    coroutine: str  # qualified name of its coroutine
    created_at: str  # "file:line": the create_task() call that kept no reference
    origin: tuple[CallSite, ...]  # the creation stack, most recent call last
    created_s: float  # loop.time() at creation
    vanished_s: float | None = None  # loop.time() when the collector destroyed it
    where: str = ""  # where it was suspended (or its coroutine's definition), when known
    message: str = ""  # asyncio's own report, when it reached us

    def __str__(self) -> str:
        return f"{self.name} ({self.coroutine}) created at {_short(self.created_at)}"


class _State(enum.Enum):
    NEW = "new"
    ACTIVE = "active"  # the task factory records creations
    CLOSED = "closed"  # findings are frozen


class VanishedTasks:
    """Report tasks destroyed by the garbage collector while pending, with their creation line.

        async with VanishedTasks() as vanished:
            asyncio.create_task(wait_for_reply())   # noqa: RUF006 -- nobody keeps it
            await asyncio.sleep(0)
        vanished.found        # [VanishedTask(name='Task-3', coroutine='wait_for_reply',
                              #               created_at='demo.py:2', ...)]

    While active, it is the loop's task factory (chaining any factory already there):
    each task's creation line is recorded, and a weak reference with a callback tells
    when a task is destroyed before it ended. asyncio's "Task was destroyed but it is
    pending!" for those tasks is captured (a loop exception handler, for the block),
    not printed; every other report goes to the handler that was there.

    The collector destroys such a task at a random later moment. ``check()`` runs
    ``gc.collect()`` now, so the trap fires now, and returns what it found; leaving
    the block does the same (``collect=True``); ``interval_s`` (``async with`` only)
    checks in a background task that often. Tasks created before the block are not
    watched, and reports are frozen when the block ends.

    Cost: a walk up the creating stack (``depth`` frames of yours), a weak reference
    and a done callback per task; ``benchmarks/monitor_debug_cost.py`` measured 7.6 µs
    per empty task without, 42 µs with (15-35 µs more per task, depending on how busy
    the garbage collector is). A tool for finding the bug, like debug mode, which
    costs five times more.
    """

    def __init__(
        self, *, interval_s: float | None = None, collect: bool = True, depth: int = 8,
        max_found: int = 1000,
    ) -> None:
        if interval_s is not None and interval_s <= 0:
            raise ValueError(f"interval_s must be > 0 or None, not {interval_s!r}")
        self.interval_s = interval_s
        self.collect = collect
        self.depth = depth
        self._found: collections.deque[VanishedTask] = collections.deque(maxlen=max_found)
        # id(task) -> (record, weak reference whose callback reports its destruction).
        # An entry leaves when the task ends (done callback) or is destroyed pending.
        self._pending: dict[int, tuple[VanishedTask, weakref.ref[Any]]] = {}
        # Destroyed-pending tasks whose asyncio report may still come: the task is being
        # finalized, so its id cannot belong to another object yet.
        self._reporting: dict[int, VanishedTask] = {}
        self._state = _State.NEW
        self._checked = 0
        self._checker: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<VanishedTasks {self._state.value}, {len(self._found)} found>"

    @property
    def found(self) -> list[VanishedTask]:
        """The tasks destroyed while pending, in the order they were destroyed."""
        return list(self._found)

    def __iter__(self) -> Iterator[VanishedTask]:
        return iter(self.found)

    def __len__(self) -> int:
        return len(self._found)

    def check(self) -> list[VanishedTask]:
        """Collect garbage now; return the tasks found destroyed since the last check."""
        gc.collect()
        new = list(self._found)[self._checked:]
        self._checked = len(self._found)
        return new

    def table(self) -> str:
        if not self._found:
            return "no task vanished"
        rows = [(v.name, v.coroutine, _short(v.created_at), _short(v.where))
                for v in self._found]
        return _format_table(("task", "coroutine", "created at", "suspended at"), rows)

    def __str__(self) -> str:
        return self.table()

    # -- entering and leaving ---------------------------------------------------------

    def __enter__(self) -> "VanishedTasks":
        if self._state is not _State.NEW:
            raise RuntimeError(f"{self!r} was already entered; use a new VanishedTasks()")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._previous_factory = loop.get_task_factory()
        self._previous_handler = loop.get_exception_handler()
        self._state = _State.ACTIVE
        loop.set_task_factory(self._factory)
        loop.set_exception_handler(self._on_exception)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self.collect:
                self.check()
        finally:
            self._state = _State.CLOSED
            loop = self._loop
            # Ours may be wrapped by a factory installed later (a Timeline): then it stays
            # in their chain and only passes tasks through.
            if loop.get_task_factory() == self._factory:
                loop.set_task_factory(self._previous_factory)
            if loop.get_exception_handler() == self._on_exception:
                loop.set_exception_handler(self._previous_handler)
            self._pending.clear()  # drops the weak references: no callback after this
            self._reporting.clear()

    async def __aenter__(self) -> "VanishedTasks":
        self.__enter__()
        if self.interval_s is not None:
            self._checker = asyncio.create_task(self._run(), name="VanishedTasks checker")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        checker, self._checker = self._checker, None
        try:
            if checker is not None:
                await cancel_and_wait(checker)
        finally:
            self.__exit__(*exc_info)

    async def _run(self) -> None:
        assert self.interval_s is not None
        while True:
            await asyncio.sleep(self.interval_s)
            self.check()

    # -- the factory and the two ways a destruction is heard -------------------------

    def _factory(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        task = self._create(loop, coro, kwargs)
        if self._state is not _State.ACTIVE or task is self._checker or task.done():
            return task
        key = id(task)
        self._reporting.pop(key, None)  # that id's previous owner is gone for good
        origin = _creation_stack(self.depth)
        record = VanishedTask(
            name=kwargs.get("name") or task.get_name(),  # 3.11-3.13.2 rename it after us
            coroutine=_coro_name(task),
            created_at=origin[-1].where if origin else "",
            origin=origin,
            created_s=loop.time(),
        )
        self._pending[key] = (record, weakref.ref(task, functools.partial(self._gone, key)))
        task.add_done_callback(functools.partial(self._ended, key))
        return task

    def _create(self, loop: asyncio.AbstractEventLoop, coro: Any, kwargs: dict) -> Any:
        if self._previous_factory is not None:
            return self._previous_factory(loop, coro, **kwargs)
        task = asyncio.Task(coro, loop=loop, **kwargs)
        # Debug mode's "created at" should end at the user's line, as without a factory.
        source = getattr(task, "_source_traceback", None)
        while source and _is_internal(source[-1].filename):
            del source[-1]
        return task

    def _ended(self, key: int, task: asyncio.Task[Any]) -> None:
        self._pending.pop(key, None)  # ended normally: nothing to report

    def _gone(self, key: int, _ref: Any) -> None:
        entry = self._pending.pop(key, None)
        if entry is None or self._state is not _State.ACTIVE:
            return
        record = entry[0]
        record.vanished_s = self._loop.time()
        self._found.append(record)
        if not record.message:  # asyncio's report comes next (a collected cycle)
            self._reporting[key] = record

    def _on_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        task = context.get("task")
        message = str(context.get("message", ""))
        if task is not None and "destroyed but it is pending" in message:
            key = id(task)
            record = self._reporting.pop(key, None)
            if record is None and key in self._pending:
                record = self._pending[key][0]  # freed by refcount: the report comes first
            if record is not None:
                record.name = task.get_name()
                record.where = _task_where(task)
                record.message = message
                return
        if self._previous_handler is not None:
            self._previous_handler(loop, context)
        else:
            loop.default_exception_handler(context)


def _creation_stack(depth: int) -> tuple[CallSite, ...]:
    """The caller's stack above create_task(), most recent call last, asyncio left out."""
    frame = sys._getframe(2)
    while frame is not None and _is_internal(frame.f_code.co_filename):
        frame = frame.f_back
    sites = []
    while frame is not None and len(sites) < depth:
        if not _is_internal(frame.f_code.co_filename):
            sites.append(CallSite(frame.f_code.co_filename, frame.f_lineno,
                                  frame.f_code.co_qualname))
        frame = frame.f_back
    return tuple(reversed(sites))
