"""course_lib.monitor.tasks: what each task waits for, where, who awaits whom, and ages."""

from __future__ import annotations

import asyncio
import inspect
import sys
import types

import pytest

from course_lib.monitor.tasks import (
    Kind,
    Row,
    Snapshot,
    State,
    TaskTracker,
    snapshot,
    track,
    where,
)
from course_lib.timeline import Timeline

HERE = "tests/lib/test_monitor_tasks.py"


def line_of(func, text: str) -> int:
    """The line number of the first line of ``func`` that contains ``text``."""
    lines, first = inspect.getsourcelines(func)
    return first + next(i for i, line in enumerate(lines[1:], 1) if text in line)  # not the def


def names(frames: list[str]) -> list[str]:
    return [f.split(" (")[0] for f in frames]


async def settle() -> None:
    """Let every new task run up to its first real wait."""
    for _ in range(3):
        await asyncio.sleep(0)


async def finish(*tasks: asyncio.Task) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def nap(delay_s: float) -> None:
    await asyncio.sleep(delay_s)


async def wait_on(awaitable) -> None:
    await awaitable


# -- what a task waits for, one kind at a time -----------------------------------------


@pytest.mark.asyncio
async def test_a_task_awaiting_a_task_names_it_and_the_tree_puts_it_underneath():
    inner = asyncio.create_task(nap(10), name="inner")
    outer = asyncio.create_task(wait_on(inner), name="outer")
    await settle()

    snap = snapshot()
    info = snap["outer"]
    assert (info.wait.kind, info.wait.detail, info.wait.obj) == (Kind.TASK, "task inner", inner)
    assert info.awaits == [inner] and snap["inner"].awaited_by == [outer]
    assert [i.name for i in snap.roots()].count("inner") == 0
    nap_line, wait_line = line_of(nap, "await"), line_of(wait_on, "await")
    tree = snap.tree().splitlines()
    i = tree.index("└── (T) outer [pending] task inner")
    assert tree[i + 1 : i + 4] == [
        f"    └── wait_on ({HERE}:{wait_line})",
        f"        └── (T) inner [pending] {snap['inner'].wait.detail}",
        f"            └── nap ({HERE}:{nap_line})",
    ]
    assert tree[i + 4].startswith("                └── sleep (asyncio/tasks.py:")
    await finish(outer, inner)


@pytest.mark.asyncio
async def test_gather_lists_its_children_in_the_tree():
    a = asyncio.create_task(nap(10), name="a")
    b = asyncio.create_task(nap(10), name="b")
    parent = asyncio.create_task(wait_on(asyncio.gather(a, b)), name="parent")
    await settle()

    snap = snapshot()
    info = snap["parent"]
    assert (info.wait.kind, info.wait.detail) == (Kind.GATHER, "gather of 2")
    assert info.awaits == [a, b]
    assert snap["a"].awaited_by == [parent] == snap["b"].awaited_by
    assert "├── (T) a [pending]" in snap.tree() and "└── (T) b [pending]" in snap.tree()
    await finish(parent, a, b)


@pytest.mark.asyncio
async def test_a_taskgroup_owner_awaits_its_children_in_the_body_and_in_the_exit():
    release = asyncio.Event()
    seen = {}

    async def owner():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(nap(10), name="child-1")
            tg.create_task(nap(10), name="child-2")
            seen["tg"] = tg
            await release.wait()  # in the body: the children are awaited all the same

    task = asyncio.create_task(owner(), name="owner")
    await settle()
    in_body = snapshot()
    assert in_body["owner"].wait.kind is Kind.EVENT
    assert [in_body[t].name for t in in_body["owner"].awaits] == ["child-1", "child-2"]

    release.set()
    await settle()
    in_exit = snapshot()
    info = in_exit["owner"]
    assert (info.wait.kind, info.wait.detail, info.wait.obj) == (
        Kind.TASKGROUP, "TaskGroup of 2", seen["tg"])
    assert names(info.frames) == ["test_a_taskgroup_owner_awaits_its_children_in_the_body_"
                                  "and_in_the_exit.<locals>.owner", "TaskGroup.__aexit__"]
    assert [in_exit[t].name for t in info.awaits] == ["child-1", "child-2"]
    await finish(task)


