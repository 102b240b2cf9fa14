"""Grading tests for exercises 5.1-5.3 (notebooks/05_debugging_monitoring.ipynb).

5.1 is graded on real tasks this file creates and suspends at known lines: each such
line ends in a ``# at: <mark>`` comment, found by reading this file, so that the
expected ``function (file:line)`` strings never go stale when the file is edited.

5.2 runs on looptime's virtual clock, where lag is exact (0 unless something blocks).
A blocked loop is simulated there by ``_Clock.block(s)``: the loop's clock jumps
``s`` seconds inside one step, which is what a ``time.sleep(s)`` does to every timer on
that loop (looptime's clock stands still while code runs). Two checks block for real
and assert only that the block was seen (a lower bound: a loaded machine is later,
never earlier).

5.3 runs in real time: its lookup() goes to worker threads. lookup() and the sink are
replaced by recording fakes; every wait has a bound and a hint. "Never blocks the
loop" is graded by the thread lookup() runs on, never by a wall-clock bound on lag
(a loaded machine is late for reasons of its own); the lag measured goes in the hint.

Every task a test starts, and every task the code under test leaves behind, is stopped
at the end of the test's own body.
"""

from __future__ import annotations

import asyncio
import collections
import re
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
from _support import _async, _Cleanup, _outcome, _raise_if_failed, _said, _within

MODULE = "ch05_debugging"

# --- 5.1 where ---------------------------------------------------------------------------

_FILE = Path(__file__).name
_SOURCE = Path(__file__).read_text(encoding="utf-8").splitlines()


def _line(mark: str) -> int:
    """The number of the line of this file that ends in ``# at: <mark>``."""
    hits = [n for n, text in enumerate(_SOURCE, 1) if text.rstrip().endswith(f"# at: {mark}")]
    if len(hits) != 1:
        raise LookupError(f"{len(hits)} lines marked {mark!r} in {_FILE}")
    return hits[0]


def _at(function: str, mark: str) -> str:
    return f"{function} ({_FILE}:{_line(mark)})"


class _Store:
    async def fetch(self, gate: asyncio.Future[Any]) -> Any:
        return await gate  # at: fetch


async def _outer(gate: asyncio.Future[Any]) -> Any:
    return await _Store().fetch(gate)  # at: outer


async def _naps() -> None:
    await asyncio.sleep(3600)  # at: naps


async def _ticks(gate: asyncio.Future[Any]):
    yield 1
    await _Store().fetch(gate)  # at: ticks
    yield 2


async def _reader(gate: asyncio.Future[Any]) -> None:
    async for _ in _ticks(gate):  # at: reader
        pass


class _Gate:
    """An awaitable written as a class: its ``__await__`` is a generator."""

    def __init__(self, fut: asyncio.Future[Any]) -> None:
        self.fut = fut

    def __await__(self):
        return (yield from self.fut.__await__())  # at: gate


async def _uses_gate(fut: asyncio.Future[Any]) -> Any:
    return await _Gate(fut)  # at: uses_gate


@types.coroutine
def _legacy(fut: asyncio.Future[Any]):
    return (yield from fut)  # at: legacy


async def _uses_legacy(fut: asyncio.Future[Any]) -> Any:
    return await _legacy(fut)  # at: uses_legacy


async def _boss(helper: asyncio.Task[Any]) -> Any:
    return await helper  # at: boss


async def _idle(gate: asyncio.Future[Any]) -> Any:  # at: idle
    return await gate


async def _nest(n: int, gate: asyncio.Future[Any]) -> Any:
    if n:
        return await _nest(n - 1, gate)  # at: nest
    return await gate  # at: nest_bottom


async def _ends(how: str) -> None:
    if how == "fails":
        raise ValueError("failed on purpose")


def _where(ex, task: asyncio.Task[Any], what: str) -> list[str]:
    got = ex.where(task)
    assert isinstance(got, list) and all(isinstance(s, str) for s in got), (
        f"{what}: where() returned {got!r:.80}, expected a list of strings"
    )
    return got


