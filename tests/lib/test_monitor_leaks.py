"""course_lib.monitor.leaks: TaskCensus, memory_diff, VanishedTasks."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import tracemalloc

import pytest

from course_lib.monitor.leaks import (
    CensusSample,
    Growth,
    MemoryDiff,
    TaskCensus,
    VanishedTask,
    VanishedTasks,
    memory_diff,
)
from course_lib.timeline import Timeline

HERE = __file__


def line_after() -> int:
    """The number of the caller's next line."""
    return inspect.currentframe().f_back.f_lineno + 1


def at(line: int) -> str:
    return f"{HERE}:{line}"


async def leaky_handler(hang_up: asyncio.Event) -> None:
    await hang_up.wait()  # the client left long ago; nobody sets this


async def pool_worker(stop: asyncio.Event) -> None:
    await stop.wait()


async def short_job() -> None:
    await asyncio.sleep(0)


async def wait_for_reply() -> None:
    reply = asyncio.get_running_loop().create_future()  # only this frame knows it
    await reply


async def finish(tasks, *events: asyncio.Event) -> None:
    for event in events:
        event.set()
    await asyncio.gather(*tasks)


@pytest.fixture
def asyncio_log(caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    return caplog


# -- TaskCensus ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_census_flags_the_coroutine_whose_count_only_grows_and_not_a_stable_pool():
    stop, hang_up = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(pool_worker(stop)) for _ in range(3)]
    census = TaskCensus()
    for _ in range(4):
        tasks.append(asyncio.create_task(leaky_handler(hang_up)))
        await asyncio.sleep(0)
        census.sample()

    assert census.series("leaky_handler") == (1, 2, 3, 4)
    assert census.series("pool_worker") == (3, 3, 3, 3)
    assert census.growing() == [Growth("leaky_handler", (1, 2, 3, 4))]
    assert str(census.growing()[0]) == "leaky_handler: 1 -> 4 over 4 samples"
    table = str(census)
    assert "only grows" in next(r for r in table.splitlines() if r.startswith("leaky_handler"))
    assert "only grows" not in next(r for r in table.splitlines() if r.startswith("pool_worker"))
    await finish(tasks, stop, hang_up)


@pytest.mark.asyncio
async def test_census_does_not_flag_a_count_that_grows_and_falls():
    census = TaskCensus()
    stop = asyncio.Event()
    tasks: list[asyncio.Task] = []
    for n in (1, 3, 2, 4):
        while len(tasks) < n:
            tasks.append(asyncio.create_task(pool_worker(stop)))
        while len(tasks) > n:
            tasks.pop().cancel()
        await asyncio.sleep(0)
        census.sample()
    assert census.series("pool_worker") == (1, 3, 2, 4)
    assert census.growing() == []
    assert census.growing(window=2, min_samples=2) == [Growth("pool_worker", (2, 4))]
    await finish(tasks, stop)


@pytest.mark.asyncio
async def test_census_needs_min_samples_before_calling_anything_a_leak():
    census = TaskCensus()
    hang_up = asyncio.Event()
    task = asyncio.create_task(leaky_handler(hang_up))
    census.sample()
    await asyncio.sleep(0)
    task2 = asyncio.create_task(leaky_handler(hang_up))
    census.sample()
    assert census.growing() == []  # two samples: too few
    assert census.growing(min_samples=2) == [Growth("leaky_handler", (1, 2))]
    await finish([task, task2], hang_up)


@pytest.mark.asyncio
async def test_census_reports_a_task_that_outlived_n_samples_with_where_it_waits():
    hang_up = asyncio.Event()
    census = TaskCensus()
    stuck = asyncio.create_task(leaky_handler(hang_up), name="stuck-client")
    await asyncio.sleep(0)
    for _ in range(3):
        done_quickly = asyncio.create_task(short_job())
        census.sample()
        await done_quickly

    rows = {row.name: row for row in census.lingering(3)}
    assert "stuck-client" in rows
    row = rows["stuck-client"]
    assert (row.coroutine, row.samples, row.task) == ("leaky_handler", 3, stuck)
    assert row.where == at(inspect.getsourcelines(leaky_handler)[1] + 1)
    assert all(r.coroutine != "short_job" for r in census.lingering(1))  # they ended
    await finish([stuck], hang_up)


@pytest.mark.asyncio
async def test_census_history_is_bounded_to_its_size():
    census = TaskCensus(history=3)
    for _ in range(10):
        census.sample()
    assert [s.index for s in census.samples] == [7, 8, 9]
    assert all(isinstance(s, CensusSample) for s in census.samples)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_census_async_form_samples_every_interval_never_counts_itself_and_leaves_no_task():
    hang_up = asyncio.Event()
    leaked = []
    async with TaskCensus(interval_s=1.0) as census:
        for _ in range(5):
            leaked.append(asyncio.create_task(leaky_handler(hang_up)))
            await asyncio.sleep(1.0)

    assert [s.at_s for s in census.samples] == [float(t) for t in range(6)]
    names = {name for s in census.samples for name in s.counts}
    assert not any("TaskCensus" in name for name in names)
    assert [g.name for g in census.growing()] == ["leaky_handler"]
    assert census.series("leaky_handler")[-1] == 5
    assert asyncio.all_tasks() == {asyncio.current_task()} | set(leaked)
    await finish(leaked, hang_up)


def test_census_refuses_bad_sizes():
    with pytest.raises(ValueError, match="history"):
        TaskCensus(history=1)
    with pytest.raises(ValueError, match="interval_s"):
        TaskCensus(interval_s=0)


