"""course_lib.monitor.dashboard: redraws, stopping, no task left, and the queue's figures.

Timing logic runs under looptime (virtual time: counts of redraws, never wall-clock
bounds). The queue tests take the ``redis`` fixture (fakeredis, then a real server)
and run real Workers, so done/s and in flight per worker are checked against what
the workers report they did; the figures themselves, read by hand-driven streams, are
tested in test_monitor_queue_figures.py. A stand-in display object counts the redraws.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest
import redis.asyncio
import redis.exceptions
from _worker_support import fast_worker

from course_lib.distributed import Queue, TaskRegistry
from course_lib.monitor.dashboard import (
    Dashboard,
    DashboardReport,
    DashboardView,
    Stop,
    _LagProbe,
    drained,
    live_dashboard,
)


class FakeDisplay:
    """Stands in for IPython's display handle: keeps every view it is given."""

    def __init__(self) -> None:
        self.views: list[DashboardView] = []

    def update(self, view: DashboardView) -> None:
        self.views.append(view)


class Boom(Exception):
    pass


def probes_scheduled(loop: asyncio.AbstractEventLoop) -> list:
    """Timer handles of a dashboard's lag probe still waiting on the loop."""
    return [h for h in loop._scheduled if not h.cancelled()
            and isinstance(getattr(h._callback, "__self__", None), _LagProbe)]


def assert_nothing_left(before: set, *, but: str | None = None) -> None:
    loop = asyncio.get_running_loop()
    assert {t for t in asyncio.all_tasks() if t.get_coro().__qualname__ != but} == before
    assert probes_scheduled(loop) == []


# --- redraws and stopping (virtual time) --------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_redraws_in_place_once_per_every_s_and_stops_after_duration():
    loop = asyncio.get_running_loop()
    before, began = asyncio.all_tasks(), loop.time()
    out = FakeDisplay()
    report = await Dashboard(every_s=1.0, display=out).run(duration_s=5)
    assert loop.time() - began == pytest.approx(5)
    assert [s.at_s for s in report.samples] == pytest.approx([0, 1, 2, 3, 4, 5])
    assert report.stopped_by is Stop.DURATION
    # One redraw per sample, and one last redraw of the last figures saying why it stopped.
    assert report.updates == len(out.views) == 7
    assert out.views[-1].sample is report.samples[-1]
    assert "stopped    after 5.0 s: its duration passed" in out.views[-1].text
    assert "stopped" not in out.views[-2].text
    assert_nothing_left(before)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_duration_between_ticks_takes_its_last_sample_at_the_duration():
    report = await Dashboard(every_s=1.0, display=None).run(duration_s=2.5)
    assert [s.at_s for s in report.samples] == pytest.approx([0, 1, 2, 2.5])
    assert report.updates == 0  # display=None: data only


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_until_stops_it_at_the_first_sample_where_it_holds_sync_or_async():
    report = await Dashboard(display=None).run(until=lambda s: s.at_s >= 3)
    assert [s.at_s for s in report.samples] == pytest.approx([0, 1, 2, 3])
    assert report.stopped_by is Stop.UNTIL

    async def late(sample):
        await asyncio.sleep(0.1)
        return sample.n == 2

    report = await Dashboard(display=None).run(until=late)
    assert [s.n for s in report.samples] == [1, 2]
    assert report.stopped_by is Stop.UNTIL


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_event_stops_it_when_set_after_one_last_sample():
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.call_later(2.5, event.set)
    out = FakeDisplay()
    report = await Dashboard(display=out).run(until=event, duration_s=None)
    assert [s.at_s for s in report.samples] == pytest.approx([0, 1, 2, 2.5])
    assert report.stopped_by is Stop.UNTIL
    assert "the event is set held" in out.views[-1].text


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_live_dashboard_is_the_class_in_one_call():
    report = await live_dashboard(every_s=0.5, duration_s=2, display=None)
    assert isinstance(report, DashboardReport)
    assert len(report.samples) == 5 and report.every_s == 0.5


