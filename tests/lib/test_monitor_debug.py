"""course_lib.monitor.debug: debug mode for one block, its four kinds of report collected.

Every mistake here is made on purpose, inside a debug_block that must catch it; the
tests also prove that nothing reached asyncio's logger (caplog stays empty) and that
every setting the block changed reads as before once it has ended.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import sys
import time
import warnings

import pytest

from course_lib.monitor.debug import CallSite, DebugFinding, DebugKind, DebugReport, debug_block

HERE = __file__


def line_after() -> int:
    """The number of the caller's next line: where the mistake is made."""
    return inspect.currentframe().f_back.f_lineno + 1


def at(line: int) -> str:
    return f"{HERE}:{line}"


async def fetch() -> int:
    return 1


async def fail(message: str) -> None:
    raise KeyError(message)


async def wait_for_reply() -> None:
    reply = asyncio.get_running_loop().create_future()  # only this frame knows it
    await reply


def settings(loop: asyncio.AbstractEventLoop) -> dict:
    asyncio_logger = logging.getLogger("asyncio")
    return {
        "debug": loop.get_debug(),
        "slow": loop.slow_callback_duration,
        "depth": sys.get_coroutine_origin_tracking_depth(),
        "handler": loop.get_exception_handler(),
        "unraisablehook": sys.unraisablehook,
        "filters": list(warnings.filters),
        "showwarning": warnings.showwarning,
        "logger filters": list(asyncio_logger.filters),
        "logger level": asyncio_logger.level,
    }


