"""course_lib.timeline.Timeline: what it records, what it leaves alone, what it draws."""

from __future__ import annotations

import asyncio
import gc
import inspect

import pytest

from course_lib.timeline import Mark, Outcome, Row, Span, Table, TaskRecord, Timeline


async def sleeper(delay_s: float) -> float:
    await asyncio.sleep(delay_s)
    return delay_s


async def fail_after(delay_s: float, exc: Exception | None = None) -> None:
    await asyncio.sleep(delay_s)
    raise ValueError("boom") if exc is None else exc


def times(record: TaskRecord) -> tuple[float, float | None, float | None]:
    return record.created_s, record.started_s, record.ended_s


# -- times, exactly, under virtual time ------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_sequential_sleeps_start_when_the_previous_one_ends():
    async with Timeline() as tl:
        for i in range(3):
            await asyncio.create_task(sleeper(1), name=f"seq-{i}")

    assert [r.name for r in tl.tasks] == ["seq-0", "seq-1", "seq-2"]
    assert [times(r) for r in tl.tasks] == [(0, 0, 1), (1, 1, 2), (2, 2, 3)]
    assert tl.duration_s == 3


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_concurrent_sleeps_all_start_at_once_and_end_after_their_own_delay():
    async with Timeline() as tl:
        await asyncio.gather(*(asyncio.create_task(sleeper(s)) for s in (0.3, 0.1, 0.2)))

    assert [times(r) for r in tl.tasks] == [(0, 0, 0.3), (0, 0, 0.1), (0, 0, 0.2)]
    assert tl.duration_s == 0.3


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_tasks_created_by_library_code_are_recorded_too():
    async with Timeline() as tl:
        await asyncio.gather(sleeper(1), sleeper(2))  # gather makes the tasks

    assert [(r.ended_s, r.outcome) for r in tl.tasks] == [(1, "done"), (2, "done")]


# -- outcomes ---------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_outcomes_are_done_cancelled_and_failed():
    async with Timeline() as tl:
        ok = asyncio.create_task(sleeper(1), name="ok")
        slow = asyncio.create_task(sleeper(10), name="slow")
        bad = asyncio.create_task(fail_after(2), name="bad")
        await ok
        slow.cancel()
        results = await asyncio.gather(slow, bad, return_exceptions=True)

    assert isinstance(results[0], asyncio.CancelledError)
    by_name = {r.name: r for r in tl.tasks}
    assert by_name["ok"].outcome is Outcome.DONE
    assert (by_name["slow"].outcome, by_name["slow"].ended_s) == (Outcome.CANCELLED, 1)
    assert (by_name["bad"].outcome, by_name["bad"].ended_s) == (Outcome.FAILED, 2)
    assert by_name["bad"].error == "ValueError('boom')"
    assert "outcome=<Outcome.FAILED: 'failed'>" in repr(by_name["bad"])


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_task_cancelled_before_its_first_step_never_started():
    async with Timeline() as tl:
        task = asyncio.create_task(sleeper(1))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    (record,) = tl.tasks
    assert (record.outcome, record.started_s, record.ended_s) == (Outcome.CANCELLED, None, 0)


@pytest.mark.asyncio
async def test_a_coroutine_that_returns_after_cancelling_itself_ends_cancelled():
    async def cancels_itself():
        asyncio.current_task().cancel()
        return "ignored"  # the pending cancel wins: the task ends cancelled

    async with Timeline() as tl:
        task = asyncio.create_task(cancels_itself())
        await asyncio.wait([task])

    assert task.cancelled()
    assert tl.tasks[0].outcome is Outcome.CANCELLED


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_failed_tasks_exception_is_left_for_the_user_to_retrieve():
    async with Timeline() as tl:
        task = asyncio.create_task(fail_after(1))
        await asyncio.wait([task])

    assert tl.tasks[0].outcome is Outcome.FAILED
    assert isinstance(task.exception(), ValueError)


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.allow_asyncio_errors
async def test_an_unretrieved_failure_is_still_reported_by_asyncio(caplog):
    async with Timeline() as tl:
        task = asyncio.create_task(fail_after(1))
        await asyncio.sleep(2)

    assert tl.tasks[0].outcome is Outcome.FAILED
    del task
    gc.collect()
    assert "Task exception was never retrieved" in caplog.text