@pytest.mark.asyncio
async def test_a_dashboard_runs_once():
    dash = Dashboard(display=None)
    await dash.run(duration_s=0)
    with pytest.raises(RuntimeError, match="runs once"):
        await dash.run(duration_s=0)


# --- leaving nothing behind ---------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_cancel_stops_it_with_a_last_redraw_and_leaves_no_task():
    before = asyncio.all_tasks()
    out = FakeDisplay()
    dash = Dashboard(display=out)
    task = asyncio.create_task(dash.run(duration_s=None))
    await asyncio.sleep(2.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    report = dash.report()
    assert report.stopped_by is Stop.CANCELLED
    assert [s.at_s for s in report.samples] == pytest.approx([0, 1, 2])
    assert len(out.views) == 4 and "cancelled" in out.views[-1].text
    assert_nothing_left(before)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_cancel_twice_still_leaves_no_task():
    before = asyncio.all_tasks()
    event = asyncio.Event()  # the Event wait: asyncio.timeout must not turn this into a timeout
    dash = Dashboard(display=FakeDisplay())
    task = asyncio.create_task(dash.run(until=event))
    await asyncio.sleep(1.5)
    task.cancel()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert dash.report().stopped_by is Stop.CANCELLED
    assert_nothing_left(before)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_until_that_raises_propagates_and_leaves_no_task():
    before = asyncio.all_tasks()

    def broken(sample):
        if sample.n == 3:
            raise Boom("until broke")
        return False

    dash = Dashboard(display=FakeDisplay())
    with pytest.raises(Boom):
        await dash.run(until=broken)
    assert dash.report().stopped_by is Stop.FAILED
    assert len(dash.report().samples) == 3
    assert_nothing_left(before)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_display_that_raises_propagates_and_leaves_no_task():
    before = asyncio.all_tasks()

    class Broken(FakeDisplay):
        def update(self, view):
            super().update(view)
            if len(self.views) == 2:
                raise Boom("display broke")

    dash = Dashboard(display=Broken())
    with pytest.raises(Boom):
        await dash.run(duration_s=10)
    assert dash.report().stopped_by is Stop.FAILED
    assert_nothing_left(before)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_keyboard_interrupt_is_reported_as_such_and_leaves_no_probe():
    out = FakeDisplay()
    dash = Dashboard(display=out)

    def interrupt(sample):
        if sample.n == 2:
            raise KeyboardInterrupt
        return False

    with pytest.raises(KeyboardInterrupt):
        await dash.run(until=interrupt)
    assert dash.report().stopped_by is Stop.INTERRUPTED
    assert "interrupted" in out.views[-1].text
    assert probes_scheduled(asyncio.get_running_loop()) == []


# --- what it shows ------------------------------------------------------------------------


async def sleeper() -> None:
    await asyncio.sleep(3600)


async def stubborn(started: asyncio.Event) -> None:
    try:
        started.set()
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(3600)  # still cleaning up: cancelling


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_tasks_by_coroutine_and_state_leave_the_dashboard_out():
    started = asyncio.Event()
    sleepers = [asyncio.create_task(sleeper()) for _ in range(3)]
    slow = asyncio.create_task(stubborn(started))
    await started.wait()
    slow.cancel()  # delivered at its next step: cancelling until it ends
    dash = Dashboard(display=None)
    watching = asyncio.create_task(dash.run(duration_s=0))
    fresh = asyncio.create_task(sleeper())  # scheduled after the dashboard: still ready
    await watching
    (sample,) = dash.report().samples
    assert sample.tasks["sleeper"] == {"waiting": 3, "ready": 1}
    assert sample.tasks["stubborn"] == {"cancelling": 1}
    # The test's own task waits for the dashboard's; the dashboard's task is left out
    # (the article's monitor_dashboard counted itself as "active").
    assert sample.by_state == {"waiting": 4, "ready": 1, "cancelling": 1}
    assert sample.own_left_out == 1 and "Dashboard.run" not in sample.tasks
    for task in (*sleepers, slow, fresh):
        task.cancel()
    await asyncio.gather(*sleepers, slow, fresh, return_exceptions=True)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_the_table_shows_the_top_names_and_counts_the_rest():
    tasks = [asyncio.create_task(sleeper()) for _ in range(2)]
    tasks += [asyncio.create_task(stubborn(asyncio.Event()))]
    await asyncio.sleep(0)
    out = FakeDisplay()
    await Dashboard(display=out, top=1).run(duration_s=0)
    text = out.views[0].text
    assert "sleeper" in text and "stubborn" not in text
    assert "... 1 more coroutine names" in text
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.asyncio
async def test_loop_lag_shows_a_blocked_loop():
    # Real time: a callback blocks the loop for 0.2 s; the probe runs at least that late
    # minus its own interval (a lower bound on what is measured, no bound on speed).
    loop = asyncio.get_running_loop()
    loop.call_later(0.15, time.sleep, 0.2)
    report = await Dashboard(every_s=0.1, display=None, lag_probe_s=0.02).run(duration_s=0.6)
    worst = max(v for _, v in report.series("max_s"))
    assert worst >= 0.15
    assert all(s.loop_lag.probes >= 0 for s in report.samples)
    assert f"loop lag: max {worst * 1e3:.1f} ms" in str(report)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_without_loop_lag_there_is_no_probe():
    report = await Dashboard(display=None, loop_lag=False).run(duration_s=2)
    assert all(s.loop_lag is None for s in report.samples)


@pytest.mark.asyncio
async def test_the_history_is_bounded_and_counts_what_it_dropped():
    dash = Dashboard(display=None, max_samples=3)
    for _ in range(10):
        await dash.sample()
    report = dash.report()
    assert [s.n for s in report.samples] == [8, 9, 10]
    assert report.dropped == 7


@pytest.mark.asyncio
async def test_outside_a_kernel_it_prints_each_view(capsys):
    await Dashboard(every_s=0.05).run(duration_s=0.05)
    out = capsys.readouterr().out
    assert out.count("dashboard  ") == 3  # two samples, and the last one again, stopped
    assert "its duration passed" in out


def test_importing_it_does_not_import_ipython():
    code = "import sys, course_lib.monitor.dashboard; print('IPython' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_in_a_kernel_it_displays_once_then_updates_the_same_handle(monkeypatch):
    import types

    calls = []

    class Handle:
        def update(self, view):
            calls.append(("update", view))

    def display(view, display_id=False):
        calls.append(("display", display_id))
        return Handle()

    shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "IPython",
                        types.SimpleNamespace(get_ipython=lambda: shell))
    monkeypatch.setitem(sys.modules, "IPython.display", types.SimpleNamespace(display=display))
    report = await Dashboard(every_s=1).run(duration_s=3)
    assert calls[0] == ("display", True)
    assert [kind for kind, _ in calls[1:]] == ["update"] * 4
    assert report.updates == 5
    html = calls[-1][1]._repr_html_()
    assert html.startswith("<pre") and "stopped" in html