@pytest.fixture
def asyncio_log(caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    return caplog


# -- each kind, made on purpose ---------------------------------------------------------


@pytest.mark.asyncio
async def test_a_never_awaited_coroutine_is_reported_with_the_line_that_created_it(asyncio_log):
    with debug_block() as found:
        line = line_after()
        fetch()  # the mistake: no await

    assert found.counts == {DebugKind.NEVER_AWAITED: 1}
    (finding,) = found.findings
    assert finding.kind == "never awaited"
    assert finding.name == "fetch"
    assert finding.message == "coroutine 'fetch' was never awaited"
    assert finding.where == at(line)
    assert finding.created_at == at(line)
    assert finding.origin[-1] == CallSite(HERE, line, inspect.currentframe().f_code.co_name)
    assert asyncio_log.records == []


@pytest.mark.asyncio
async def test_the_origin_of_a_never_awaited_coroutine_is_the_chain_of_calls_that_made_it():
    def make():
        return fetch()  # the coroutine is made here...

    with debug_block(origin_depth=5) as found:
        line = line_after()
        make()  # ...called from here, and dropped

    (finding,) = found.findings
    made_at = inspect.getsourcelines(make)[1] + 1
    assert [f.where for f in finding.origin[-2:]] == [at(line), at(made_at)]
    assert [f.function for f in finding.origin[-2:]][-1] == "make"
    assert finding.where == at(made_at)


@pytest.mark.asyncio
@pytest.mark.allow_asyncio_errors
async def test_a_lost_exception_is_reported_with_the_raising_line_and_the_creating_line(
    asyncio_log,
):
    with debug_block() as found:
        line = line_after()
        asyncio.create_task(fail("lost"), name="lost-exception")  # noqa: RUF006 (the mistake)
        await asyncio.sleep(0)  # it runs, fails, and nobody reads the exception

    (finding,) = found.findings
    assert finding.kind == DebugKind.NEVER_RETRIEVED
    assert finding.name == "lost-exception"
    assert finding.message == "Task exception was never retrieved"
    assert finding.detail == "KeyError('lost')"
    raise_line = inspect.getsourcelines(fail)[1] + 1
    assert finding.where == at(raise_line)
    assert finding.created_at == at(line)
    assert asyncio_log.records == []


@pytest.mark.asyncio
@pytest.mark.allow_asyncio_errors
async def test_a_future_exception_never_retrieved_is_reported_too(asyncio_log):
    with debug_block() as found:
        line = line_after()
        future = asyncio.get_running_loop().create_future()
        future.set_exception(OSError("nobody asked"))
        del future

    (finding,) = found.findings
    assert (finding.kind, finding.name) == (DebugKind.NEVER_RETRIEVED, "Future")
    assert finding.message == "Future exception was never retrieved"
    assert finding.created_at == at(line)
    assert asyncio_log.records == []


@pytest.mark.asyncio
@pytest.mark.allow_asyncio_errors
async def test_a_task_destroyed_while_pending_is_reported_with_the_line_that_created_it(
    asyncio_log,
):
    with debug_block() as found:
        line = line_after()
        asyncio.create_task(wait_for_reply(), name="fire-and-forget")  # noqa: RUF006
        await asyncio.sleep(0)  # it starts and parks on a future only it knows
        # debug_block's own gc.collect() at the end destroys it

    (finding,) = found.findings
    assert finding.kind == DebugKind.DESTROYED_PENDING
    assert finding.name == "fire-and-forget"
    assert finding.message == "Task was destroyed but it is pending!"
    assert finding.created_at == at(line)
    assert finding.detail == "wait_for_reply"
    # Where it waited, or (gc closed the coroutine first) where it is defined.
    first = inspect.getsourcelines(wait_for_reply)[1]
    assert finding.where in {at(first), at(first + 2)}
    assert asyncio_log.records == []


@pytest.mark.asyncio
async def test_a_blocking_task_step_is_a_slow_callback_with_its_task_and_lines(asyncio_log):
    async def blocker():
        time.sleep(0.02)  # noqa: ASYNC251 (the mistake: blocks the loop at least 0.02 s)
        await asyncio.sleep(0)

    with debug_block(slow_callback_s=0.01) as found:
        line = line_after()
        await asyncio.create_task(blocker(), name="blocker")

    (finding,) = found.of("slow callback")
    assert finding.name == "blocker"
    assert finding.duration_s >= 0.01
    assert finding.detail == f"took {finding.duration_s:.3f} s"
    assert finding.message.startswith("Executing <Task")
    assert finding.created_at == at(line)
    # The line where the task stopped after its slow step: the await after the block.
    assert finding.where == at(inspect.getsourcelines(blocker)[1] + 2)
    assert asyncio_log.records == []  # collected, not logged


@pytest.mark.asyncio
async def test_a_blocking_plain_callback_is_a_slow_callback_too(asyncio_log):
    loop = asyncio.get_running_loop()
    with debug_block(slow_callback_s=0.01) as found:
        line = line_after()
        loop.call_soon(time.sleep, 0.02)
        await asyncio.sleep(0.001)

    (finding,) = found.of(DebugKind.SLOW_CALLBACK)
    assert finding.name == "sleep"
    assert finding.created_at == at(line)
    assert asyncio_log.records == []


@pytest.mark.asyncio
async def test_a_quick_block_has_no_findings():
    async with debug_block(slow_callback_s=10) as found:
        assert await fetch() == 1
        await asyncio.gather(fetch(), asyncio.sleep(0))

    assert found.findings == []
    assert not found.counts
    assert str(found) == "debug mode: no findings"


# -- one table ----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.allow_asyncio_errors
async def test_all_four_kinds_in_one_block_make_one_table_and_counts():
    with debug_block(slow_callback_s=0.01) as found:
        fetch()
        asyncio.create_task(fail("lost"), name="lost-exception")  # noqa: RUF006
        asyncio.create_task(wait_for_reply(), name="fire-and-forget")  # noqa: RUF006
        asyncio.get_running_loop().call_soon(time.sleep, 0.02)
        await asyncio.sleep(0.001)

    assert isinstance(found, DebugReport)
    assert found.counts == {
        "never awaited": 1, "never retrieved": 1, "destroyed pending": 1, "slow callback": 1
    }
    assert all(isinstance(f, DebugFinding) for f in found)
    lines = str(found).splitlines()
    assert lines[0].split() == ["kind", "task", "/", "coroutine", "where", "created", "at",
                                "detail"]
    assert len(lines) == 2 + 4  # header, rule, one row per finding
    for finding in found:
        row = next(r for r in lines[2:] if r.startswith(finding.kind.value))
        assert finding.name in row
    assert "fire-and-forget" in found.table() and "KeyError('lost')" in found.table()
    assert repr(found).startswith("<DebugReport 4 findings (")


# -- what it changes, it puts back ----------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("loop_debug", [False, True])
async def test_every_setting_is_restored_after_the_with_block(loop_debug):
    loop = asyncio.get_running_loop()
    loop.set_debug(loop_debug)
    await asyncio.sleep(0)  # the loop applies its own origin-tracking change
    before = settings(loop)
    try:
        with debug_block(slow_callback_s=0.05, origin_depth=3):
            assert loop.get_debug() is True
            assert loop.slow_callback_duration == 0.05
            assert sys.get_coroutine_origin_tracking_depth() == 3
            await asyncio.sleep(0)
            assert sys.get_coroutine_origin_tracking_depth() == 3  # not the loop's 10
            assert loop.get_exception_handler() is not before["handler"]
        await asyncio.sleep(0)  # the loop's scheduled bookkeeping runs
        assert settings(loop) == before
    finally:
        loop.set_debug(True)


@pytest.mark.asyncio
@pytest.mark.parametrize("loop_debug", [False, True])
async def test_every_setting_is_restored_when_the_block_raises(loop_debug):
    loop = asyncio.get_running_loop()
    loop.set_debug(loop_debug)
    await asyncio.sleep(0)
    before = settings(loop)
    try:
        with pytest.raises(ZeroDivisionError):
            async with debug_block(slow_callback_s=0.05, origin_depth=3):
                await asyncio.sleep(0)
                1 / 0  # noqa: B018
        await asyncio.sleep(0)
        assert settings(loop) == before
    finally:
        loop.set_debug(True)


@pytest.mark.asyncio
async def test_the_async_form_restores_at_once_even_without_a_later_await():
    loop = asyncio.get_running_loop()
    loop.set_debug(False)
    await asyncio.sleep(0)
    before = settings(loop)
    try:
        async with debug_block(origin_depth=3):
            await asyncio.sleep(0)
        assert settings(loop) == before
    finally:
        loop.set_debug(True)


@pytest.mark.asyncio
async def test_a_previous_exception_handler_still_gets_the_reports_that_are_not_ours():
    loop = asyncio.get_running_loop()
    seen: list[str] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context["message"]))
    try:
        with debug_block() as found:
            loop.call_exception_handler({"message": "some other loop error"})
        assert seen == ["some other loop error"]
        assert found.findings == []
    finally:
        loop.set_exception_handler(None)


