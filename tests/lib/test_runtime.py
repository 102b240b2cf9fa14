"""course_lib.runtime: run() from a script or inside a running loop; run_in_thread()."""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import signal
import sys
import threading

import looptime
import pytest

import course_lib.runtime
from course_lib.runtime import run, run_in_thread

request_id = contextvars.ContextVar("request_id", default="none")


async def _answer(value=42, delay_s=0.0):
    await asyncio.sleep(delay_s)
    return value


def _virtual_loop() -> asyncio.AbstractEventLoop:
    # Virtual time: asyncio.sleep(100) returns at once and loop.time() says 100.
    return looptime.patch_event_loop(asyncio.new_event_loop(), start=0)


def test_returns_the_result_without_a_running_loop():
    assert run(_answer(7)) == 7


def test_raises_the_coroutines_own_exception():
    async def broken():
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        run(broken())


@pytest.mark.asyncio
async def test_works_inside_a_running_loop_on_a_fresh_loop_in_another_thread():
    outer_loop = asyncio.get_running_loop()

    async def where():
        return asyncio.get_running_loop(), threading.current_thread()

    inner_loop, thread = run(where())
    assert inner_loop is not outer_loop
    assert thread is not threading.current_thread()
    assert inner_loop.is_closed()


@pytest.mark.asyncio
async def test_exception_crosses_the_thread_with_its_traceback():
    async def broken():
        raise ValueError("from the helper thread")

    with pytest.raises(ValueError, match="helper thread") as info:
        run(broken())
    assert any(entry.name == "broken" for entry in info.traceback)


def test_timeout_cancels_waits_for_cleanup_and_raises_timeout_error():
    steps = []

    async def slow():
        try:
            await asyncio.sleep(100)
        finally:
            steps.append("cleanup started")
            await asyncio.sleep(1)  # cleanup that itself awaits
            steps.append("cleanup finished")

    loop_times = []

    def factory():
        loop = _virtual_loop()
        loop_times.append(loop)
        return loop

    with pytest.raises(TimeoutError):
        run(slow(), timeout_s=5, loop_factory=factory)
    assert steps == ["cleanup started", "cleanup finished"]


@pytest.mark.asyncio
async def test_timeout_inside_a_running_loop_also_waits_for_cleanup():
    steps = []

    async def slow():
        try:
            await asyncio.sleep(100)
        finally:
            await asyncio.sleep(1)
            steps.append("cleanup finished")

    with pytest.raises(TimeoutError):
        run(slow(), timeout_s=5, loop_factory=_virtual_loop)
    assert steps == ["cleanup finished"]


def test_a_result_within_the_timeout_is_returned():
    assert run(_answer(1, delay_s=4), timeout_s=5, loop_factory=_virtual_loop) == 1


def test_loop_factory_is_used():
    made = []

    def factory():
        loop = asyncio.new_event_loop()
        made.append(loop)
        return loop

    async def which():
        return asyncio.get_running_loop()

    assert run(which(), loop_factory=factory) is made[0]


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop does not exist on Windows")
@pytest.mark.asyncio
async def test_accepts_uvloop_from_inside_a_running_loop():
    import uvloop

    async def loop_type():
        return type(asyncio.get_running_loop()).__module__

    assert run(loop_type(), loop_factory=uvloop.new_event_loop).startswith("uvloop")


@pytest.mark.asyncio
async def test_context_variables_reach_the_coroutine():
    request_id.set("r-17")

    async def read():
        return request_id.get()

    assert run(read()) == "r-17"


def test_refuses_a_coroutine_function_with_a_hint():
    with pytest.raises(TypeError, match=r"call it, run\(_answer\(\.\.\.\)\)"):
        run(_answer)


def test_refuses_other_values_clearly():
    with pytest.raises(TypeError, match="needs a coroutine, got int"):
        run(42)


@pytest.mark.asyncio
async def test_refuses_a_task_of_another_loop():
    task = asyncio.create_task(_answer())
    with pytest.raises(TypeError, match="got Task"):
        run(task)
    await task


def test_a_failing_loop_factory_leaves_no_unawaited_coroutine():
    def factory():
        raise OSError("no loop for you")

    with pytest.raises(OSError, match="no loop"):
        run(_answer(), loop_factory=factory)


@pytest.mark.skipif(sys.platform == "win32", reason="pthread_kill is POSIX only")
def test_interrupting_the_wait_cancels_the_work_and_waits_for_its_cleanup():
    steps = []

    async def interrupted():
        try:
            # What the kernel's interrupt button or Ctrl-C does: SIGINT to the
            # main thread, which is blocked in run() waiting for this coroutine.
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            await asyncio.sleep(30)
            steps.append("not reached")
        finally:
            steps.append("cleanup")

    async def cell():
        # A notebook cell: a running loop whose SIGINT raises KeyboardInterrupt.
        # (pytest-asyncio's Runner turns SIGINT into a cancel instead, so this
        # test drives its own loop.)
        run(interrupted())

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(cell())
    finally:
        loop.close()
    assert steps == ["cleanup"]