# --- the queue ----------------------------------------------------------------------------


def gated_registry(gate: asyncio.Event) -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task
    async def job(i: int) -> int:
        await gate.wait()
        await asyncio.sleep(0.01)
        return i

    @registry.task(max_attempts=1)
    async def boom() -> None:
        raise ValueError("boom")

    return registry


@pytest.mark.asyncio
async def test_done_and_in_flight_per_worker_match_what_the_workers_did(redis):
    gate = asyncio.Event()
    registry = gated_registry(gate)
    queue = Queue(redis, "dash", registry=registry)
    await queue.enqueue_many([("job", [i]) for i in range(40)])
    await queue.enqueue("boom")
    full = []

    def until(sample):
        q = sample.queue
        if q is not None and q.in_flight == {"w1": 3, "w2": 3}:
            full.append(sample.n)  # both workers hold all they may: let them go
            gate.set()
        return gate.is_set() and drained(sample) and q.dead == 1

    # In flight is what a worker's PEL holds: running jobs plus any read ahead. With no
    # read-ahead a full worker holds exactly its concurrency (3), which the test waits for.
    async with fast_worker(redis, registry, queue="dash", name="w1", concurrency=3,
                           read_ahead=0) as w1, \
            fast_worker(redis, registry, queue="dash", name="w2", concurrency=3,
                        read_ahead=0) as w2:
        report = await Dashboard(queue, every_s=0.05, display=None).run(duration_s=60,
                                                                          until=until)
        processed = w1.local_counts()["processed"] + w2.local_counts()["processed"]
    assert report.stopped_by is Stop.UNTIL and full
    assert processed == 40
    assert report.done_total == 40  # the dead job is settled, not done
    assert sum(s.queue.settled for s in report.samples if s.queue.settled is not None) == 41
    for s in report.samples:
        assert sum(s.queue.in_flight.values()) == s.queue.pending
        assert all(n <= 3 for n in s.queue.in_flight.values())
    last = report.samples[-1].queue
    assert (last.stream, last.pending, last.lag, last.delayed, last.dead) == (0, 0, 0, 0, 1)
    assert last.consumers == 2 and set(last.in_flight) == {"w1", "w2"}
    assert report.in_flight_peak() == {"w1": 3, "w2": 3}
    assert report.errors == []