def _compare(got: list[str], expected: list[str], what: str) -> None:
    """Equal, or a message that names the first difference (and the likely cause)."""
    if got == expected:
        return
    for g, e in zip(got, expected, strict=False):
        if g == e:
            continue
        g_func, _, g_rest = g.partition(" (")
        e_func = e.partition(" (")[0]
        if "/" in g_rest or "\\" in g_rest:
            raise AssertionError(
                f"file: the base name (os.path.basename), not the path: {what}: {g!r:.90}"
            )
        if g_func != e_func and e_func.endswith("." + g_func):
            raise AssertionError(
                f"function: the qualified name (co_qualname), {e_func!r} not {g_func!r}: {what}"
            )
        raise AssertionError(f"{what}: where() gave {g!r}, expected {e!r}")
    if len(got) < len(expected):
        raise AssertionError(
            f"{what}: where() stopped after {len(got)} of {len(expected)} lines: "
            f"{expected[len(got)]!r} is missing"
        )
    raise AssertionError(f"{what}: where() gave {len(got)} lines, expected {len(expected)}: "
                         f"{got[len(expected)]!r} is one too many")  # fmt: skip


@_async
@pytest.mark.exercise("5.1")
async def test_where_follows_coroutines_to_the_line_each_is_stopped_at(ex):
    """A task in _outer() -> _Store.fetch() -> a Future: 2 lines, outermost first."""
    async with _Cleanup() as tasks:
        gate = asyncio.get_running_loop().create_future()
        task = tasks.start(_outer(gate))
        await asyncio.sleep(0)
        got = _where(ex, task, "_outer -> _Store.fetch")
        expected = [_at("_outer", "outer"), _at("_Store.fetch", "fetch")]
        if got == expected[:1]:
            raise AssertionError(
                "only the task's own frame (what get_stack() shows): follow cr_await to the "
                "coroutine it awaits, and on"
            )
        _compare(got, expected, "_outer -> _Store.fetch")
        assert not task.done(), "where() changed the task: it is not suspended any more"
        gate.set_result(None)
        await _within(60, task, "after where(), the task never finished")


@_async
@pytest.mark.exercise("5.1")
async def test_where_goes_down_into_asyncio_sleep(ex):
    """A task in asyncio.sleep(): the last line is sleep (tasks.py:N), asyncio's own frame."""
    async with _Cleanup() as tasks:
        task = tasks.start(_naps())
        await asyncio.sleep(0)
        got = _where(ex, task, "_naps -> asyncio.sleep")
        _compare(got[:1], [_at("_naps", "naps")], "a task in _naps()")
        assert len(got) == 2 and re.fullmatch(r"sleep \(tasks\.py:\d+\)", got[1]), (
            f"a task in asyncio.sleep(): where() gave {got}, expected 2 lines, the last "
            "'sleep (tasks.py:N)': asyncio's frames are frames too"
        )


@_async
@pytest.mark.exercise("5.1")
async def test_where_goes_through_an_async_generator(ex):
    """`async for` over an async generator that awaits: _reader -> _ticks -> _Store.fetch."""
    async with _Cleanup() as tasks:
        gate = asyncio.get_running_loop().create_future()
        task = tasks.start(_reader(gate))
        await asyncio.sleep(0)
        got = _where(ex, task, "async for over an async generator")
        expected = [_at("_reader", "reader"), _at("_ticks", "ticks"), _at("_Store.fetch", "fetch")]
        if got == expected[:1]:
            raise AssertionError(
                "async generator: where() stopped at the `async for` line; the object it awaits "
                "refers to the generator (gc.get_referents), go on there via ag_await"
            )
        _compare(got, expected, "async for over an async generator")
        gate.set_result(None)
        await _within(60, task, "after where(), the task never finished")