@pytest.mark.asyncio
async def test_other_warnings_are_left_to_the_filters_that_were_there():
    with debug_block() as found, pytest.warns(UserWarning, match="not ours"):
        warnings.warn("not ours", UserWarning, stacklevel=1)
    assert found.findings == []


# -- refusals -----------------------------------------------------------------------------


def test_debug_block_needs_a_running_loop():
    with pytest.raises(RuntimeError, match="running loop"), debug_block():
        pass


@pytest.mark.asyncio
async def test_a_debug_block_cannot_be_entered_twice():
    block = debug_block()
    with block:
        pass
    with pytest.raises(RuntimeError, match="already entered"), block:
        pass


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="slow_callback_s"):
        debug_block(slow_callback_s=-1)
    with pytest.raises(ValueError, match="origin_depth"):
        debug_block(origin_depth=-1)
    gc.collect()


@pytest.mark.allow_asyncio_errors
def test_on_uvloop_the_same_kinds_are_caught():
    uvloop = pytest.importorskip("uvloop", reason="uvloop is not installed (or Windows)")

    async def main():
        with debug_block(slow_callback_s=0.01) as found:
            line = line_after()
            fetch()
            asyncio.create_task(fail("lost"), name="lost-exception")  # noqa: RUF006
            asyncio.get_running_loop().call_soon(time.sleep, 0.02)
            await asyncio.sleep(0.001)
        return found, line

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        found, line = runner.run(main())
    assert found.counts == {"never awaited": 1, "never retrieved": 1, "slow callback": 1}
    assert found.of("never awaited")[0].created_at == at(line)
    assert found.of("never retrieved")[0].created_at == at(line + 1)
    # uvloop has no loop._current_handle: the callback is read from asyncio's log text.
    (slow,) = found.of("slow callback")
    assert (slow.name, slow.created_at) == ("sleep", at(line + 2))


@pytest.mark.asyncio
async def test_the_step_that_leaves_the_block_is_not_reported_to_a_loop_with_debug_off(
    asyncio_log,
):
    loop = asyncio.get_running_loop()
    loop.set_debug(False)
    loop.slow_callback_duration = 0  # every step is "slow", the one that leaves included
    try:
        with debug_block(slow_callback_s=0) as found:
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # asyncio has timed the step that left the block by now
        assert found.counts["slow callback"] >= 1
        assert asyncio_log.records == []
    finally:
        loop.slow_callback_duration = 0.1
        loop.set_debug(True)