@pytest.mark.asyncio
async def test_event_queue_and_lock_waits_are_named_with_the_object_awaited():
    event, queue, lock = asyncio.Event(), asyncio.Queue(), asyncio.Lock()
    await lock.acquire()
    queue.put_nowait("unfinished")  # join() waits until task_done()
    tasks = [
        asyncio.create_task(event.wait(), name="event"),
        asyncio.create_task(wait_on(asyncio.Queue().get()), name="get"),
        asyncio.create_task(queue.join(), name="join"),
        asyncio.create_task(lock.acquire(), name="lock"),
    ]
    await settle()

    snap = snapshot()
    got = {n: (snap[n].wait.kind, snap[n].wait.detail) for n in ("event", "get", "join", "lock")}
    assert got == {
        "event": (Kind.EVENT, "Event.wait"),
        "get": (Kind.QUEUE, "Queue.get"),
        "join": (Kind.QUEUE, "Queue.join"),  # outermost wins: join waits inside Event.wait
        "lock": (Kind.LOCK, "Lock.acquire"),
    }
    assert snap["event"].wait.obj is event and snap["lock"].wait.obj is lock
    assert snap["join"].wait.obj is queue
    assert names(snap["get"].frames) == ["wait_on", "Queue.get"]
    lock.release()
    await finish(*tasks)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_sleep_says_how_long_is_left_from_the_loops_timer():
    task = asyncio.create_task(nap(5), name="sleeper")
    await asyncio.sleep(3)

    info = snapshot()["sleeper"]
    assert (info.wait.kind, info.wait.detail) == (Kind.SLEEP, "sleep, 2 s left")
    assert names(info.frames) == ["nap", "sleep"]
    await task


@pytest.mark.asyncio
async def test_a_plain_future_is_a_future_and_a_fresh_task_is_ready_not_started():
    fut = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(wait_on(fut), name="on-future")
    await settle()
    fresh = asyncio.create_task(nap(1), name="fresh")

    snap = snapshot()
    assert (snap["on-future"].wait.kind, snap["on-future"].wait.future) == (Kind.FUTURE, fut)
    assert (snap["fresh"].wait.kind, snap["fresh"].wait.detail) == (
        Kind.READY, "ready, not started")
    assert snap[asyncio.current_task()].wait.kind is Kind.RUNNING
    fut.set_result(None)
    await waiting
    await finish(fresh)


@pytest.mark.asyncio
async def test_redis_read_is_named_after_the_command(monkeypatch):
    from course_lib.redis import connect

    monkeypatch.delenv("REDIS_URL", raising=False)  # the in-process fake: no server needed
    r = await connect()
    task = asyncio.create_task(r.blpop(["monitor-tasks-nothing"], timeout=0), name="blpop")
    try:
        await settle()
        info = snapshot()["blpop"]
        assert (info.wait.kind, info.wait.detail) == (Kind.REDIS, "redis BLPOP")
        assert info.frames[0].startswith("Redis.execute_command (redis/asyncio/client.py:")
    finally:
        await finish(task)
        await r.aclose()


# -- where: the frames, outermost first ---------------------------------------------------


async def ticks():
    while True:
        await asyncio.sleep(10)
        yield 1


async def consume_ticks():
    async for _ in ticks():
        pass


@types.coroutine
def legacy_wait(fut):
    """A generator-based awaitable, the pre-3.5 way: `yield from` a Future."""
    return (yield from fut)


async def await_legacy(fut):
    await legacy_wait(fut)


@pytest.mark.asyncio
async def test_where_goes_through_async_generators():
    task = asyncio.create_task(consume_ticks())
    await settle()

    frames = where(task)
    assert frames[:2] == [
        f"consume_ticks ({HERE}:{line_of(consume_ticks, 'async for')})",
        f"ticks ({HERE}:{line_of(ticks, 'await')})",
    ]
    assert names(frames) == ["consume_ticks", "ticks", "sleep"]
    assert frames[2].startswith("sleep (asyncio/tasks.py:")
    assert snapshot()[task].wait.kind is Kind.SLEEP
    await finish(task)


@pytest.mark.asyncio
async def test_where_goes_through_generator_based_awaitables():
    fut = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(await_legacy(fut))
    await settle()

    assert where(task) == [
        f"await_legacy ({HERE}:{line_of(await_legacy, 'await')})",
        f"legacy_wait ({HERE}:{line_of(legacy_wait, 'return (yield')})",
    ]
    fut.set_result(None)
    await task


