"""course_lib.monitor.watchdog: LoopWatchdog finds the line that blocks the loop.

A watchdog is a real thread watching a real loop blocked in real time: these tests
assert what was detected and reported (the function, the line), never how fast.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from course_lib import runtime
from course_lib.monitor.watchdog import BUCKETS_S, Episode, LagReport, LoopWatchdog, _percentile

LOGGER = "course_lib.monitor.watchdog"


def blocker(seconds: float = 0.3) -> None:
    time.sleep(seconds)  # the blocking line


async def blocking_coroutine() -> None:
    blocker()


BLOCKING_LINE = inspect.getsourcelines(blocker)[1] + 1
CALLER_LINE = inspect.getsourcelines(blocking_coroutine)[1] + 1


def episodes_at_blocker(report: LagReport) -> list[Episode]:
    return [e for e in report.episodes if e.where is not None and e.where.function == "blocker"]


async def wait_for_samples(dog: LoopWatchdog, n: int) -> None:
    # Polling: the figures come from another thread, which has no asyncio.Event to set.
    while dog.report().samples < n:  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def wait_until(predicate) -> None:
    """Poll from a plain thread; pytest-timeout bounds the wait, not the test."""
    while not predicate():
        time.sleep(0.01)


def start_loop_in_thread() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="loop-under-watch")
    thread.start()
    wait_until(loop.is_running)
    return loop, thread


def stop_loop_in_thread(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


# --- what it detects ----------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_blocking_call_gives_one_episode_whose_stack_names_the_line():
    async with LoopWatchdog(threshold_s=0.1, interval_s=0.02) as dog:
        await wait_for_samples(dog, 2)
        await blocking_coroutine()
        await wait_for_samples(dog, dog.report().samples + 2)  # the late probe is counted
    report = dog.report()
    [episode] = episodes_at_blocker(report)
    top, caller = episode.frames[0], episode.frames[1]
    assert (top.function, top.lineno, top.filename) == ("blocker", BLOCKING_LINE, __file__)
    assert top.line == "time.sleep(seconds)  # the blocking line"
    assert (caller.function, caller.lineno) == ("blocking_coroutine", CALLER_LINE)
    assert episode.stack[0] == f"blocker ({__file__}:{BLOCKING_LINE})"
    assert episode.thread_name == threading.main_thread().name
    assert episode.lag_s is not None and episode.lag_s >= 0.1
    assert report.max_s is not None and report.max_s >= episode.lag_s
    text = str(report)
    assert f"blocker ({__file__}:{BLOCKING_LINE})" in text
    assert "time.sleep(seconds)" in text


@pytest.mark.asyncio
async def test_a_healthy_loop_gives_no_episode():
    # A generous threshold: a loaded machine cannot make a sleeping loop a second late.
    async with LoopWatchdog(threshold_s=1.0, interval_s=0.01) as dog:
        await wait_for_samples(dog, 10)
    report = dog.report()
    assert report.episodes == () and report.episodes_total == 0
    assert report.samples >= 10


@pytest.mark.asyncio
async def test_histogram_counts_add_up_to_the_samples():
    async with LoopWatchdog(threshold_s=1.0, interval_s=0.005) as dog:
        await wait_for_samples(dog, 20)
    report = dog.report()
    assert report.histogram[0][0] == "<= 1 ms"
    assert len(report.histogram) == len(BUCKETS_S) + 1
    assert sum(n for _, n in report.histogram) == report.samples == report.window
    assert 0 <= report.p50_s <= report.p99_s <= report.max_s


@pytest.mark.asyncio
async def test_the_lag_ring_and_the_stack_are_bounded():
    async with LoopWatchdog(threshold_s=0.1, interval_s=0.005, max_samples=5,
                            max_frames=1) as dog:
        await wait_for_samples(dog, 8)
        await blocking_coroutine()
        await wait_for_samples(dog, dog.report().samples + 1)
    report = dog.report()
    assert report.window == 5 < report.samples
    [episode] = episodes_at_blocker(report)
    assert len(episode.frames) == 1 and episode.frames_dropped > 0
    assert "outer frames not kept" in str(episode)


def test_percentile_is_nearest_rank():
    xs = [float(i) for i in range(1, 101)]
    assert _percentile(xs, 99) == 99.0
    assert _percentile(xs, 50) == 50.0
    assert _percentile([7.0], 99) == 7.0
    assert _percentile([], 99) is None


@pytest.mark.asyncio
async def test_log_episodes_logs_the_stack_instead_of_collecting(caplog):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with LoopWatchdog(threshold_s=0.1, interval_s=0.02, log_episodes=True) as dog:
        await wait_for_samples(dog, 2)
        await blocking_coroutine()
        await wait_for_samples(dog, dog.report().samples + 1)
    report = dog.report()
    assert report.episodes == () and report.episodes_total >= 1
    detected = [r.getMessage() for r in caplog.records
                if r.name == LOGGER and f"blocker ({__file__}:{BLOCKING_LINE})" in r.getMessage()]
    assert any("time.sleep(seconds)" in m for m in detected)  # at detection: the stack
    assert any("unblocked" in m for m in detected)  # at the end: the lag


# --- where it runs ------------------------------------------------------------------


def test_works_inside_runtime_run():
    async def main() -> LagReport:
        async with LoopWatchdog(threshold_s=0.1, interval_s=0.02) as dog:
            await wait_for_samples(dog, 2)
            await blocking_coroutine()
            await wait_for_samples(dog, dog.report().samples + 1)
        return dog.report()

    [episode] = episodes_at_blocker(runtime.run(main()))
    assert episode.where.lineno == BLOCKING_LINE


def test_works_on_uvloop():
    uvloop = pytest.importorskip("uvloop")

    async def main() -> LagReport:
        async with LoopWatchdog(threshold_s=0.1, interval_s=0.02) as dog:
            await wait_for_samples(dog, 2)
            await blocking_coroutine()
            await wait_for_samples(dog, dog.report().samples + 1)
        return dog.report()

    [episode] = episodes_at_blocker(runtime.run(main(), loop_factory=uvloop.new_event_loop))
    assert episode.where.lineno == BLOCKING_LINE


@pytest.mark.asyncio
async def test_works_inside_run_in_thread_on_the_helper_threads_loop():
    async def main() -> tuple[LagReport, int]:
        async with LoopWatchdog(threshold_s=0.1, interval_s=0.02) as dog:
            await wait_for_samples(dog, 2)
            await blocking_coroutine()
            await wait_for_samples(dog, dog.report().samples + 1)
        return dog.report(), threading.get_ident()

    report, ident = await runtime.run_in_thread(main())
    assert ident != threading.get_ident()  # the loop ran in a helper thread
    [episode] = episodes_at_blocker(report)
    assert episode.where.lineno == BLOCKING_LINE
    assert episode.thread_name == "course_lib.runtime.run_in_thread"


def test_start_with_the_loop_from_another_thread():
    loop, thread = start_loop_in_thread()
    dog = LoopWatchdog(threshold_s=0.1, interval_s=0.02).start(loop)
    try:
        wait_until(lambda: dog.report().samples >= 2)  # the loop's thread is known now
        loop.call_soon_threadsafe(blocker)
        wait_until(lambda: episodes_at_blocker(dog.report()))
    finally:
        dog.stop()
        stop_loop_in_thread(loop, thread)
    [episode] = episodes_at_blocker(dog.report())
    assert episode.thread_name == "loop-under-watch"
    assert episode.where.lineno == BLOCKING_LINE


def test_stop_while_the_loop_is_blocked_keeps_the_open_episode():
    loop, thread = start_loop_in_thread()
    release = threading.Event()
    dog = LoopWatchdog(threshold_s=0.1, interval_s=0.02).start(loop)
    try:
        wait_until(lambda: dog.report().samples >= 1)
        loop.call_soon_threadsafe(release.wait)
        wait_until(lambda: dog.report().episodes_total >= 1)
        dog.stop()
        assert not dog.running
    finally:
        release.set()
        stop_loop_in_thread(loop, thread)  # runs the stale probe first: a no-op
    [episode] = dog.report().episodes
    assert episode.lag_s is None and "still blocked" in str(episode)
    assert [f.function for f in episode.frames][:2] == ["Condition.wait", "Event.wait"]


def test_a_stopped_loop_is_not_a_blocked_loop():
    loop = asyncio.new_event_loop()
    dog = LoopWatchdog(threshold_s=0.05, interval_s=0.01).start(loop)
    try:
        time.sleep(0.2)  # the loop does not run: nothing is late

        async def some_samples() -> None:
            await wait_for_samples(dog, 3)

        loop.run_until_complete(some_samples())
    finally:
        dog.stop()
        loop.close()
    assert dog.report().episodes_total == 0


def test_the_watchdog_ends_by_itself_when_the_loop_closes_under_it():
    loop, thread = start_loop_in_thread()
    dog = LoopWatchdog(threshold_s=0.5, interval_s=0.01).start(loop)
    wait_until(lambda: dog.report().samples >= 2)
    stop_loop_in_thread(loop, thread)  # no dog.stop(): the loop goes away first
    wait_until(lambda: not dog.running)
    dog.stop()  # still harmless
    assert "stopped" in repr(dog)


KERNEL_CELL = """\
def blocker():
    time.sleep(0.3)  # the blocking line

