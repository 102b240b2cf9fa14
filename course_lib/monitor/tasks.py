"""A task tree: every task of a loop, where each is suspended, and who awaits whom.

    snap = snapshot()          # in a notebook cell or any coroutine: the running loop
    snap                       # the tree, like Python 3.14's `python -m asyncio pstree`
    snap.table()               # one row per task: state, age, what it waits for, where
    where(task)                # ['main (demo.py:12)', 'sleep (asyncio/tasks.py:665)']
    with track(): ...          # tasks created inside get an age and a creation line

How it knows, on Python 3.11-3.13 (no call-graph API yet), from the objects alone:

- *Where* a task is suspended: its coroutine's ``cr_await`` chain (see ``_frames``).
- *What* it waits for: ``task._fut_waiter``, the Future whose result wakes it (a Task,
  a gather's future, or a plain Future that sleep, Event.wait, Queue.get... made),
  named after the outermost asyncio frame of the chain that made it.
- *Who awaits whom*: the Future's done callbacks. A task suspended on a future adds
  its wakeup method (``task_wakeup``, bound to that task) to the future's callbacks;
  a TaskGroup adds ``_on_task_done`` to each child; gather, shield, wait and
  wait_for add closures that hold their outer future. Followed back, these name the
  awaiting task: the same edges 3.14 records in ``future._asyncio_awaited_by`` for
  ``asyncio.capture_call_graph()``.

On 3.14+ those recorded edges are added too. capture_call_graph() itself is not
called: it stops at the hidden object an ``async for`` awaits, and on two tasks
awaiting each other (a deadlock) it recurses until RecursionError. The tree here
marks the cycle instead. A test compares both where 3.14 exists.

Tasks carry no creation time. ``track()`` installs a task factory (chained to any
existing one) that notes each new task's ``loop.time()`` and the line that created it.
Call these from the loop's own thread: the objects change under a reader in another.
"""

__all__ = ["Birth", "Kind", "Row", "Snapshot", "State", "Table", "TaskInfo", "TaskTracker",
           "Wait", "snapshot", "track", "where"]

import asyncio
import dataclasses
import enum
import math
import os
import re
import sys
import weakref
from typing import Any

from ._frames import Kind, Timers, awaiters, classify, frame_text, frames_of, stack_of_running


class State(enum.StrEnum):
    PENDING = "pending"
    CANCELLING = "cancelling"  # pending, with a cancel() delivered or on its way
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"  # ended with an exception (TaskInfo.error has its repr)


@dataclasses.dataclass(slots=True)
class Wait:
    """What a pending task waits for: ``Wait(kind=<Kind.SLEEP>, detail='sleep, 2 s left')``."""

    kind: Kind
    detail: str
    future: Any = dataclasses.field(default=None, repr=False)  # the Future that wakes it
    obj: Any = dataclasses.field(default=None, repr=False)  # the Event, Queue, Lock, TaskGroup


@dataclasses.dataclass(slots=True, eq=False)
class TaskInfo:
    """One task at the moment of the snapshot; ``frames`` as ``where()`` gives them."""

    name: str
    state: State
    frames: list[str]
    wait: Wait | None  # None once the task is finished
    age_s: float | None = None  # known for tasks created inside track()
    created_at: str | None = None  # the line that created it, likewise
    error: str | None = None  # repr() of a FAILED task's exception
    task: asyncio.Task = dataclasses.field(default=None, repr=False)
    awaits: list[asyncio.Task] = dataclasses.field(default_factory=list, repr=False)
    awaited_by: list[asyncio.Task] = dataclasses.field(default_factory=list, repr=False)


@dataclasses.dataclass(slots=True)
class Row:
    name: str
    state: str
    age_s: float | None
    waits_for: str
    suspended_at: str  # the innermost frame
    created_at: str | None


