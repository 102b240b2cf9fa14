"""Read asyncio's objects: the frames a task is stopped in, what it waits on, who awaits it.

A coroutine stopped at an ``await`` points at what it awaits through ``cr_await``:

    task.get_coro()          main()          cr_frame: main's frame, at the await line
      .cr_await              fetch()         another coroutine: follow its cr_await
        .cr_await            <asend>         ``async for`` over an async generator: the
                                             generator hides behind this object; only
                                             gc.get_referents() finds it, then ag_await
          .ag_await          sleep()         a coroutine again
            .cr_await        <FutureIter>    the Future's iterator: no frame, stop

Generator-based awaitables (``@types.coroutine``, a pure-Python ``Future.__await__``)
go on through ``gi_yieldfrom``. The Future itself, the one whose result wakes the
task, is ``task._fut_waiter`` (read by ``tasks.py``). ``awaiters(fut)`` reads the other
direction from the future's done callbacks; ``Timers`` finds the TimerHandle of a sleep.
"""

__all__ = ["Kind", "Timers", "awaiters", "classify", "frame_text", "frames_of", "stack_of_running"]

import asyncio
import enum
import functools
import gc
import os
import sys
import sysconfig
from types import CodeType, FrameType

_MAX_DEPTH = 500  # a generator that awaits itself would otherwise loop forever
_AG_WRAPPERS = ("async_generator_asend", "async_generator_athrow")
_OWN_DIR = os.path.dirname(os.path.abspath(__file__))


class Kind(enum.StrEnum):
    """What a pending task is waiting for (the ``kind`` of ``Wait``)."""

    RUNNING = "running"  # the task that asked for the snapshot
    READY = "ready"  # scheduled: its next step runs on the next loop pass (or never started)
    TASK = "task"  # awaits another task
    GATHER = "gather"  # awaits asyncio.gather(...): the children are tasks (or futures)
    TASKGROUP = "taskgroup"  # in ``async with TaskGroup()``'s exit, waiting for its tasks
    SLEEP = "sleep"  # a Future that a TimerHandle will resolve
    EVENT = "event"
    QUEUE = "queue"  # Queue.get / put / join
    LOCK = "lock"
    SEMAPHORE = "semaphore"
    CONDITION = "condition"
    BARRIER = "barrier"
    WAIT = "wait"  # asyncio.wait / wait_for
    STREAM = "stream"  # StreamReader: bytes from a socket or pipe
    REDIS = "redis"  # a redis-py command awaiting its reply
    FUTURE = "future"  # any other Future


@functools.cache
def _known() -> dict[CodeType, Kind]:
    """asyncio's own waiting coroutines, by code object: file paths could lie, code cannot."""
    q, lk = asyncio.Queue, asyncio.locks
    table = {
        asyncio.sleep: Kind.SLEEP,
        lk.Event.wait: Kind.EVENT,
        q.get: Kind.QUEUE, q.put: Kind.QUEUE, q.join: Kind.QUEUE,
        lk.Lock.acquire: Kind.LOCK,
        lk.Semaphore.acquire: Kind.SEMAPHORE,
        lk.Condition.wait: Kind.CONDITION, lk.Condition.wait_for: Kind.CONDITION,
        lk.Barrier.wait: Kind.BARRIER,
        asyncio.TaskGroup.__aexit__: Kind.TASKGROUP,
        getattr(asyncio.TaskGroup, "_aexit", None): Kind.TASKGROUP,  # 3.14 splits __aexit__
        asyncio.wait: Kind.WAIT, asyncio.wait_for: Kind.WAIT,
        asyncio.StreamReader._wait_for_data: Kind.STREAM,
    }
    return {fn.__code__: kind for fn, kind in table.items() if fn is not None}


def frames_of(awaitable) -> list[FrameType]:
    """The frames of a suspended coroutine's await chain, outermost first."""
    frames: list[FrameType] = []
    obj = awaitable
    while obj is not None and len(frames) < _MAX_DEPTH:
        if hasattr(obj, "cr_frame"):  # a coroutine (or a proxy such as timeline's)
            frame, obj = obj.cr_frame, obj.cr_await
        elif hasattr(obj, "ag_frame"):  # an async generator
            frame, obj = obj.ag_frame, obj.ag_await
        elif hasattr(obj, "gi_frame"):  # a generator-based awaitable
            frame, obj = obj.gi_frame, obj.gi_yieldfrom
        elif type(obj).__name__ in _AG_WRAPPERS:
            # `async for` awaits ag.__anext__(), an object with no public link to its
            # generator; the garbage collector's view of its references has it.
            obj = next((r for r in gc.get_referents(obj) if hasattr(r, "ag_frame")), None)
            continue
        else:  # a Future's iterator (C), or anything else without a frame
            break
        if frame is None:  # finished
            break
        frames.append(frame)
    return frames