# --- run() blocks its caller's loop; run_in_thread() does not ------------------------


async def _set_soon(event: threading.Event) -> None:
    await asyncio.sleep(0)
    event.set()


async def _wait_for_the_callers_loop(event: threading.Event, patience_s: float) -> bool:
    # Runs in the helper loop; only a task of the caller's loop sets the event.
    return await asyncio.to_thread(event.wait, patience_s)


@pytest.mark.asyncio
async def test_run_blocks_the_callers_loop_until_it_returns():
    event = threading.Event()
    setter = asyncio.create_task(_set_soon(event))
    # The setter cannot run while run() holds the loop's thread: the wait times out.
    assert run(_wait_for_the_callers_loop(event, 0.2)) is False
    await setter
    assert event.is_set()


@pytest.mark.asyncio
async def test_run_in_thread_lets_the_callers_loop_run_meanwhile():
    event = threading.Event()
    setter = asyncio.create_task(_set_soon(event))
    # 60 s is only a hang guard: the event is set as soon as the caller's loop runs.
    assert await run_in_thread(_wait_for_the_callers_loop(event, 60)) is True
    await setter


@pytest.mark.asyncio
async def test_run_in_thread_runs_on_a_fresh_loop_in_another_thread_and_closes_it():
    outer_loop = asyncio.get_running_loop()

    async def where():
        return asyncio.get_running_loop(), threading.current_thread()

    inner_loop, thread = await run_in_thread(where())
    assert inner_loop is not outer_loop and inner_loop.is_closed()
    assert thread is not threading.current_thread() and not thread.is_alive()
    assert "run_in_thread" in course_lib.runtime.__all__


@pytest.mark.asyncio
async def test_run_in_thread_returns_the_result_and_raises_the_exception():
    assert await run_in_thread(_answer(7)) == 7

    async def broken():
        raise ValueError("from the helper thread")

    with pytest.raises(ValueError, match="helper thread") as info:
        await run_in_thread(broken())
    assert any(entry.name == "broken" for entry in info.traceback)


@pytest.mark.asyncio
async def test_run_in_thread_timeout_cancels_waits_for_cleanup_and_raises_timeout_error():
    steps = []

    async def slow():
        try:
            await asyncio.sleep(100)
        finally:
            await asyncio.sleep(1)  # virtual: the helper loop is a looptime loop
            steps.append("cleanup finished")

    with pytest.raises(TimeoutError):
        await run_in_thread(slow(), timeout_s=5, loop_factory=_virtual_loop)
    assert steps == ["cleanup finished"]
    assert await run_in_thread(_answer(1, delay_s=4), timeout_s=5, loop_factory=_virtual_loop) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("cancels", [1, 2])
async def test_cancelling_the_awaiting_task_cancels_the_coroutine_and_waits_for_its_cleanup(
    cancels,
):
    started, in_cleanup, release = threading.Event(), threading.Event(), threading.Event()
    steps = []

    async def work():
        try:
            started.set()
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            steps.append("cancelled")
            in_cleanup.set()
            # A cleanup that lasts until the test says so (60 s: a hang guard only).
            await asyncio.to_thread(release.wait, 60)
            steps.append("cleanup finished")
            raise

    caller = asyncio.create_task(run_in_thread(work()))
    assert await asyncio.to_thread(started.wait, 60)
    caller.cancel("first")
    assert await asyncio.to_thread(in_cleanup.wait, 60)
    if cancels == 2:
        caller.cancel("second")  # during the cleanup: absorbed, the cleanup goes on
        await asyncio.sleep(0.01)
        assert not caller.done()
    release.set()
    with pytest.raises(asyncio.CancelledError) as caught:
        await caller
    assert caught.value.args == ("first",)
    assert steps == ["cancelled", "cleanup finished"]  # before the await ended
    assert caller.cancelling() == cancels
    assert not any(t.name == "course_lib.runtime.run_in_thread" for t in threading.enumerate())


@pytest.mark.asyncio
async def test_run_in_thread_passes_the_awaiting_tasks_context_variables():
    request_id.set("r-18")

    async def read():
        return request_id.get()

    assert await run_in_thread(read()) == "r-18"


@pytest.mark.asyncio
async def test_run_in_thread_refuses_what_is_not_a_coroutine():
    with pytest.raises(TypeError, match=r"call it, run_in_thread\(_answer\(\.\.\.\)\)"):
        await run_in_thread(_answer)
    future = asyncio.get_running_loop().create_future()
    with pytest.raises(TypeError, match="run_in_thread\\(\\) needs a coroutine object, got Future"):
        await run_in_thread(future)


@pytest.mark.asyncio
async def test_run_in_thread_closes_the_coroutine_when_the_loop_factory_fails():
    def factory():
        raise OSError("no loop for you")

    coro = _answer()
    with pytest.raises(OSError, match="no loop"):
        await run_in_thread(coro, loop_factory=factory)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited"