# -- created_by, factories, nesting -------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_created_by_names_the_task_that_was_running_at_creation():
    async def creator():
        await asyncio.create_task(sleeper(1), name="child")

    async with Timeline() as tl:
        await asyncio.create_task(creator(), name="creator")

    creator_record, child_record = tl.tasks
    assert creator_record.created_by == asyncio.current_task().get_name()
    assert creator_record.created_by_record is None  # this test's task is not recorded
    assert (child_record.created_by, child_record.created_by_record) == (
        "creator", creator_record)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_table_says_created_by_not_parent():
    # The course says a task has no parent (a cancel of its creator does not reach
    # it): the table must not say otherwise.
    table = (await _small_story()).table()
    assert Row._fields[:2] == ("name", "created_by")
    assert "parent" not in str(table).splitlines()[0]
    assert not hasattr(TaskRecord("t", 0.0), "parent")


@pytest.mark.asyncio
async def test_the_previous_factory_is_restored_on_exit():
    loop = asyncio.get_running_loop()
    assert loop.get_task_factory() is None
    async with Timeline():
        assert loop.get_task_factory() is not None
    assert loop.get_task_factory() is None


@pytest.mark.asyncio
async def test_the_previous_factory_is_restored_when_the_body_raises():
    loop = asyncio.get_running_loop()
    with pytest.raises(KeyError):
        async with Timeline():
            raise KeyError("body")
    assert loop.get_task_factory() is None


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_custom_factory_is_chained_and_put_back():
    made = []

    def factory(loop, coro, **kwargs):
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    loop = asyncio.get_running_loop()
    loop.set_task_factory(factory)
    try:
        async with Timeline() as tl:
            task = asyncio.create_task(sleeper(1), name="via custom")
            await task
        assert made == [task]
        assert [r.name for r in tl.tasks] == ["via custom"]
        assert loop.get_task_factory() is factory
    finally:
        loop.set_task_factory(None)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_nested_timelines_both_record_and_unwind_in_order():
    loop = asyncio.get_running_loop()
    async with Timeline() as outer:
        await asyncio.create_task(sleeper(1), name="before")
        async with Timeline() as inner:
            await asyncio.create_task(sleeper(1), name="inside")
        assert loop.get_task_factory() is outer._installed

    assert loop.get_task_factory() is None
    assert [r.name for r in outer.tasks] == ["before", "inside"]
    assert [times(r) for r in inner.tasks] == [(0, 0, 1)]  # relative to the inner start
    assert times(outer.tasks[1]) == (1, 1, 2)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_task_still_running_at_exit_stays_pending_when_it_finishes_later():
    async with Timeline() as tl:
        slow = asyncio.create_task(sleeper(10), name="slow")
        await asyncio.sleep(1)
    assert await slow == 10  # finishes after the timeline closed

    (record,) = tl.tasks
    assert (record.outcome, record.started_s, record.ended_s) == (Outcome.PENDING, 0, None)
    assert tl.duration_s == 1


@pytest.mark.asyncio
async def test_entering_the_same_timeline_twice_is_refused():
    tl = Timeline()
    async with tl:
        with pytest.raises(RuntimeError, match="Timeline active"):
            async with tl:
                pass
    with pytest.raises(RuntimeError, match="Timeline closed"):
        async with tl:
            pass


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_taskgroup_children_are_recorded_with_their_outcomes():
    with pytest.raises(ExceptionGroup):
        async with Timeline() as tl, asyncio.TaskGroup() as tg:
            tg.create_task(sleeper(1), name="quick")
            tg.create_task(sleeper(10), name="slow")
            tg.create_task(fail_after(2), name="bad")

    assert [(r.name, r.outcome, r.ended_s) for r in tl.tasks] == [
        ("quick", Outcome.DONE, 1),
        ("slow", Outcome.CANCELLED, 2),  # the TaskGroup cancelled it when "bad" failed
        ("bad", Outcome.FAILED, 2),
    ]


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.skipif(not hasattr(asyncio, "eager_task_factory"), reason="eager tasks: 3.12+")
async def test_eager_tasks_start_when_created_and_keep_their_names():
    async def instant():
        return 1

    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)
    try:
        async with Timeline() as tl:
            done_at_once = asyncio.create_task(instant(), name="instant")
            assert done_at_once.done()
            await asyncio.create_task(sleeper(1), name="sleepy")
    finally:
        loop.set_task_factory(None)

    assert [(r.name, r.outcome, *times(r)) for r in tl.tasks] == [
        ("instant", Outcome.DONE, 0, 0, 0),
        ("sleepy", Outcome.DONE, 0, 0, 1),
    ]