@pytest.mark.asyncio
async def test_where_of_the_running_task_ends_at_the_caller_and_a_finished_task_has_none():
    frames = where(asyncio.current_task())
    line = inspect.currentframe().f_lineno - 1
    assert frames[-1] == (
        f"test_where_of_the_running_task_ends_at_the_caller_and_a_finished_task_has_none"
        f" ({HERE}:{line})")
    done = asyncio.create_task(nap(0))
    await done
    assert where(done) == []


# -- a deadlock, states ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_two_tasks_awaiting_each_other_show_as_a_cycle():
    box: dict[str, asyncio.Task] = {}

    async def first():
        await box["second"]

    async def second():
        # shield: B awaits A all the same (the tree follows shield), but a cancel of B
        # stops at the shield. Two bare awaits cannot even be cancelled: A.cancel()
        # cancels B, which cancels A... until RecursionError (CPython 3.11-3.13).
        await asyncio.shield(box["first"])

    box["first"] = a = asyncio.create_task(first(), name="A")
    box["second"] = b = asyncio.create_task(second(), name="B")
    await settle()

    snap = snapshot()
    assert snap.cycles() == [["A", "B"]]
    assert snap["A"].awaits == [b] and snap["B"].awaits == [a]
    assert "A" not in [i.name for i in snap.roots()]
    assert "↺ (T) A: cycle A → B → A (they await each other: a deadlock)" in snap.tree()
    b.cancel()
    await asyncio.gather(a, b, return_exceptions=True)
    assert (a.cancelled(), b.cancelled()) == (True, True)


@pytest.mark.asyncio
async def test_states_done_cancelled_failed_and_cancelling():
    async def fail():
        raise ValueError("boom")

    done = asyncio.create_task(nap(0), name="done")
    cancelled = asyncio.create_task(nap(10), name="cancelled")
    failed = asyncio.create_task(fail(), name="failed")
    cancelling = asyncio.create_task(nap(10), name="cancelling")
    await settle()
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    cancelling.cancel()  # delivered at its next step: until then it is "cancelling"

    snap = snapshot(tasks=[done, cancelled, failed, cancelling])
    assert {i.name: i.state for i in snap} == {
        "done": State.DONE, "cancelled": State.CANCELLED, "failed": State.FAILED,
        "cancelling": State.CANCELLING,
    }
    assert snap["failed"].error == "ValueError('boom')" and snap["failed"].wait is None
    assert failed._log_traceback  # not marked retrieved: "never retrieved" still reports it
    assert isinstance(failed.exception(), ValueError)
    await asyncio.gather(cancelling, return_exceptions=True)


# -- ages: track() -------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_track_records_age_and_creation_line_and_restores_the_factory():
    calls = []

    def previous(loop, coro, **kwargs):
        calls.append(kwargs.get("name"))
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop = asyncio.get_running_loop()
    loop.set_task_factory(previous)
    try:
        with track() as tracker:
            assert loop.get_task_factory() is not previous
            task = asyncio.create_task(nap(10), name="tracked")
            line = inspect.currentframe().f_lineno - 1
            await asyncio.sleep(2)
        assert loop.get_task_factory() is previous
        assert len(calls) == 1  # our factory called the one it found
        info = snapshot()["tracked"]
        assert info.age_s == 2
        assert info.created_at == (
            f"test_track_records_age_and_creation_line_and_restores_the_factory ({HERE}:{line})")
        assert tracker.birth(task).created_s == info.task.get_loop().time() - 2
        assert "age 2 s" in snapshot().tree()
    finally:
        loop.set_task_factory(None)
    await finish(task)


@pytest.mark.asyncio
async def test_track_leaves_a_factory_installed_after_it_and_stops_recording():
    loop = asyncio.get_running_loop()
    tracker = TaskTracker()
    with tracker:
        def later(loop, coro, **kwargs):
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(later)
    assert loop.get_task_factory() is later  # theirs stays
    try:
        with pytest.raises(RuntimeError, match="already entered"):
            tracker.__enter__()
        assert tracker.birth(asyncio.create_task(nap(0))) is None
    finally:
        loop.set_task_factory(None)
    await settle()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks are new in Python 3.12")