@_async
@pytest.mark.exercise("5.1")
async def test_where_goes_through_generator_based_awaitables(ex):
    """A class whose __await__ is a generator, and a @types.coroutine: gi_frame, gi_yieldfrom."""
    async with _Cleanup() as tasks:
        loop = asyncio.get_running_loop()
        cases = [
            (_uses_gate, [_at("_uses_gate", "uses_gate"), _at("_Gate.__await__", "gate")],
             "await _Gate(fut), a class with __await__"),
            (_uses_legacy, [_at("_uses_legacy", "uses_legacy"), _at("_legacy", "legacy")],
             "await a @types.coroutine generator"),
        ]  # fmt: skip
        for make, expected, what in cases:
            gate = loop.create_future()
            task = tasks.start(make(gate))
            await asyncio.sleep(0)
            got = _where(ex, task, what)
            if got == expected[:1]:
                raise AssertionError(
                    f"generator: where() stopped at {got[0]!r} ({what}): a generator's frame "
                    "is gi_frame, what it awaits gi_yieldfrom"
                )
            _compare(got, expected, what)
            gate.set_result(None)
            await _within(60, task, f"{what}: after where(), the task never finished")


@_async
@pytest.mark.exercise("5.1")
async def test_where_names_the_task_a_task_awaits(ex):
    """A task awaiting another task: its line, then "<Task 'helper'>"; the helper's own chain."""
    async with _Cleanup() as tasks:
        gate = asyncio.get_running_loop().create_future()
        helper = tasks.start(_outer(gate), name="helper")
        boss = tasks.start(_boss(helper), name="boss")
        await asyncio.sleep(0)
        got = _where(ex, boss, "a task awaiting the task 'helper'")
        expected = [_at("_boss", "boss"), "<Task 'helper'>"]
        if got == expected[:1]:
            raise AssertionError(
                "await other_task: the chain ends at the Task's iterator; name the Task it "
                "refers to as \"<Task 'helper'>\" (gc.get_referents, get_name())"
            )
        _compare(got, expected, "a task awaiting the task 'helper'")
        _compare(
            _where(ex, helper, "the awaited task"),
            [_at("_outer", "outer"), _at("_Store.fetch", "fetch")],
            "the awaited task 'helper'",
        )
        gate.set_result(None)
        await _within(60, boss, "after where(), the task never finished")


@_async
@pytest.mark.exercise("5.1")
async def test_where_of_a_finished_task_is_empty(ex):
    """A task that returned, one that failed, one cancelled: where() gives [] for each."""
    async with _Cleanup() as tasks:
        returned = tasks.start(_ends("returns"))
        failed = tasks.start(_ends("fails"))
        cancelled = tasks.start(_naps())
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.wait({returned, failed, cancelled})
        failed.exception()  # retrieved: asyncio would report it otherwise
        for task, how in ((returned, "returned"), (failed, "failed"), (cancelled, "cancelled")):
            got = _where(ex, task, f"a task that {how}")
            assert got == [], f"finished: a task that {how} gave {got}, expected []"


@_async
@pytest.mark.exercise("5.1")
async def test_where_of_a_task_not_started_is_its_def_line(ex):
    """A task created and not started yet: its coroutine's frame, at the def line."""
    async with _Cleanup() as tasks:
        gate = asyncio.get_running_loop().create_future()
        task = tasks.start(_idle(gate))
        got = _where(ex, task, "a task not started yet")
        _compare(got, [_at("_idle", "idle")], "a task not started yet")
        gate.set_result(None)
        await _within(60, task, "after where(), the task never finished")


_DEPTH = 1000


@_async
@pytest.mark.exercise("5.1")
async def test_where_follows_a_chain_1000_awaits_deep(ex):
    """A chain of 1,000 coroutines, each awaiting the next: 1,000 lines, no RecursionError."""
    async with _Cleanup() as tasks:
        gate = asyncio.get_running_loop().create_future()
        limit = sys.getrecursionlimit()
        # The chain itself needs the room to be built, resumed and cancelled; where()
        # runs under the default limit, 1,000, as a learner's would.
        sys.setrecursionlimit(limit + 3 * _DEPTH)
        try:
            task = tasks.start(_nest(_DEPTH - 1, gate))
            await asyncio.sleep(0)
            sys.setrecursionlimit(1000)
            try:
                got = _where(ex, task, f"a chain {_DEPTH:,} deep")
            except RecursionError:
                pytest.fail(
                    "RecursionError on a chain 1,000 awaits deep: walk it with a loop "
                    "(obj = obj.cr_await), not a recursive call per frame"
                )
            finally:
                sys.setrecursionlimit(limit + 3 * _DEPTH)
            expected = [_at("_nest", "nest")] * (_DEPTH - 1) + [_at("_nest", "nest_bottom")]
            _compare(got, expected, f"a chain {_DEPTH:,} deep")
            gate.set_result(None)
            await _within(60, task, "after where(), the task never finished")
        finally:
            if not gate.done():
                gate.cancel()
            await asyncio.wait({task}, timeout=60)
            sys.setrecursionlimit(limit)