@pytest.mark.asyncio
async def test_unnamed_tasks_keep_their_default_name_from_the_start():
    # On 3.13.0-3.13.2 any task factory made loop.create_task() rename them "None".
    seen = []

    async def who_am_i():
        seen.append(asyncio.current_task().get_name())

    async with Timeline() as tl:
        await asyncio.create_task(who_am_i())

    assert seen[0].startswith("Task-")
    assert tl.tasks[0].name == seen[0]


# -- introspection is not spoiled ---------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_task_repr_coro_and_stack_still_name_the_users_coroutine():
    async with Timeline():
        task = asyncio.create_task(sleeper(5), name="napper")
        await asyncio.sleep(1)
        coro = task.get_coro()
        assert "name='napper' coro=<sleeper() running at" in repr(task)
        assert coro.__qualname__ == "sleeper"
        assert inspect.getcoroutinestate(coro) == inspect.CORO_SUSPENDED
        assert [frame.f_code.co_name for frame in task.get_stack()] == ["sleeper"]
        await task


# -- marks, spans ---------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_marks_and_spans_are_timed_from_the_start():
    async with Timeline() as tl:
        await asyncio.sleep(1)
        tl.mark("cancel sent")
        with tl.span("db") as span:
            await asyncio.sleep(2)

    assert tl.marks == [Mark("cancel sent", 1)]
    assert tl.spans == [span] == [Span("db", 1, 3)]
    with pytest.raises(RuntimeError, match="not active"):
        tl.mark("too late")


# -- table and plot ---------------------------------------------------------------------------


async def _small_story() -> Timeline:
    async with Timeline() as tl:
        ok = asyncio.create_task(sleeper(0.1), name="ok")
        slow = asyncio.create_task(sleeper(1), name="slow")
        bad = asyncio.create_task(fail_after(0.2), name="bad")
        await ok
        tl.mark("cancel")
        slow.cancel()
        await asyncio.gather(slow, bad, return_exceptions=True)
    return tl


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_table_rows_are_tuples_in_ms_and_print_aligned():
    table = (await _small_story()).table()

    assert isinstance(table, Table)
    assert table[0] == Row("ok", asyncio.current_task().get_name(), 0, 0, 100, "done", "")
    assert table[2]._asdict()["error"] == "ValueError('boom')"
    lines = str(table).splitlines()
    assert lines[0].split() == list(Row._fields)
    assert lines[1].split()[0] == "ok" and lines[1].split()[-1] == "done"
    assert lines[2].split()[-1] == "cancelled"
    column = lines[0].index("outcome")
    assert [line[column:].split()[0] for line in lines[1:]] == ["done", "cancelled", "failed"]
    assert repr(table) == str(table)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_plot_is_a_figure_with_a_row_per_task_a_legend_and_a_ms_axis():
    from matplotlib.figure import Figure

    fig = (await _small_story()).plot(title="story")

    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert [label.get_text() for label in ax.get_yticklabels()] == ["ok", "slow", "bad"]
    assert "(ms)" in ax.get_xlabel()
    legend = {text.get_text() for text in fig.legends[0].get_texts()}
    assert {"done", "cancelled", "failed", "mark"} <= legend
    assert fig._repr_png_().startswith(b"\x89PNG")  # renders headless; Jupyter shows this


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_ten_thousand_tasks_are_recorded_and_plotted_in_part():
    # What it costs is measured in benchmarks/timeline_overhead.py, not here.
    async with Timeline() as tl:
        await asyncio.gather(*(asyncio.create_task(sleeper(i % 10)) for i in range(10_000)))
    records = tl.tasks
    fig = tl.plot(max_rows=40)

    assert len(records) == 10_000
    assert all(r.outcome is Outcome.DONE for r in records)
    assert records[9_999].ended_s == 9
    assert len(fig.axes[0].get_yticklabels()) == 40
    assert "first 40 of 10000 tasks" in fig.axes[0].get_title(loc="left")
    assert "... 9940 more rows" in repr(tl.table())