class Table(list):
    """Rows that print as an aligned plain-text table (a notebook shows the first 60)."""

    repr_rows = 60

    def render(self, max_rows: int | None = None) -> str:
        def cell(v) -> str:
            return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

        names = [f.name for f in dataclasses.fields(Row)]
        shown = self if max_rows is None else self[:max_rows]
        lines = [names, *([cell(getattr(r, n)) for n in names] for r in shown)]
        widths = [max(len(line[i]) for line in lines) for i in range(len(names))]
        text = ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
                for line in lines]
        if len(shown) < len(self):
            text.append(f"... {len(self) - len(shown)} more rows (print() shows all)")
        return "\n".join(text)

    __str__ = render

    def __repr__(self) -> str:
        return self.render(self.repr_rows)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


# -- one task -------------------------------------------------------------------------


def _frames(task: asyncio.Task) -> list:
    coro = task.get_coro()
    if task.done() or coro is None:
        return []
    if task is asyncio.current_task(task.get_loop()):
        return stack_of_running(coro)
    return frames_of(coro)


def where(task: asyncio.Task) -> list[str]:
    """The lines a task is suspended at, outermost first, as ``function (file:line)``.

    Empty for a finished task. For the running task: the lines up to the caller.
    """
    return [frame_text(f) for f in _frames(task)]


def _state(task: asyncio.Task) -> tuple[State, str | None]:
    if not task.done():
        return (State.CANCELLING if task.cancelling() else State.PENDING), None
    if task.cancelled():
        return State.CANCELLED, None
    # task.exception() would mark the exception retrieved and silence asyncio's
    # "Task exception was never retrieved": read the attribute it reads instead.
    exc = getattr(task, "_exception", None)
    return (State.FAILED, repr(exc)) if exc is not None else (State.DONE, None)


def _wait(task, frames, now: float, timers: Timers, current) -> Wait:
    fut = getattr(task, "_fut_waiter", None)
    if task is current:
        return Wait(Kind.RUNNING, "running")
    if fut is None or fut.done():
        started = getattr(task.get_coro(), "cr_suspended", True)
        return Wait(Kind.READY, "ready to run" if started else "ready, not started")
    if isinstance(fut, asyncio.Task):
        return Wait(Kind.TASK, f"task {fut.get_name()}", fut, fut)
    children = getattr(fut, "_children", None)
    if children is not None:  # asyncio.tasks._GatheringFuture
        return Wait(Kind.GATHER, f"gather of {len(children)}", fut, fut)
    kind, frame = classify(frames)
    if kind is None:
        return Wait(Kind.FUTURE, "future", fut)
    obj = frame.f_locals.get("self")
    detail = frame.f_code.co_qualname
    if kind is Kind.SLEEP:
        when = timers.when(fut)
        detail = "sleep" if when is None else f"sleep, {_secs(max(when - now, 0))} s left"
    elif kind is Kind.TASKGROUP and obj is not None:
        detail = f"TaskGroup of {len(obj._tasks)}"
    elif kind is Kind.REDIS:  # execute_command(*args): args[0] is the command's name
        args = frame.f_locals.get("args")
        detail = f"redis {args[0] if isinstance(args, tuple) and args else detail}"
    return Wait(kind, detail, fut, obj)


# -- the snapshot ---------------------------------------------------------------------


def _secs(s: float) -> str:
    return f"{s:.3g}" if s < 1000 else f"{s:.0f}"  # 0.0123, 2, 41.5, 3600: never 3.6e+03


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