# --- 5.2 LagMonitor ----------------------------------------------------------------------


def _now() -> float:
    return asyncio.get_running_loop().time()


class _Clock:
    """``with _Clock() as clock:``, then ``clock.block(0.2)`` does to the virtual clock what
    a ``time.sleep(0.2)`` does to a real one: the loop's time jumps 0.2 s inside the step
    that called it, so every timer due meanwhile fires 0.2 s late, or less."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.skipped = 0.0

    def block(self, s: float) -> None:
        self.skipped += s

    def __enter__(self) -> _Clock:
        real = self.loop.time
        self.loop.time = lambda: real() + self.skipped  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc_info: object) -> None:
        del self.loop.time


def _monitor(ex, interval_s: float = 0.01):
    mon = ex.LagMonitor(interval_s=interval_s)
    return mon


def _samples(mon) -> list[float]:
    samples = mon.samples
    assert isinstance(samples, list), f"samples is {type(samples).__name__}, expected a list"
    return samples


def _names(tasks: set[asyncio.Task[Any]]) -> str:
    return ", ".join(sorted(getattr(t.get_coro(), "__qualname__", t.get_name()) for t in tasks))


@_async
@pytest.mark.exercise("5.2")
async def test_lag_monitor_rejects_an_interval_that_is_not_positive(ex):
    """LagMonitor(interval_s=0) and interval_s=-1: ValueError."""
    for bad in (0, -1):
        with pytest.raises(ValueError):
            ex.LagMonitor(interval_s=bad)


@_async
@pytest.mark.exercise("5.2")
async def test_lag_monitor_on_an_idle_loop_sees_no_lag_and_one_sample_per_interval(ex):
    """Nothing blocks for 1 s, interval_s=0.01: about 100 samples, every lag about 0."""
    async with _Cleanup():
        mon = _monitor(ex)
        async with mon:
            await asyncio.sleep(1)
        samples = _samples(mon)
        assert 90 <= len(samples) <= 101, (
            f"samples: {len(samples)} in 1 s at interval_s=0.01, expected about 100, one per "
            "interval (sleep interval_s, then record one lag)"
        )
        assert mon.max_s < 0.005, (
            f"lag counted the interval: nothing blocked, yet max_s was {mon.max_s:.4f} s at "
            "interval_s=0.01; lag is loop.time() minus the time the wake-up was due"
        )
        assert mon.p99_s < 0.005, f"nothing blocked, yet p99_s was {mon.p99_s:.4f} s"


@pytest.mark.asyncio
@pytest.mark.exercise("5.2")
async def test_lag_monitor_sees_a_real_blocking_call(ex):
    """A real time.sleep(0.2) in the middle of the block: max_s >= 0.15 s."""
    async with _Cleanup():
        mon = _monitor(ex)
        async with mon:
            await asyncio.sleep(0.05)
            time.sleep(0.2)  # noqa: ASYNC251  (the blocking call)
            await asyncio.sleep(0.05)
        assert mon.max_s >= 0.15, (
            f"a real time.sleep(0.2) in the block was not seen: max_s {mon.max_s:.3f} s, "
            f"expected >= 0.15 ({len(_samples(mon))} samples)"
        )


@pytest.mark.asyncio
@pytest.mark.exercise("5.2")
async def test_lag_monitor_sees_a_block_on_the_bodys_first_line(ex):
    """time.sleep(0.2) on the first line of the block: seen too (max_s >= 0.15 s)."""
    async with _Cleanup():
        mon = _monitor(ex)
        async with mon:
            time.sleep(0.2)  # noqa: ASYNC251  (before the body awaits anything)
            await asyncio.sleep(0.05)
        assert mon.max_s >= 0.15, (
            f"first line: a time.sleep(0.2) there was not seen (max_s {mon.max_s:.3f} s): "
            "let the task start its first sleep in __aenter__ (await asyncio.sleep(0))"
        )


@_async
@pytest.mark.exercise("5.2")
async def test_lag_monitor_counts_one_block_once(ex):
    """One 0.2 s block, then 1 s more: one sample of about 0.2 s, the others about 0."""
    async with _Cleanup():
        mon = _monitor(ex)
        with _Clock() as clock:
            async with mon:
                await asyncio.sleep(0.505)
                clock.block(0.2)
                await asyncio.sleep(1)
        late = [round(s, 3) for s in _samples(mon) if s >= 0.1]
        assert late, f"one 0.2 s block was not seen: max_s {mon.max_s:.3f} s"
        assert len(late) == 1, (
            f"one block counted {len(late)} times ({late[:4]}...): the next sleep is due "
            "interval_s after the late wake-up, not on a schedule fixed at the start"
        )
        assert late[0] >= 0.15, f"one 0.2 s block gave a sample of {late[0]} s, expected ~0.2"
        assert mon.max_s == max(_samples(mon)), "max_s is not the largest sample"


@_async
@pytest.mark.exercise("5.2")
async def test_lag_monitor_p99_leaves_out_the_top_one_percent(ex):
    """10 s with 5 blocks of 0.2 s (under 1% of samples): p99 ~0; with 40 blocks: p99 ~0.2."""
    async with _Cleanup():
        for blocks, blocked in ((5, False), (40, True)):
            mon = _monitor(ex)
            with _Clock() as clock:
                async with mon:
                    for _ in range(blocks):
                        await asyncio.sleep(10 / blocks + 0.0005)
                        clock.block(0.2)
                    await asyncio.sleep(0.1)
            n, share = len(_samples(mon)), blocks / max(len(_samples(mon)), 1)
            if blocked:
                assert mon.p99_s >= 0.15, (
                    f"p99: {blocks} blocks of 0.2 s in {n} samples ({share:.0%}) gave p99_s "
                    f"{mon.p99_s:.3f} s, expected ~0.2 (more than 1% are late)"
                )
            else:
                assert mon.max_s >= 0.15, f"5 blocks of 0.2 s not seen: max_s {mon.max_s:.3f}"
                assert mon.p99_s < 0.01, (
                    f"p99: 5 blocks of 0.2 s in {n} samples ({share:.1%}) gave p99_s "
                    f"{mon.p99_s:.3f} s, expected ~0: the top 1% is left out (p99 is not max)"
                )


@_async
@pytest.mark.exercise("5.2")
async def test_lag_monitor_reports_nothing_before_any_sample(ex):
    """A monitor not entered yet: samples [], max_s 0.0, p99_s 0.0."""
    mon = _monitor(ex)
    assert (mon.samples, mon.max_s, mon.p99_s) == ([], 0.0, 0.0), (
        f"no samples yet: samples {mon.samples!r:.40}, max_s {mon.max_s!r}, p99_s "
        f"{mon.p99_s!r}, expected [], 0.0, 0.0"
    )


@_async
@pytest.mark.exercise("5.2")
async def test_lag_monitor_stops_when_the_block_ends(ex):
    """Leaving the block: no CancelledError, no task left, no sample added afterwards."""
    async with _Cleanup() as tasks:
        mon = _monitor(ex)

        async def use() -> None:
            async with mon:
                await asyncio.sleep(0.5)

        user = tasks.start(use())
        await asyncio.wait({user}, timeout=60)
        assert user.done(), "the block never ended"
        _raise_if_failed(user)
        assert not user.cancelled(), (
            "CancelledError on leaving the block, though nobody cancelled it: the monitor's "
            "own CancelledError must not come out of __aexit__"
        )
        left = tasks.leftovers()
        assert not left, (
            f"left running after the block: {_names(left)}: cancel the task in __aexit__ and "
            "await it until it has ended"
        )
        count = len(_samples(mon))
        await asyncio.sleep(1)
        assert len(_samples(mon)) == count, (
            f"samples grew from {count} to {len(_samples(mon))} in the second after the block"
        )


@_async
@pytest.mark.exercise("5.2")
async def test_lag_monitor_lets_an_error_of_the_block_out(ex):
    """A ValueError raised in the block comes out unchanged, and the monitor stops."""
    async with _Cleanup() as tasks:
        mon = _monitor(ex)
        error = ValueError("raised in the block")

        async def use() -> None:
            async with mon:
                await asyncio.sleep(0.1)
                raise error

        outcome = await _outcome(60, use(), "the block that raises never ended")
        assert outcome == ("raised", error), (
            f"the block raised ValueError, and the async with {_said(outcome)}: __aexit__ must "
            "not swallow it (return None) nor replace it"
        )
        left = tasks.leftovers()
        assert not left, f"left running after the block raised: {_names(left)}"


@_async
@pytest.mark.exercise("5.2")
async def test_lag_monitor_cancelled_twice_still_stops(ex):
    """Cancelled in the block, then again as the monitor stops: cancelled, no task left."""
    async with _Cleanup() as tasks:
        mon = _monitor(ex)

        async def use() -> None:
            async with mon:
                await asyncio.sleep(3600)

        user = tasks.start(use())
        await asyncio.sleep(0.5)
        _raise_if_failed(user)
        user.cancel()
        await asyncio.sleep(0)  # it is in __aexit__ now
        user.cancel()
        await asyncio.wait({user}, timeout=60)
        assert user.done(), "cancelled twice, the block never ended"
        _raise_if_failed(user)
        assert user.cancelled(), "cancelled twice, the task running the block was not cancelled"
        left = tasks.leftovers()
        assert not left, f"cancelled twice, the monitor's task was left running: {_names(left)}"


@_async
@pytest.mark.exercise("5.2")
async def test_lag_monitor_does_not_swallow_a_cancel_that_comes_while_it_stops(ex):
    """The block ends, then its task is cancelled as the monitor stops: it ends cancelled."""
    async with _Cleanup() as tasks:
        mon = _monitor(ex)
        gate = asyncio.get_running_loop().create_future()

        async def use() -> None:
            async with mon:
                await gate

        user = tasks.start(use())
        await asyncio.sleep(0.5)
        _raise_if_failed(user)
        gate.set_result(None)
        await asyncio.sleep(0)  # the body has ended: __aexit__ stops the monitor
        if user.done():
            pytest.fail("__aexit__ did not wait for the monitor's task to end")
        user.cancel()
        await asyncio.wait({user}, timeout=60)
        assert user.done(), "cancelled while leaving, the block never ended"
        _raise_if_failed(user)
        assert user.cancelled(), (
            "swallowed: a cancel that came while __aexit__ stopped the monitor was lost; "
            "re-raise CancelledError when the task leaving is cancelling() too"
        )


# --- 5.3 Service -------------------------------------------------------------------------


class _Lookup:
    """Stands for the module's lookup(): blocks its thread ``block_s``, records where it ran."""

    def __init__(self, block_s: float = 0.0) -> None:
        self.block_s = block_s
        self.loop_thread = threading.get_ident()
        self.calls = 0
        self.on_loop_thread = 0
        self._lock = threading.Lock()

    def __call__(self, request: str) -> str:
        with self._lock:
            self.calls += 1
            self.on_loop_thread += threading.get_ident() == self.loop_thread
        if self.block_s:
            time.sleep(self.block_s)
        return request.upper()