# -- memory_diff --------------------------------------------------------------------------


def test_memory_diff_names_the_line_that_allocated_a_megabyte():
    was_tracing = tracemalloc.is_tracing()
    with memory_diff(top=5) as diff:
        line = line_after()
        blob = [bytearray(1024) for _ in range(1024)]

    assert isinstance(diff, MemoryDiff)
    top = diff.rows[0]
    assert top.where == at(line)
    assert top.size_diff_b >= 1024 * 1024
    assert top.count_diff >= 1024
    assert top.line == "blob = [bytearray(1024) for _ in range(1024)]"
    assert diff.total_diff_b >= 1024 * 1024
    assert len(diff.rows) <= 5
    assert "test_monitor_leaks.py" in str(diff).splitlines()[2]
    assert tracemalloc.is_tracing() == was_tracing
    del blob


def test_memory_diff_leaves_tracing_on_when_it_was_already_on():
    tracemalloc.start()
    try:
        with memory_diff() as diff:
            line = line_after()
            blob = [bytearray(1024) for _ in range(1024)]
        assert tracemalloc.is_tracing()
        assert diff.rows[0].where == at(line)
    finally:
        tracemalloc.stop()
    del blob


def test_memory_diff_does_not_list_memory_the_block_freed():
    with memory_diff() as diff:
        blob = [bytearray(1024) for _ in range(1024)]
        del blob
    assert all(row.size_diff_b < 100 * 1024 for row in diff.rows)


# -- VanishedTasks: the weak-reference trap of chapter 1 ------------------------------------


@pytest.mark.asyncio
@pytest.mark.allow_asyncio_errors
async def test_a_task_created_without_a_reference_is_caught_with_the_line_that_created_it(
    asyncio_log,
):
    async with VanishedTasks() as vanished:
        line = line_after()
        asyncio.create_task(wait_for_reply(), name="fire-and-forget")  # noqa: RUF006
        await asyncio.sleep(0)  # it starts, and parks on its future
        # leaving the block collects garbage: the trap fires now, not some day

    (lost,) = vanished.found
    assert isinstance(lost, VanishedTask)
    assert lost.name == "fire-and-forget"
    assert lost.coroutine == "wait_for_reply"
    assert lost.created_at == at(line)
    assert lost.origin[-1].function == inspect.currentframe().f_code.co_name
    assert lost.message == "Task was destroyed but it is pending!"
    assert lost.vanished_s is not None and lost.vanished_s >= lost.created_s
    first = inspect.getsourcelines(wait_for_reply)[1]
    assert lost.where in {at(first), at(first + 2)}  # defined at, or waiting at
    assert "fire-and-forget" in str(vanished) and "wait_for_reply" in str(vanished)
    assert asyncio_log.records == []  # captured, not printed


@pytest.mark.asyncio
async def test_tasks_kept_or_ended_are_not_reported():
    background: set[asyncio.Task] = set()
    with VanishedTasks() as vanished:
        kept = asyncio.create_task(wait_for_reply(), name="kept")
        background.add(kept)
        del kept
        await asyncio.create_task(short_job())
        await asyncio.sleep(0)
        assert vanished.check() == []
    assert vanished.found == []
    for task in background:
        task.cancel()
    await asyncio.wait(background)


@pytest.mark.asyncio
@pytest.mark.allow_asyncio_errors
async def test_check_reports_each_vanished_task_once_when_asked():
    with VanishedTasks() as vanished:
        asyncio.create_task(wait_for_reply(), name="first")  # noqa: RUF006
        await asyncio.sleep(0)
        assert [v.name for v in vanished.check()] == ["first"]
        assert vanished.check() == []
        asyncio.create_task(wait_for_reply(), name="second")  # noqa: RUF006
        await asyncio.sleep(0)
        assert [v.name for v in vanished.check()] == ["second"]
    assert [v.name for v in vanished] == ["first", "second"]


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.allow_asyncio_errors
async def test_interval_checks_find_the_vanished_task_during_the_block():
    async with VanishedTasks(interval_s=1.0) as vanished:
        asyncio.create_task(wait_for_reply(), name="lost")  # noqa: RUF006
        await asyncio.sleep(1.5)
        assert [v.name for v in vanished.found] == ["lost"]
    assert asyncio.all_tasks() == {asyncio.current_task()}  # the checker ended too


@pytest.mark.asyncio
@pytest.mark.allow_asyncio_errors
async def test_vanished_tasks_chains_the_task_factory_and_restores_it_and_the_handler():
    loop = asyncio.get_running_loop()
    handler_before = loop.get_exception_handler()
    async with Timeline() as timeline:
        factory_before = loop.get_task_factory()
        async with VanishedTasks() as vanished:
            line = line_after()
            asyncio.create_task(wait_for_reply(), name="lost")  # noqa: RUF006
            await asyncio.sleep(0)
        assert loop.get_task_factory() is factory_before
        assert loop.get_exception_handler() is handler_before
    assert [r.name for r in timeline.tasks] == ["lost"]  # the timeline still saw it
    assert [(v.name, v.created_at) for v in vanished.found] == [("lost", at(line))]


@pytest.mark.asyncio
async def test_other_loop_errors_go_to_the_previous_handler():
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context["message"]))
    try:
        with VanishedTasks() as vanished:
            loop.call_exception_handler({"message": "not a vanished task"})
        assert seen == ["not a vanished task"]
        assert vanished.found == []
    finally:
        loop.set_exception_handler(None)
    gc.collect()