class Snapshot:
    """Every task of a loop at one moment; prints as a tree, ``table()`` gives rows.

        snap = snapshot()
        snap["worker-1"].wait.kind   # <Kind.QUEUE: 'queue'>
        snap.cycles()                # [['A', 'B']]: A awaits B awaits A, a deadlock
    """

    def __init__(self, infos: list[TaskInfo]) -> None:
        self.tasks = infos
        self._by_task = {info.task: info for info in infos}

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, key: "asyncio.Task | str") -> TaskInfo:
        if isinstance(key, str):
            found = [i for i in self.tasks if i.name == key]
            if len(found) != 1:
                raise KeyError(f"{len(found)} tasks named {key!r}")
            return found[0]
        return self._by_task[key]

    def roots(self) -> list[TaskInfo]:
        """The tasks no task of the snapshot awaits: the tree's top level."""
        return [i for i in self.tasks if not any(a in self._by_task for a in i.awaited_by)]

    def cycles(self) -> list[list[str]]:
        """Tasks awaiting each other in a ring (a deadlock), by name, each ring once."""
        colour: dict[asyncio.Task, int] = {}  # 1: on the current path, 2: finished
        rings: list[list[str]] = []
        for start in self.tasks:
            if start.task in colour:
                continue
            path, stack = [], [(start, iter(start.awaits))]
            colour[start.task] = 1
            path.append(start)
            while stack:
                info, children = stack[-1]
                child = next((c for c in children if c in self._by_task), None)
                if child is None:
                    colour[info.task] = 2
                    stack.pop()
                    path.pop()
                elif colour.get(child) == 1:
                    ring = path[[p.task for p in path].index(child):]
                    rings.append([p.name for p in ring])
                elif child not in colour:
                    colour[child] = 1
                    nxt = self._by_task[child]
                    path.append(nxt)
                    stack.append((nxt, iter(nxt.awaits)))
        return rings

    def _label(self, info: TaskInfo) -> str:
        facts = [info.state.value]
        if info.age_s is not None:
            facts.append(f"age {_secs(info.age_s)} s")
        text = f"(T) {info.name} [{', '.join(facts)}]"
        if info.wait is not None:
            text += f" {info.wait.detail}"
        return text + (f": {info.error}" if info.error else "")

    def tree(self) -> str:
        """Each task, the frames it is suspended in, then the tasks it awaits, indented.

        A task awaited by two others appears once, then as "(shown above)"; a ring
        of tasks awaiting each other ends in a "↺ cycle" line instead of looping.
        """
        lines: list[str] = []
        shown: set = set()
        roots = self.roots()
        leftover = iter(self.tasks)  # cycles have no root: start from any task not shown
        stack = [(info, "", True, ()) for info in reversed(roots)]
        while True:
            if not stack:
                rest = next((i for i in leftover if i.task not in shown), None)
                if rest is None:
                    break
                stack.append((rest, "", True, ()))
            info, prefix, last, path = stack.pop()
            branch = prefix + ("└── " if last else "├── ")
            if info.task in path:
                ring = [self._by_task[t].name for t in path[path.index(info.task):]]
                lines.append(f"{branch}↺ (T) {info.name}: cycle {' → '.join(ring)} → "
                             f"{info.name} (they await each other: a deadlock)")
                continue
            if info.task in shown:
                lines.append(f"{branch}(T) {info.name} (shown above)")
                continue
            shown.add(info.task)
            lines.append(branch + self._label(info))
            prefix += "    " if last else "│   "
            for frame in info.frames:
                lines.append(f"{prefix}└── {frame}")
                prefix += "    "
            children = [self._by_task[t] for t in info.awaits if t in self._by_task]
            path += (info.task,)
            stack.extend((c, prefix, k == 0, path) for k, c in enumerate(reversed(children)))
        return "\n".join(lines)

    def table(self) -> Table:
        """One row per task, in creation order where known, then by name."""
        return Table(
            Row(i.name, i.state.value, i.age_s, i.wait.detail if i.wait else "",
                i.frames[-1] if i.frames else "", i.created_at)
            for i in self.tasks
        )

    def __repr__(self) -> str:
        return self.tree()

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(self.tree())


def snapshot(loop: asyncio.AbstractEventLoop | None = None, *, tasks=None) -> Snapshot:
    """Every task of ``loop`` (default: the running loop) as it is now.

    ``asyncio.all_tasks()`` lists only unfinished tasks; the finished tasks that a
    live ``track()`` saw are added, so done, cancelled and failed show too. Pass
    ``tasks`` to look at those tasks only.
    """
    loop = loop or asyncio.get_running_loop()
    trackers = [tr for tr in list(_TRACKERS) if tr._loop is loop]
    if tasks is None:
        tasks = set(asyncio.all_tasks(loop))
        tasks.update(t for tr in trackers for t in list(tr._births))
    now, timers, current = loop.time(), Timers(loop), asyncio.current_task(loop)
    infos = []
    for task in tasks:
        frames = _frames(task)
        state, error = _state(task)
        birth = next((b for tr in trackers if (b := tr._births.get(task))), None)
        name = task.get_name()
        if _NAME_BECOMES_NONE and name == "None" and birth is not None:
            name = birth.name
        infos.append(TaskInfo(
            name=name, state=state, error=error, task=task,
            frames=[frame_text(f) for f in frames],
            wait=None if task.done() else _wait(task, frames, now, timers, current),
            age_s=None if birth is None else round(now - birth.created_s, 9),
            created_at=None if birth is None else birth.created_at,
        ))
    infos.sort(key=lambda i: (-(i.age_s if i.age_s is not None else -math.inf),
                              _natural(i.name)))
    by_task = {i.task: i for i in infos}
    for info in infos:  # after sorting: each task's children come in the same order
        if not info.task.done():
            for parent in awaiters(info.task):
                info.awaited_by.append(parent)
                if parent in by_task:
                    by_task[parent].awaits.append(info.task)
    return Snapshot(infos)