class _Sink:
    """A sink that records each line; it may fail at line ``fail_at``, or hang (and then,
    cancelled, clean up for ``cleanup_s`` before it lets the cancel go on)."""

    def __init__(self, *, fail_at: int | None = None, hang: bool = False,
                 cleanup_s: float = 0.0) -> None:  # fmt: skip
        self.lines: list[str] = []
        self.fail_at, self.hang, self.cleanup_s = fail_at, hang, cleanup_s
        self.error: Exception | None = None
        self.calls = 0
        self.hanging = asyncio.Event()
        self._changed = asyncio.Event()

    async def __call__(self, line: str) -> None:
        self.calls += 1
        self._changed.set()
        if self.calls == self.fail_at:
            self.error = OSError(f"disk full at line {self.calls}")
            raise self.error
        if self.hang:
            self.hanging.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await asyncio.sleep(self.cleanup_s)  # e.g. roll the write back
                raise
        self.lines.append(line)

    async def wait_calls(self, n: int, what: str) -> None:
        async def reached() -> None:
            while self.calls < n:
                self._changed.clear()
                await self._changed.wait()

        await _within(5, reached(), f"{what}: sink was called {self.calls} times in 5 s, "
                      f"expected {n}: is the writer task started, and still running?")  # fmt: skip