@pytest.mark.asyncio
async def test_track_chains_the_eager_task_factory():
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)
    try:
        with track():
            task = asyncio.create_task(nap(10), name="eager")
            assert names(where(task)) == ["nap", "sleep"]  # ran up to its sleep already
        assert loop.get_task_factory() is asyncio.eager_task_factory
        assert snapshot()["eager"].created_at.startswith("test_track_chains_the_eager_task")
    finally:
        loop.set_task_factory(None)
    await finish(task)


@pytest.mark.asyncio
async def test_track_shows_finished_tasks_and_works_inside_a_timeline():
    async with Timeline():
        with track():
            task = asyncio.create_task(nap(0), name="short")
            line = inspect.currentframe().f_lineno - 1
            await task
            pending = asyncio.create_task(nap(10), name="long")
            await settle()
            snap = snapshot()
    assert snap["short"].state is State.DONE  # finished, yet listed: the tracker saw it
    assert snap["short"].created_at.endswith(f"({HERE}:{line})")  # not timeline.py's line
    assert names(snap["long"].frames) == ["nap", "sleep"]  # through Timeline's proxy
    await finish(pending)


# -- many tasks, the table -------------------------------------------------------------


@pytest.mark.asyncio
async def test_ten_thousand_tasks_snapshot_tree_and_table():
    tasks = [asyncio.create_task(nap(60), name=f"s{i}") for i in range(10_000)]
    try:
        await settle()
        snap = snapshot()
        assert isinstance(snap, Snapshot) and len(snap) == 10_001
        assert sum(i.wait.kind is Kind.SLEEP for i in snap) == 10_000
        ours = [i.name for i in snap if i.task is not asyncio.current_task()]
        assert ours[:3] == ["s0", "s1", "s2"]  # by name, numbers as numbers
        assert snap.tree().count("(T) s") == 10_000
        table = snap.table()
        assert len(table) == 10_001 and isinstance(table[0], Row)
        assert str(table).count("\n") == 10_001
        assert repr(table).endswith("... 9941 more rows (print() shows all)")
    finally:
        await finish(*tasks)


@pytest.mark.asyncio
async def test_table_rows_say_state_wait_and_innermost_frame():
    task = asyncio.create_task(wait_on(asyncio.Event().wait()), name="w")
    await settle()
    row = next(r for r in snapshot().table() if r.name == "w")
    assert (row.state, row.waits_for, row.age_s, row.created_at) == (
        "pending", "Event.wait", None, None)
    assert row.suspended_at.startswith("Event.wait (asyncio/locks.py:")
    header = str(snapshot().table()).splitlines()[0].split()
    assert header == ["name", "state", "age_s", "waits_for", "suspended_at", "created_at"]
    await finish(task)


# -- Python 3.14's own call graph ----------------------------------------------------


@pytest.mark.skipif(
    sys.version_info < (3, 14),
    reason="asyncio.capture_call_graph() is new in Python 3.14; this machine has 3.11.7 "
    "(the venv), 3.12.1 and 3.13.0 only",
)
@pytest.mark.asyncio
async def test_agrees_with_capture_call_graph_on_3_14():
    a = asyncio.create_task(nap(10), name="a")
    b = asyncio.create_task(nap(10), name="b")
    outer = asyncio.create_task(wait_on(asyncio.gather(a, b)), name="outer")

    async def grouped():
        async with asyncio.TaskGroup() as tg:
            tg.create_task(nap(10), name="g1")

    group = asyncio.create_task(grouped(), name="group")
    direct = asyncio.create_task(wait_on(a), name="direct")
    await settle()
    snap = snapshot()

    def awaiting_tasks(graph) -> set:  # 3.14 links a gather's children to its future
        found = set()
        for g in graph.awaited_by:
            found |= {g.future} if isinstance(g.future, asyncio.Task) else awaiting_tasks(g)
        return found

    for info in snap:
        if info.task is asyncio.current_task() or info.task.done():
            continue
        try:
            graph = asyncio.capture_call_graph(info.task)  # 3.14.0: positional-only
        except TypeError:
            graph = asyncio.capture_call_graph(future=info.task)  # the early 3.14 drafts
        theirs = [f"{e.frame.f_code.co_qualname}" for e in reversed(graph.call_stack)]
        assert names(info.frames) == theirs, info.name
        assert set(info.awaited_by) == awaiting_tasks(graph), info.name
    await finish(outer, group, direct, a, b)