async with LoopWatchdog(threshold_s=0.1, interval_s=0.02) as dog:
    await asyncio.sleep(0.1)
    blocker()
    await asyncio.sleep(0.1)
hits = [e for e in dog.report().episodes if e.where and e.where.function == "blocker"]
print(len(hits), hits[0].where.lineno, hits[0].where.line, hits[0].thread_name, dog.running)
"""


def test_works_in_a_jupyter_kernels_own_loop():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    repo = Path(__file__).resolve().parents[2]
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import asyncio, time\n"
                                  "from course_lib.monitor.watchdog import LoopWatchdog"),
        nbformat.v4.new_code_cell(KERNEL_CELL),
    ])
    env = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "PYTEST_CURRENT_TEST"}}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), env.get("PYTHONPATH")]))
    client = nbclient.NotebookClient(nb, timeout=60, kernel_name="python3",
                                     resources={"metadata": {"path": str(repo)}})
    client.execute(env=env)
    [output] = [o for o in nb.cells[1].outputs if o.get("name") == "stdout"]
    # One episode, at line 2 of the cell, in the kernel's main thread; the thread joined.
    assert output.text.strip() == "1 2 time.sleep(0.3)  # the blocking line MainThread False"


# --- lifecycle ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stop_joins_the_thread_and_a_second_stop_is_harmless():
    dog = LoopWatchdog(threshold_s=1.0, interval_s=0.01).start()
    assert dog.running
    assert any(t.name == dog.name for t in threading.enumerate())
    await wait_for_samples(dog, 1)
    dog.stop()
    assert not dog.running
    assert not any(t.name == dog.name for t in threading.enumerate())
    dog.stop()
    await dog.aclose()
    assert "stopped" in repr(dog)


@pytest.mark.asyncio
async def test_no_probe_is_left_queued_after_stop_on_the_loop():
    loop = asyncio.get_running_loop()
    dog = LoopWatchdog(threshold_s=1.0, interval_s=0.01).start()
    await wait_for_samples(dog, 1)
    blocker(0.05)  # a probe is posted meanwhile and waits in the ready queue
    dog.stop()
    # loop._ready: asyncio's (private) queue of callbacks to run next.
    assert not [h for h in loop._ready if not h.cancelled() and "_stamp" in repr(h)]


@pytest.mark.asyncio
async def test_aclose_joins_the_thread():
    dog = LoopWatchdog(threshold_s=1.0, interval_s=0.01).start()
    await dog.aclose()
    assert not dog.running
    await dog.aclose()


@pytest.mark.asyncio
async def test_start_twice_raises_and_so_does_a_restart():
    dog = LoopWatchdog()
    async with dog:
        with pytest.raises(RuntimeError, match="already started"):
            dog.start()
    with pytest.raises(RuntimeError, match="runs once"):
        dog.start()


def test_start_needs_a_loop():
    with pytest.raises(RuntimeError, match="needs a running loop"):
        LoopWatchdog().start()
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError, match="closed loop"):
        LoopWatchdog().start(loop)


@pytest.mark.parametrize("kwargs", [{"threshold_s": 0}, {"interval_s": -1}, {"max_samples": 0}])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        LoopWatchdog(**kwargs)