def test_records_show_their_outcome_value_in_repr():
    record = TaskRecord("t", 0.0)
    assert "outcome=<Outcome.PENDING: 'pending'>" in repr(record)
    assert Outcome.DONE == "done"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_plot_can_share_a_time_axis_with_another_timeline():
    async with Timeline() as tl:
        await asyncio.create_task(sleeper(0.2))
    assert tuple(tl.plot(xlim_ms=(0, 600)).axes[0].get_xlim()) == (0, 600)


def _drawn_texts(fig):
    """Every text the figure draws, with where it ends up (tick labels in view only)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (ax,) = fig.axes
    low, high = ax.get_xlim()
    ticks = [tick.label1 for tick in ax.xaxis.get_major_ticks() if low <= tick.get_loc() <= high]
    ticks += ax.get_yticklabels()
    texts = [*ax.texts, *fig.legends[0].get_texts(), ax.title, ax._left_title, ax.xaxis.label,
             *ticks]
    return {text: text.get_window_extent(renderer) for text in texts
            if text.get_visible() and text.get_text().strip()}


async def _story_ending_in_failures() -> Timeline:
    async with Timeline() as tl:
        ok = asyncio.create_task(sleeper(0.1), name="ok")
        slow = asyncio.create_task(sleeper(1), name="slow")
        await ok
        tl.mark("cancel")
        slow.cancel()
        with tl.span("a span that opens near the end of the timeline"):
            await asyncio.gather(slow, return_exceptions=True)
            await asyncio.gather(
                asyncio.create_task(fail_after(0.3), name="bad"),
                asyncio.create_task(fail_after(0.3, KeyboardInterruptIsNotThis("x")),
                                    name="last to fail"),
                return_exceptions=True,
            )
        tl.mark("the very last mark, with a long label")
    return tl


class KeyboardInterruptIsNotThis(Exception):
    """A long exception name: its outcome label is the widest."""


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("xlim_ms", [None, (0, 250)], ids=["auto", "cut short"])
async def test_plot_labels_stay_inside_the_axes_and_the_figure(xlim_ms):
    tl = await _story_ending_in_failures()
    fig = tl.plot(title="labels", xlim_ms=xlim_ms)
    texts = _drawn_texts(fig)
    figure_box, axes_box = fig.bbox, fig.axes[0].get_window_extent()
    outcome_labels = [t for t in fig.axes[0].texts if "Error" in t.get_text()
                      or "NotThis" in t.get_text()]
    assert len(outcome_labels) == 2  # ValueError and KeyboardInterruptIsNotThis
    for text, box in texts.items():
        assert figure_box.x0 <= box.x0 and box.x1 <= figure_box.x1, text.get_text()
        assert figure_box.y0 <= box.y0 and box.y1 <= figure_box.y1, text.get_text()
    for text in fig.axes[0].texts:  # outcome, mark and span labels: within the axes' width
        if text not in texts:  # hidden: a mark out of view (xlim_ms)
            assert xlim_ms is not None and text.get_position()[0] > xlim_ms[1]
            continue
        box = texts[text]
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1 + 0.5, text.get_text()
    if xlim_ms is not None:
        assert tuple(fig.axes[0].get_xlim()) == xlim_ms  # a given scale is kept


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_legend_is_one_row_so_no_label_wraps_under_another():
    fig = (await _story_ending_in_failures()).plot()
    texts = _drawn_texts(fig)
    legend = fig.legends[0].get_texts()
    assert [t.get_text() for t in legend][:2] == ["done", "cancelled"]
    rows = {round(texts[t].y0) for t in legend}
    assert len(rows) == 1, "legend entries on more than one line"
    lefts = [texts[t].x0 for t in legend]
    assert lefts == sorted(lefts)  # one line, left to right