async def _started(ex, sink: _Sink):
    service = ex.Service(sink)
    await _within(5, service.start(), "start() did not return within 5 s")
    return service


async def _close(service, what: str = "aclose()") -> tuple[str, Any]:
    return await _outcome(5, service.aclose(), f"{what} did not return within 5 s")


@pytest.mark.asyncio
@pytest.mark.exercise("5.3")
async def test_service_answers_and_writes_one_line_per_request(ex, monkeypatch):
    """handle('a'), ('b'), ('c') answer 'A', 'B', 'C'; sink gets 'a -> A', 'b -> B', 'c -> C'."""
    async with _Cleanup():
        lookup = _Lookup()
        monkeypatch.setattr(ex, "lookup", lookup)
        sink = _Sink()
        service = await _started(ex, sink)
        answers = [await _within(5, service.handle(r), f"handle({r!r}) hung") for r in "abc"]
        assert answers == ["A", "B", "C"], f"handle() answered {answers}, expected lookup()'s"
        assert lookup.calls == 3, f"lookup() was called {lookup.calls} times for 3 requests"
        await sink.wait_calls(3, "3 requests")
        assert sink.lines == ["a -> A", "b -> B", "c -> C"], f"sink got {sink.lines}"
        outcome = await _close(service)
        assert outcome == ("returned", None), f"aclose() {_said(outcome)}, expected None"