# -- ages: an opt-in task factory ----------------------------------------------------

# Python 3.13.0-3.13.2 name every task made by a custom factory "None" (gh-130033).
_NAME_BECOMES_NONE = (3, 13) <= sys.version_info[:3] < (3, 13, 3)
_ASYNCIO_DIR = os.path.dirname(asyncio.__file__)
_OWN_DIR = os.path.dirname(os.path.abspath(__file__))
_TRACKERS: "weakref.WeakSet[TaskTracker]" = weakref.WeakSet()


@dataclasses.dataclass(frozen=True, slots=True)
class Birth:
    created_s: float  # loop.time() at creation
    created_at: str | None  # "function (file:line)" of the create_task() call
    name: str


class TaskTracker:
    """Note when and where each new task is created, for ``snapshot()``'s ages.

        with track():                       # the running loop's task factory, meanwhile
            t = asyncio.create_task(work())
        snapshot()[t].created_at            # 'main (demo.py:7)'

    Chains any factory already installed, and puts it back on exit unless another
    was installed after ours (ours then only passes tasks through). Records stay
    readable while the tracker lives; tasks are held weakly.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._previous = self._installed = None
        self._active = False
        self._births: weakref.WeakKeyDictionary[asyncio.Task, Birth] = (
            weakref.WeakKeyDictionary())

    def __enter__(self) -> "TaskTracker":
        if self._active or self._installed is not None:
            raise RuntimeError(f"{self!r} was already entered; use a new tracker")
        loop = self._loop = self._loop or asyncio.get_running_loop()
        self._previous = loop.get_task_factory()
        self._installed, self._active = self._factory, True
        loop.set_task_factory(self._installed)
        _TRACKERS.add(self)
        return self

    def __exit__(self, *exc_info) -> None:
        self._active = False
        if self._loop.get_task_factory() is self._installed:
            self._loop.set_task_factory(self._previous)

    def __repr__(self) -> str:
        state = "active" if self._active else "inactive"
        return f"<TaskTracker {state}: {len(self._births)} tasks>"

    def birth(self, task: asyncio.Task) -> Birth | None:
        return self._births.get(task)

    def _factory(self, loop, coro, **kwargs):
        if self._previous is not None:
            task = self._previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
            # Debug mode's "created at" should end at the user's line, as without a
            # factory: drop our frame, then loop.create_task's.
            source = getattr(task, "_source_traceback", None)
            while source and source[-1].filename == __file__:
                del source[-1]
            if source and source[-1].name == "create_task":
                del source[-1]
        if self._active:
            self._births[task] = Birth(loop.time(), self._creator(), task.get_name())
        return task

    def _creator(self) -> str | None:
        # Outward from here: factories chained to ours (a Timeline's, say), then
        # asyncio's create_task (loop's, then asyncio's or TaskGroup's), then the caller.
        f, past_asyncio = sys._getframe(1), False
        while f is not None:
            in_asyncio = f.f_code.co_filename.startswith(_ASYNCIO_DIR)
            if past_asyncio and not in_asyncio and not f.f_code.co_filename.startswith(_OWN_DIR):
                return frame_text(f)
            past_asyncio |= in_asyncio
            f = f.f_back
        return None


def track(loop: asyncio.AbstractEventLoop | None = None) -> TaskTracker:
    """``with track():`` records each new task's creation time and line (see TaskTracker)."""
    return TaskTracker(loop)