def stack_of_running(coro) -> list[FrameType]:
    """The running task's frames, outermost (its coroutine) first, ending at our caller.

    A running coroutine has no cr_await to follow: walk the thread's stack up
    to the task's own frame instead, as 3.14's capture_call_graph() does.
    """
    top = getattr(coro, "cr_frame", None)
    frames, f = [], sys._getframe(1)
    while f is not None:
        if not f.f_code.co_filename.startswith(_OWN_DIR):
            frames.append(f)
        if f is top:
            break
        f = f.f_back
    else:  # not called from inside the task (another thread?): only its own frame is sure
        frames = [top] if top is not None else []
    frames.reverse()
    return frames


def _roots() -> list[str]:
    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return sorted((os.path.abspath(r) + os.sep for r in roots if r), key=len, reverse=True)


@functools.lru_cache(maxsize=4096)
def _short(filename: str) -> str:
    """asyncio/tasks.py in the stdlib, redis/... in any site-packages, tests/lib/x.py
    under the working directory (checked last: a venv often lives inside it)."""
    for root in _ROOTS:
        if filename.startswith(root):
            return filename[len(root):]
    for marker in ("/site-packages/", "/dist-packages/"):  # another environment's packages
        if marker in filename:
            return filename.split(marker, 1)[1]
    cwd = os.getcwd() + os.sep
    if filename.startswith(cwd):
        return filename[len(cwd):]
    return filename


_ROOTS = _roots()


def frame_text(frame: FrameType) -> str:
    """``function (file:line)``: the function's qualified name and the line it stopped at."""
    code = frame.f_code
    return f"{code.co_qualname} ({_short(code.co_filename)}:{frame.f_lineno})"


def classify(frames: list[FrameType]) -> tuple[Kind | None, FrameType | None]:
    """The outermost frame that says what the chain waits for: asyncio's or redis-py's.

    Outermost wins: Queue.join waits inside Event.wait, and it is the join the
    reader wrote; a Redis command ends in a StreamReader, and it is Redis that answers.
    """
    known = _known()
    for frame in frames:
        kind = known.get(frame.f_code)
        if kind is not None:
            return kind, frame
        if frame.f_globals.get("__name__", "").startswith("redis."):
            return Kind.REDIS, frame
    return None, None


_WAKEUPS = ("task_wakeup", "__wakeup")  # the C Task's and the pure-Python Task's


def awaiters(fut, _seen: set | None = None) -> list[asyncio.Task]:
    """The tasks that wake up when ``fut`` is done, read from its done callbacks."""
    seen = _seen if _seen is not None else set()
    seen.add(id(fut))
    found: list[asyncio.Task] = []
    for cb, _ctx in list(getattr(fut, "_callbacks", None) or ()):
        owner = getattr(cb, "__self__", None)
        if isinstance(owner, asyncio.Task) and getattr(cb, "__name__", "") in _WAKEUPS:
            found.append(owner)
        elif isinstance(owner, asyncio.TaskGroup) and cb.__name__ == "_on_task_done":
            if owner._parent_task is not None:
                found.append(owner._parent_task)
        else:  # gather's, shield's, wait()'s closures; wait_for's partial (3.11)
            for outer in _held_futures(cb):
                if id(outer) not in seen:
                    found.extend(awaiters(outer, seen))
    for parent in getattr(fut, "_asyncio_awaited_by", None) or ():  # 3.14+
        if isinstance(parent, asyncio.Task):
            found.append(parent)
        elif id(parent) not in seen:
            found.extend(awaiters(parent, seen))
    return list(dict.fromkeys(found))


def _held_futures(cb) -> list:
    if isinstance(cb, functools.partial):
        cb, held = cb.func, list(cb.args)
    else:
        held = []
        for cell in getattr(cb, "__closure__", None) or ():
            try:
                held.append(cell.cell_contents)
            except ValueError:  # an empty cell
                pass
    if getattr(cb, "__module__", None) != "asyncio.tasks":
        return []  # only asyncio's own helpers: a user's closure is not an await
    return [h for h in held if isinstance(h, asyncio.Future)]


class Timers:
    """Which TimerHandle resolves which sleep's Future: one pass over the loop's heap."""

    def __init__(self, loop) -> None:
        self._loop, self._by_future = loop, None

    def when(self, fut) -> float | None:
        if self._by_future is None:
            wake = asyncio.futures._set_result_unless_cancelled
            self._by_future = {
                id(h._args[0]): h.when()
                for h in getattr(self._loop, "_scheduled", ())  # uvloop keeps none
                if h._callback is wake and h._args and not h.cancelled()
            }
        return self._by_future.get(id(fut))