@pytest.mark.asyncio
@pytest.mark.exercise("5.3")
async def test_service_never_blocks_the_loop(ex, monkeypatch):
    """4 requests at once, lookup() blocking 0.3 s each: it runs off the loop's thread."""
    async with _Cleanup() as tasks:
        lookup = _Lookup(block_s=0.3)
        monkeypatch.setattr(ex, "lookup", lookup)
        service = await _started(ex, _Sink())
        lags: list[float] = []

        async def probe() -> None:  # how late the loop ran: for the hint, not a bound
            loop = asyncio.get_running_loop()
            while True:
                due = loop.time() + 0.01
                await asyncio.sleep(0.01)
                lags.append(loop.time() - due)

        tasks.start(probe())
        await asyncio.sleep(0.05)
        handled = asyncio.gather(*(service.handle(f"r{i}") for i in range(4)))
        answers = await _within(10, handled, "4 requests took over 10 s")
        await asyncio.sleep(0.05)
        assert answers == ["R0", "R1", "R2", "R3"], f"handle() answered {answers}"
        assert lookup.on_loop_thread == 0, (
            f"blocked: lookup() ran on the loop's thread {lookup.on_loop_thread} times of "
            f"{lookup.calls} (the loop ran up to {max(lags, default=0):.2f} s late): "
            "call it in a worker thread (asyncio.to_thread)"
        )
        assert lookup.calls == 4, f"lookup() was called {lookup.calls} times for 4 requests"
        await _close(service)


@pytest.mark.asyncio
@pytest.mark.exercise("5.3")
async def test_service_leaves_no_task_after_aclose(ex, monkeypatch):
    """A sink that hangs: after aclose() no task of the service is left running."""
    async with _Cleanup() as tasks:
        monkeypatch.setattr(ex, "lookup", _Lookup())
        sink = _Sink(hang=True)
        service = await _started(ex, sink)
        await _within(5, service.handle("a"), "handle('a') hung")
        await _within(5, sink.hanging.wait(), "the line never reached sink: is a writer running?")
        outcome = await _close(service)
        left = tasks.leftovers()
        assert not left, (
            f"left running after aclose(): {_names(left)}: keep the task start() creates, "
            "cancel it in aclose() and await it"
        )
        assert outcome == ("returned", None), f"aclose() {_said(outcome)}, expected None"