@pytest.mark.asyncio
async def test_a_killed_workers_jobs_show_in_flight_until_another_reclaims_them(redis):
    gate = asyncio.Event()
    registry = gated_registry(gate)
    queue = Queue(redis, "dash", registry=registry)
    await queue.enqueue_many([("job", [i]) for i in range(12)])
    w1 = fast_worker(redis, registry, queue="dash", name="w1", concurrency=3, read_ahead=0)
    w2 = fast_worker(redis, registry, queue="dash", name="w2", concurrency=3, read_ahead=0)
    crashed = []

    async def until(sample):
        q = sample.queue
        if not crashed and q is not None and q.in_flight == {"w1": 3, "w2": 3}:
            await w1.abort()  # a crash: its three entries stay pending under its name
            crashed.append(sample.n)
            gate.set()
        return bool(crashed) and drained(sample)

    await w1.start()
    await w2.start()
    try:
        report = await Dashboard(queue, every_s=0.05, display=None).run(duration_s=60,
                                                                          until=until)
    finally:
        await w2.stop()
        await w1.stop()
    after = [s.queue for s in report.samples if s.n > crashed[0]]
    held = [q for q in after if q.in_flight.get("w1") == 3]
    assert held, "the dead worker's entries stay in flight until the visibility timeout"
    assert held[-1].idle_s["w1"] > held[0].idle_s["w1"]  # and its idle time grows
    assert after[-1].in_flight == {"w1": 0, "w2": 0}  # reclaimed by w2 and settled
    done = w1.local_counts()["processed"] + w2.local_counts()["processed"]
    assert done == 12 and report.done_total == 12  # a reclaim is not counted twice


@pytest.mark.asyncio
async def test_a_queue_that_does_not_exist_yet_reads_as_empty(redis):
    report = await Dashboard(Queue(redis, "nothing-here"), display=None).run(duration_s=0)
    q = report.samples[0].queue
    assert (q.stream, q.pending, q.consumers, q.in_flight, q.entries_added) == (0, 0, 0, {}, 0)
    assert drained(report.samples[0])


