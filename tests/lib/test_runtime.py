"""course_lib.runtime.run: from a script, from inside a running loop, with timeouts."""

from __future__ import annotations

import asyncio
import contextvars
import signal
import sys
import threading

import looptime
import pytest

from course_lib.runtime import run

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