@pytest.mark.asyncio
@pytest.mark.exercise("5.3")
async def test_service_aclose_cancelled_twice_still_waits_for_its_tasks(ex, monkeypatch):
    """aclose()'s caller is cancelled twice as it waits: CancelledError, and no task left."""
    async with _Cleanup() as tasks:
        monkeypatch.setattr(ex, "lookup", _Lookup())
        sink = _Sink(hang=True, cleanup_s=0.05)
        service = await _started(ex, sink)
        await _within(5, service.handle("a"), "handle('a') hung")
        await _within(5, sink.hanging.wait(), "the line never reached sink: is a writer running?")
        closer = tasks.start(service.aclose())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for _ in range(2):
            closer.cancel()
            await asyncio.sleep(0)
        await asyncio.wait({closer}, timeout=5)
        assert closer.done(), "cancelled twice, aclose() did not end within 5 s"
        left = tasks.leftovers()
        assert not left, (
            f"still running when the cancelled aclose() ended: {_names(left)}: wait for the "
            "task until it has ended, even when cancelled, then raise"
        )
        _raise_if_failed(closer)
        assert closer.cancelled(), (
            "swallowed: aclose()'s caller was cancelled, and aclose() returned; re-raise the "
            "CancelledError when the caller is cancelling()"
        )


@pytest.mark.asyncio
@pytest.mark.exercise("5.3")
async def test_service_surfaces_an_error_of_the_sink_from_aclose(ex, monkeypatch):
    """sink raises OSError at the 2nd line: aclose() raises that very OSError."""
    async with _Cleanup():
        monkeypatch.setattr(ex, "lookup", _Lookup())
        sink = _Sink(fail_at=2)
        service = await _started(ex, sink)
        for r in "abc":
            await _within(5, service.handle(r), f"handle({r!r}) hung")
        await sink.wait_calls(2, "3 requests")
        await asyncio.sleep(0.05)  # the writer ends with the error
        outcome = await _close(service)
        how, what = outcome
        if isinstance(what, BaseExceptionGroup):
            leaves = what.exceptions
        else:
            leaves = (what,)
        assert how == "raised" and sink.error in leaves, (
            f"lost: sink raised {sink.error!r} and aclose() {_said(outcome)}; let the error "
            "end the writer (not caught, not just logged) and come out of aclose()"
        )


@pytest.mark.asyncio
@pytest.mark.exercise("5.3")
async def test_service_handles_a_thousand_requests(ex, monkeypatch):
    """1,000 requests at once: 1,000 answers, 1,000 lines in sink, nothing left after aclose()."""
    async with _Cleanup() as tasks:
        lookup = _Lookup()
        monkeypatch.setattr(ex, "lookup", lookup)
        sink = _Sink()
        service = await _started(ex, sink)
        requests = [f"r{i}" for i in range(1000)]
        handled = asyncio.gather(*(service.handle(r) for r in requests))
        answers = await _within(30, handled, "1,000 requests took over 30 s")
        assert answers == [r.upper() for r in requests], "1,000 requests: wrong answers"
        assert lookup.calls == 1000, f"lookup() was called {lookup.calls} times for 1,000"
        await sink.wait_calls(1000, "1,000 requests")
        counts = collections.Counter(sink.lines)
        expected = collections.Counter(f"{r} -> {r.upper()}" for r in requests)
        assert counts == expected, (
            f"1,000 requests: sink got {len(sink.lines)} lines, {len(counts)} different, "
            "expected each request's line once"
        )
        outcome = await _close(service)
        assert outcome == ("returned", None), f"aclose() {_said(outcome)}, expected None"
        left = tasks.leftovers()
        assert not left, f"left running after aclose(): {_names(left)}"