class Flaky:
    """A Redis client whose pipelines fail from the ``fail_from``-th on (to ``fail_to``)."""

    def __init__(self, real: redis.asyncio.Redis, fail_from: int,
                 fail_to: float = float("inf")) -> None:
        self.real, self.fail_from, self.fail_to, self.calls = real, fail_from, fail_to, 0

    def pipeline(self, **kw):
        self.calls += 1
        if self.fail_from <= self.calls <= self.fail_to:
            raise redis.exceptions.ConnectionError("Error 111 connecting. Connection refused.")
        return self.real.pipeline(**kw)

    def register_script(self, script):
        return self.real.register_script(script)


@pytest.mark.asyncio
async def test_a_redis_error_is_a_line_and_the_last_figures_stay_shown(redis):
    queue = Queue(Flaky(redis, fail_from=3), "dash")
    out = FakeDisplay()
    report = await Dashboard(queue, every_s=0.05, display=out).run(duration_s=0.2)
    assert report.stopped_by is Stop.DURATION  # it went on
    assert [s.error is None for s in report.samples[:3]] == [True, True, False]
    assert all(s.queue is None for s in report.samples[2:])
    assert report.samples[2].error == (
        "Redis: ConnectionError: Error 111 connecting. Connection refused.")
    text = out.views[-1].text
    assert "error    Redis: ConnectionError" in text
    assert "the last figures Redis gave" in text and "stream" in text
    assert not drained(report.samples[-1])  # unknown is not drained


@pytest.mark.asyncio
async def test_after_a_failed_read_the_rates_run_from_the_last_good_figures(redis):
    queue = Queue(Flaky(redis, fail_from=2, fail_to=2), "dash")
    dash = Dashboard(queue, display=None)
    first = await dash.sample()
    await redis.xadd(queue.keys.stream, {"job": b"{}"})
    failed = await dash.sample()
    await redis.xadd(queue.keys.stream, {"job": b"{}"})
    again = await dash.sample()
    assert failed.queue is None and failed.error and again.error is None
    q = again.queue
    assert q.interval_s == pytest.approx(q.read_at_s - first.queue.read_at_s)
    assert q.rates["stream"] == pytest.approx(2 / q.interval_s)  # both jobs, one interval


async def silent_server():
    """A TCP server that accepts, reads, and never answers."""
    async def swallow(reader, writer):
        try:
            while await reader.read(4096):
                pass
        finally:
            writer.close()

    return await asyncio.start_server(swallow, "127.0.0.1", 0)


@pytest.mark.asyncio
async def test_a_silent_server_is_a_timeout_line_and_a_cancel_still_ends_it():
    server = await silent_server()
    port = server.sockets[0].getsockname()[1]
    client = redis.asyncio.Redis(host="127.0.0.1", port=port)
    before = asyncio.all_tasks()
    try:
        report = await Dashboard(Queue(client, "dash"), every_s=0.1, display=None,
                                 redis_timeout_s=0.05).run(duration_s=0.2)
        assert report.samples and all(s.error == "Redis: no answer within 0.05 s"
                                      for s in report.samples)
        # A cancel while it waits for the silent server: no timeout swallows it.
        dash = Dashboard(Queue(client, "dash"), display=None, redis_timeout_s=3600)
        task = asyncio.create_task(dash.run())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert dash.report().stopped_by is Stop.CANCELLED
        assert_nothing_left(before, but="silent_server.<locals>.swallow")  # the server's own
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


@pytest.mark.asyncio
async def test_the_report_prints_a_summary_and_plots(redis):
    registry = gated_registry(asyncio.Event())
    queue = Queue(redis, "dash", registry=registry)
    report = await Dashboard(queue, every_s=0.05, display=None).run(duration_s=0.1)
    text = str(report)
    assert "stopped: duration" in text and "queue 'dash': done 0" in text
    fig = report.plot()
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "done/s", "in flight per worker", "backlog", "tasks", "loop lag (ms)"]
    assert fig._repr_png_().startswith(b"\x89PNG")
