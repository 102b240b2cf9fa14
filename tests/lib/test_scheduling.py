"""course_lib.scheduling: PriorityTaskPool, InterleavedWRR, SmoothWRR, WeightedDispatcher,
TokenBucket."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import sys
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.scheduling import (
    InterleavedWRR,
    PriorityTaskPool,
    SmoothWRR,
    TenantStats,
    TokenBucket,
    WeightedDispatcher,
)

LOGGER = "course_lib.wrr"  # WeightedDispatcher lives there


def now() -> float:
    return asyncio.get_running_loop().time()


class Recorder:
    """Jobs that note when they start and end, and how many run at once."""

    def __init__(self) -> None:
        self.started: list[tuple[str, float]] = []
        self.log: list[str] = []
        self.running = 0
        self.max_running = 0

    async def job(self, label: str, duration_s: float = 0.0, *, fail: bool = False):
        self.started.append((label, now()))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(duration_s)
            if fail:
                raise ValueError(f"{label} failed")
            return label
        except asyncio.CancelledError:
            self.log.append(f"{label} cancelled at {now():g}")
            raise
        finally:
            self.running -= 1
            self.log.append(f"{label} finally")

    @property
    def order(self) -> list[str]:
        return [label for label, _ in self.started]


# --- PriorityTaskPool: bounds and order ---------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_pool_never_runs_more_than_concurrency_jobs_at_once():
    rec = Recorder()
    async with PriorityTaskPool(3) as pool:
        futures = [pool.submit(rec.job(f"j{i}", 1 + i % 4)) for i in range(20)]
        assert pool.queued == 20 and pool.running == 0  # workers start at the next step
        await asyncio.sleep(0)
        assert pool.running == 3 and pool.queued == 17
        assert await asyncio.gather(*futures) == [f"j{i}" for i in range(20)]
    assert rec.max_running == 3
    free_at = [0, 0, 0]  # list scheduling: each job starts on the first slot to free up
    for i in range(20):
        free_at.sort()
        free_at[0] += 1 + i % 4
    assert now() == max(free_at)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_pool_runs_lower_priority_numbers_first():
    rec = Recorder()
    async with PriorityTaskPool(1) as pool:
        for label, priority in [("c", 3), ("a", -1), ("d", 7.5), ("b", 0)]:
            pool.submit(rec.job(label, 1), priority=priority)
    assert rec.order == ["a", "b", "c", "d"]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_pool_runs_equal_priorities_in_submission_order():
    rec = Recorder()
    async with PriorityTaskPool(2) as pool:
        for i in range(10):
            pool.submit(rec.job(f"{i}", 1), priority=i % 2)
    assert rec.order == ["0", "2", "4", "6", "8", "1", "3", "5", "7", "9"]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_new_urgent_job_overtakes_queued_ones_but_not_running_ones():
    rec = Recorder()
    async with PriorityTaskPool(1) as pool:
        pool.submit(rec.job("long", 10), priority=9)
        await asyncio.sleep(0)  # it starts
        pool.submit(rec.job("queued", 1), priority=5)
        await asyncio.sleep(1)
        pool.submit(rec.job("urgent", 1), priority=0)
    assert rec.started == [("long", 0), ("urgent", 10), ("queued", 11)]


# --- aging --------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_aging_lets_an_old_job_overtake_urgent_ones_submitted_aging_s_per_level_later():
    # aging_s=10: the priority-5 job submitted at t=0 ranks like a priority-0 job
    # submitted at t=50. Urgent jobs come at t=1..60 while a blocker holds the only
    # slot until t=100; they then start in the order of the static key
    # priority * aging_s + submitted_at: 1..49, the old job (50, first on the tie), 50...
    rec = Recorder()
    async with PriorityTaskPool(1, aging_s=10) as pool:
        pool.submit(rec.job("blocker", 100), priority=-100)
        pool.submit(rec.job("old", 0), priority=5)
        for k in range(1, 61):
            await asyncio.sleep(1)
            assert now() == k
            pool.submit(rec.job(f"u{k}", 0), priority=0)
    expected = ["blocker", *(f"u{k}" for k in range(1, 50)), "old",
                *(f"u{k}" for k in range(50, 61))]
    assert rec.order == expected
    assert all(t == 100 for label, t in rec.started if label != "blocker")


async def _starvation(aging_s: float | None) -> float:
    """One slot, 1 s jobs; a priority-3 job waits while a priority-0 job arrives every
    second (at 0.5, 1.5, ... 29.5). Returns when the priority-3 job started."""
    rec = Recorder()
    async with PriorityTaskPool(1, aging_s=aging_s) as pool:
        pool.submit(rec.job("patient", 1), priority=3)
        pool.submit(rec.job("u0", 1), priority=0)
        await asyncio.sleep(0.5)
        for k in range(30):
            pool.submit(rec.job(f"u{k + 0.5}", 1), priority=0)
            await asyncio.sleep(1)
    return dict(rec.started)["patient"]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_without_aging_a_stream_of_urgent_jobs_starves_a_low_priority_one():
    assert await _starvation(aging_s=None) == 31  # only once the stream has stopped


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_aging_cures_starvation_at_the_time_the_formula_gives():
    # Key of the patient job: 3 * 5 + 0 = 15. At each whole second t the slot frees and
    # the queue holds the patient job and the urgent one from t - 0.5 (key t - 0.5):
    # the urgent one wins while t - 0.5 < 15, so the patient job starts at t = 16.
    assert await _starvation(aging_s=5) == 16


# --- cancellation -------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cancelling_a_queued_job_closes_its_coroutine_and_it_never_starts():
    rec = Recorder()
    async with PriorityTaskPool(1) as pool:
        pool.submit(rec.job("blocker", 5))
        coro = rec.job("queued")
        future = pool.submit(coro)
        await asyncio.sleep(1)
        assert future.cancel("not needed") is True
        assert future.cancelled()  # at once: nothing ran, nothing to clean up
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # no "never awaited"
        assert pool.queued == 0
        assert future.cancel() is False
    assert rec.order == ["blocker"]
    with pytest.raises(asyncio.CancelledError, match="not needed"):
        future.result()


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_cancelled_queued_callable_is_never_called():
    calls = []
    async with PriorityTaskPool(1) as pool:
        pool.submit(asyncio.sleep(1))
        future = pool.submit(lambda: calls.append("called"))
        future.cancel()
    assert calls == []


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cancelling_a_running_job_runs_its_cleanup_and_the_worker_goes_on():
    rec = Recorder()
    async with PriorityTaskPool(1) as pool:
        running = pool.submit(rec.job("running", 100))
        after = pool.submit(rec.job("after", 1))
        await asyncio.sleep(1)
        assert running.cancel() is True
        assert not running.done()  # like Task.cancel(): a request, the job decides
        await asyncio.wait({running})
        assert running.cancelled()
        assert rec.log == ["running cancelled at 1", "running finally"]
        assert await after == "after"
    assert now() == 2


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_running_job_that_suppresses_the_cancel_keeps_its_result():
    async def stubborn():
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            await asyncio.sleep(1)
            return "finished anyway"

    async with PriorityTaskPool(1) as pool:
        future = pool.submit(stubborn)
        next_job = pool.submit(asyncio.sleep(1, "next"))
        await asyncio.sleep(0)
        future.cancel()
        assert await future == "finished anyway"
        assert await next_job == "next"  # the worker holds no stale cancel
    assert now() == 2


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_job_whose_cleanup_fails_after_cancel_reports_that_failure():
    async def broken_cleanup():
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            raise OSError("could not release the lock") from None

    async with PriorityTaskPool(1) as pool:
        future = pool.submit(broken_cleanup())
        await asyncio.sleep(0)
        future.cancel()
        with pytest.raises(OSError, match="could not release"):
            await future


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_timeout_around_awaiting_a_job_cancels_the_job():
    rec = Recorder()
    async with PriorityTaskPool(1) as pool:
        future = pool.submit(rec.job("slow", 100))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(3):
                await future
        assert future.cancelled()
        assert rec.log == ["slow cancelled at 3", "slow finally"]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_job_that_cancels_itself_and_returns_does_not_cancel_the_next_job():
    futures: list[asyncio.Future] = []

    async def self_cancelling():
        futures[0].cancel()  # arms a cancel on the worker, then returns without awaiting
        return "returned"

    async with PriorityTaskPool(1) as pool:
        futures.append(pool.submit(self_cancelling))
        second = pool.submit(asyncio.sleep(1, "second"))
        assert await futures[0] == "returned"
        assert await second == "second"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_worker_cancelled_from_outside_shuts_the_pool_down():
    rec = Recorder()
    pool = PriorityTaskPool(2, name="p")
    running = [pool.submit(rec.job(f"r{i}", 100)) for i in range(2)]
    queued_coro = rec.job("queued")
    queued = pool.submit(queued_coro)
    await asyncio.sleep(1)
    workers = [t for t in asyncio.all_tasks() if t.get_name().startswith("p-worker-")]
    assert len(workers) == 2
    workers[0].cancel()  # as asyncio.run() does to every task left at exit
    await asyncio.wait([*running, queued])
    assert all(f.cancelled() for f in [*running, queued])
    assert inspect.getcoroutinestate(queued_coro) == inspect.CORO_CLOSED
    assert "closing" in repr(pool)
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(asyncio.sleep(0))
    await pool.join()
    assert pool.running == pool.queued == 0


# --- results and errors -------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_failing_job_puts_its_exception_on_its_future_and_the_worker_survives():
    rec = Recorder()
    async with PriorityTaskPool(1) as pool:
        bad = pool.submit(rec.job("bad", 1, fail=True))
        good = pool.submit(rec.job("good", 1))
        with pytest.raises(ValueError, match="bad failed"):
            await bad
        assert await good == "good"


@pytest.mark.asyncio
async def test_a_callable_is_called_when_its_job_starts_and_its_errors_reach_the_future():
    calls: list[str] = []

    def factory():
        calls.append("called")
        return asyncio.sleep(0, "made")

    def raises():
        raise KeyError("at call time")

    pool = PriorityTaskPool(1)
    made = pool.submit(factory, name="factory")
    assert calls == []  # not yet: called by the worker
    failing = pool.submit(raises)
    not_awaitable = pool.submit(lambda: 42)
    assert await made == "made"
    with pytest.raises(KeyError, match="at call time"):
        await failing
    with pytest.raises(TypeError, match="await"):
        await not_awaitable
    await pool.close()


@pytest.mark.asyncio
@pytest.mark.allow_asyncio_errors
async def test_an_exception_nobody_retrieves_is_reported_by_asyncio(caplog):
    async def boom():
        raise ValueError("nobody looked")

    pool = PriorityTaskPool(1)
    pool.submit(boom())  # the future is dropped at once
    await pool.join()
    import gc

    gc.collect()
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any("exception was never retrieved" in m for m in messages)


# --- join, close, submit after close, repr -------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_join_waits_for_queued_running_and_newly_submitted_jobs():
    rec = Recorder()
    pool = PriorityTaskPool(2)
    await pool.join()  # an empty pool is idle at once

    async def spawner():
        await asyncio.sleep(2)
        pool.submit(rec.job("late", 5))

    pool.submit(spawner())
    pool.submit(rec.job("a", 1))
    pool.submit(rec.job("b", 3))
    await pool.join()
    assert now() == 7
    assert sorted(rec.order) == ["a", "b", "late"]
    await pool.close()
    assert "closed" in repr(pool)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_leaving_the_block_finishes_queued_jobs():
    rec = Recorder()
    async with PriorityTaskPool(2) as pool:
        futures = [pool.submit(rec.job(f"j{i}", 1)) for i in range(5)]
    assert now() == 3
    assert [f.result() for f in futures] == [f"j{i}" for i in range(5)]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_close_with_cancel_pending_cancels_queued_and_running_jobs_and_awaits_cleanup():
    rec = Recorder()
    pool = PriorityTaskPool(1)
    running = pool.submit(rec.job("running", 100))
    queued_coro = rec.job("queued")
    queued = pool.submit(queued_coro)
    await asyncio.sleep(1)
    await pool.close(cancel_pending=True)
    assert running.cancelled() and queued.cancelled()
    assert rec.log == ["running cancelled at 1", "running finally"]
    assert inspect.getcoroutinestate(queued_coro) == inspect.CORO_CLOSED
    assert repr(pool) == "<PriorityTaskPool 'pool' closed, 0/1 running, 0 queued>"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_failing_body_cancels_the_pools_jobs():
    rec = Recorder()
    with pytest.raises(KeyError):
        async with PriorityTaskPool(1) as pool:
            running = pool.submit(rec.job("running", 100))
            queued = pool.submit(rec.job("queued", 1))
            await asyncio.sleep(1)
            raise KeyError("body failed")
    assert running.cancelled() and queued.cancelled()
    assert now() == 1


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_cancelled_close_cancels_what_is_left_and_propagates():
    rec = Recorder()
    pool = PriorityTaskPool(1)
    running = pool.submit(rec.job("running", 100))
    closer = asyncio.create_task(pool.close())
    await asyncio.sleep(1)
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    await asyncio.wait({running})
    assert running.cancelled()


@pytest.mark.asyncio
async def test_submitting_to_a_closed_pool_raises_and_closes_the_coroutine():
    pool = PriorityTaskPool(1)
    await pool.close()
    coro = asyncio.sleep(1)
    with pytest.raises(RuntimeError, match=r"closed: it accepts no new jobs \(refused 'tick'\)"):
        pool.submit(coro, name="tick")
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    with pytest.raises(RuntimeError, match="cannot be entered again"):
        async with pool:
            pass


def test_submitting_outside_a_running_loop_raises_and_closes_the_coroutine():
    coro = asyncio.sleep(1)
    with pytest.raises(RuntimeError, match="needs a running event loop"):
        PriorityTaskPool(1).submit(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": True}, "concurrency"),
        ({"concurrency": 2.0}, "concurrency"),
        ({"concurrency": 1, "aging_s": 0}, "aging_s"),
        ({"concurrency": 1, "aging_s": math.inf}, "aging_s"),
    ],
)
def test_pool_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PriorityTaskPool(**kwargs)


@pytest.mark.asyncio
async def test_submit_refuses_bad_work_and_bad_priorities():
    pool = PriorityTaskPool(1)
    with pytest.raises(TypeError, match="coroutine or a zero-argument callable"):
        pool.submit(asyncio.ensure_future(asyncio.sleep(0)))
    coro = asyncio.sleep(0)
    with pytest.raises(ValueError, match="NaN"):
        pool.submit(coro, priority=math.nan)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    await asyncio.sleep(0)  # let the ensure_future task above end


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_repr_shows_state_running_and_queued_jobs():
    rec = Recorder()
    pool = PriorityTaskPool(2, aging_s=2.5, name="thumbs")
    futures = [pool.submit(rec.job(f"j{i}", 1), name=f"j{i}", priority=i) for i in range(5)]
    await asyncio.sleep(0)
    assert repr(pool) == "<PriorityTaskPool 'thumbs' open, 2/2 running, 3 queued, aging_s=2.5>"
    assert repr(futures[0]) == "<Job 'j0' priority=0 running>"
    assert repr(futures[4]) == "<Job 'j4' priority=4 queued>"
    futures[4].cancel()
    assert repr(futures[4]) == "<Job 'j4' priority=4 cancelled>"
    await pool.close()
    assert repr(futures[0]) == "<Job 'j0' priority=0 done>"
    assert repr(pool) == "<PriorityTaskPool 'thumbs' closed, 0/2 running, 0 queued, aging_s=2.5>"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_cancelled_queued_jobs_do_not_pile_up_in_the_queue():
    pool = PriorityTaskPool(1)
    pool.submit(asyncio.sleep(10))
    await asyncio.sleep(0)  # it starts
    futures = [pool.submit(asyncio.sleep(0)) for _ in range(1000)]
    for future in futures[:900]:
        future.cancel()
    assert pool.queued == 100
    assert sum(map(len, pool._buckets.values())) < 300  # rebuilt once most were dead
    await pool.close()
    assert all(f.done() for f in futures)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager_task_factory: 3.12+")
@pytest.mark.asyncio
@pytest.mark.looptime
async def test_pool_works_under_an_eager_task_factory():
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)
    try:
        async def instant():
            return "eager"

        rec = Recorder()
        async with PriorityTaskPool(2) as pool:
            done_at_once = pool.submit(instant())
            assert done_at_once.done()  # ran inside submit(): that is what eager means
            futures = [pool.submit(rec.job(f"j{i}", 1), priority=-i) for i in range(4)]
        assert rec.max_running == 2
        assert [f.result() for f in futures] == ["j0", "j1", "j2", "j3"]
        assert rec.order == ["j0", "j1", "j3", "j2"]  # j0, j1 started eagerly
    finally:
        loop.set_task_factory(None)


# --- weighted round robin -----------------------------------------------------------

weights_st = st.dictionaries(
    st.sampled_from("abcdefgh"), st.integers(min_value=1, max_value=30), min_size=1
)


def test_smooth_wrr_gives_nginxs_sequence():
    assert "".join(SmoothWRR({"a": 5, "b": 1, "c": 1}).take(14)) == "aabacaa" * 2


def test_interleaved_wrr_gives_the_lvs_sequence():
    # current weight 4: a; 3: a, b; 2: a, b, c; 1: a, b, c
    assert "".join(InterleavedWRR({"a": 4, "b": 3, "c": 2}).take(18)) == "aababcabc" * 2
    # gcd 2: current weight 6, 4, 2; a cycle is (6 + 4 + 2) / 2 = 6 picks
    assert "".join(InterleavedWRR({"a": 6, "b": 4, "c": 2}).take(6)) == "aababc"


@settings(max_examples=200, deadline=None)
@given(weights_st)
def test_smooth_wrr_serves_each_key_exactly_its_weight_per_cycle_of_sum_weights(weights):
    cycle = sum(weights.values())
    picks = SmoothWRR(weights).take(3 * cycle)
    assert Counter(picks[:cycle]) == weights
    assert picks[:cycle] == picks[cycle : 2 * cycle] == picks[2 * cycle :]


@settings(max_examples=200, deadline=None)
@given(weights_st)
def test_interleaved_wrr_serves_each_key_weight_over_gcd_times_per_cycle(weights):
    gcd = math.gcd(*weights.values())
    cycle = sum(weights.values()) // gcd
    picks = InterleavedWRR(weights).take(2 * cycle)
    assert Counter(picks[:cycle]) == {k: w // gcd for k, w in weights.items()}
    assert picks[:cycle] == picks[cycle:]


@settings(max_examples=200, deadline=None)
@given(weights_st)
def test_smooth_wrr_never_runs_a_whole_pick_ahead_of_any_keys_share(weights):
    # count - t*w/W = -current/W. Current weights sum to 0 and stay above -W (the key
    # picked had the largest, at least W/n > 0, before paying W): a key is never a
    # whole pick ahead of its share, and lags it by less than n - 1 picks (less than
    # one with two keys). More than one is possible: {19,1,19,1,19} lags 1.02 picks.
    total, n = sum(weights.values()), len(weights)
    counts = dict.fromkeys(weights, 0)
    for t, key in enumerate(SmoothWRR(weights).take(total), start=1):
        counts[key] += 1
        for k, w in weights.items():
            ahead = counts[k] - t * w / total
            assert -max(1, n - 1) < ahead < 1


def test_smooth_wrr_can_lag_a_share_by_more_than_one_pick():
    weights = {"a": 19, "b": 1, "c": 19, "d": 1, "e": 19}
    picks = SmoothWRR(weights).take(28)
    assert 28 * 19 / 59 - picks.count("e") > 1


def test_interleaved_wrr_restarts_its_cycle_on_any_change():
    wrr = InterleavedWRR({"a": 3, "b": 1})
    assert wrr.take(2) == ["a", "a"]
    wrr.add("c", 2)  # a new round at the largest weight: a; then a, c; then a, b, c
    assert "".join(wrr.take(6)) == "aacabc"
    wrr.set_weight("a", 1)
    assert "".join(wrr.take(4)) == "cabc"  # current weight 2: only c; then 1: a, b, c
    wrr.remove("c")
    assert "".join(wrr.take(4)) == "abab"


def test_smooth_wrr_keeps_current_weights_across_changes_and_new_keys_start_at_zero():
    wrr = SmoothWRR({"a": 5, "b": 1, "c": 1})
    assert wrr.take(2) == ["a", "a"]
    assert wrr.current_weights == {"a": -4, "b": 2, "c": 2}
    wrr.add("d", 3)
    assert wrr.current_weights == {"a": -4, "b": 2, "c": 2, "d": 0}
    wrr.set_weight("b", 4)
    assert wrr.current_weights["b"] == 2
    assert wrr.take(1) == ["b"]  # 2 + 4 beats c's 3 and d's 3
    wrr.remove("b")
    assert wrr.current_weights == {"a": 1, "c": 3, "d": 3}  # b's debt left with it
    assert "b" not in wrr and len(wrr) == 3


@pytest.mark.parametrize("wrr_class", [SmoothWRR, InterleavedWRR])
@pytest.mark.parametrize("weight", [0, -2, 1.5, 2.0, True, "3", None])
def test_wrr_refuses_a_weight_that_is_not_a_positive_integer(wrr_class, weight):
    message = f"the weight of 'x' must be a positive integer, not {weight!r}"
    with pytest.raises(ValueError, match=f"^{message.replace('(', '.').replace(')', '.')}$"):
        wrr_class({"a": 1, "x": weight})
    wrr = wrr_class({"a": 1})
    with pytest.raises(ValueError, match="weight of 'x'"):
        wrr.add("x", weight)
    with pytest.raises(ValueError, match="weight of 'a'"):
        wrr.set_weight("a", weight)
    assert wrr.weights == {"a": 1}


@pytest.mark.parametrize("wrr_class", [SmoothWRR, InterleavedWRR])
def test_an_empty_wrr_raises_lookup_error_instead_of_spinning(wrr_class):
    with pytest.raises(LookupError, match="no keys"):
        next(wrr_class())
    wrr = wrr_class({"a": 2})
    wrr.remove("a")
    with pytest.raises(LookupError, match="no keys"):
        wrr.take(1)
    wrr.add("b", 1)
    assert wrr.take(2) == ["b", "b"]


@pytest.mark.parametrize("wrr_class", [SmoothWRR, InterleavedWRR])
def test_wrr_add_remove_and_set_weight_refuse_unknown_or_duplicate_keys(wrr_class):
    wrr = wrr_class({"a": 1})
    with pytest.raises(ValueError, match="already in"):
        wrr.add("a", 2)
    with pytest.raises(KeyError):
        wrr.remove("zz")
    with pytest.raises(KeyError):
        wrr.set_weight("zz", 1)
    with pytest.raises(ValueError, match="n >= 0"):
        wrr.take(-1)
    assert repr(wrr) == f"{wrr_class.__name__}({{'a': 1}})"
    assert next(iter(wrr)) == "a"


# --- WeightedDispatcher ---------------------------------------------------------------


class Served:
    def __init__(self, duration_s: float = 1.0) -> None:
        self.duration_s = duration_s
        self.starts: list[tuple[str, float]] = []

    async def __call__(self, tenant: str, item: object) -> None:
        self.starts.append((tenant, now()))
        await asyncio.sleep(self.duration_s)

    def sequence(self, start_s: float = 0, end_s: float = math.inf) -> str:
        return "".join(tenant for tenant, t in self.starts if start_s <= t < end_s)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_dispatcher_gives_busy_tenants_slots_in_proportion_to_their_weights():
    served = Served()
    async with WeightedDispatcher({"a": 3, "b": 1}, served, concurrency=4) as d:
        for i in range(60):
            await d.put("a", i)
            await d.put("b", i)
        await asyncio.sleep(9.5)  # 10 rounds of 4 started, 9 ended
        stats = d.stats()
        assert stats["a"] == TenantStats(weight=3, queued=30, served=27, failed=0)
        assert stats["b"] == TenantStats(weight=1, queued=50, served=9, failed=0)
        await d.close()  # serves the 80 left
    for second in range(10):  # every second, every slot: 3 to a, 1 to b
        assert Counter(served.sequence(second, second + 1)) == {"a": 3, "b": 1}
    assert served.sequence(0, 2) == "aaba" * 2
    assert d.stats()["b"].served == 60


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_an_idle_tenant_earns_no_credit_and_gets_its_share_back_when_it_returns():
    served = Served()
    async with WeightedDispatcher({"a": 1, "b": 1}, served, concurrency=1) as d:
        for i in range(30):
            await d.put("a", i)
        await asyncio.sleep(9.5)  # b idle for 10 slots: no credit piles up for it
        for i in range(5):
            await d.put("b", i)
    assert served.sequence(0, 10) == "a" * 10
    assert served.sequence(10, 20) == "ab" * 5  # its share, not a burst of b
    assert served.sequence(20) == "a" * 15


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_failing_handler_is_logged_and_counted_and_the_worker_goes_on(caplog):
    async def handler(tenant, item):
        await asyncio.sleep(1)
        if item == "bad":
            raise ValueError("bad item")

    async with WeightedDispatcher({"a": 1}, handler, name="d") as d:
        for item in ["ok", "bad", "ok"]:
            await d.put("a", item)
    assert d.stats()["a"] == TenantStats(weight=1, queued=0, served=3, failed=1)
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "handler failed on an item of 'a'" in errors[0].getMessage()
    assert now() == 3


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_dispatcher_close_serves_every_queued_item_then_refuses_new_ones():
    served = Served()
    d = WeightedDispatcher({"a": 2, "b": 1}, served, concurrency=2)
    for i in range(3):
        await d.put("a", i)
        await d.put("b", i)
    await d.close()  # never run: close() serves the queues itself
    assert now() == 3
    assert sorted(served.sequence()) == sorted("aaabbb")
    with pytest.raises(RuntimeError, match="closed"):
        await d.put("a", 9)
    with pytest.raises(KeyError, match="no tenant 'zz'"):
        await d.put("zz", 1)
    assert repr(d) == "<WeightedDispatcher 'dispatcher' closed, 0 queued, concurrency 2>"


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_put_waits_for_room_when_a_tenants_queue_is_full():
    served = Served()
    async with WeightedDispatcher({"a": 1}, served, maxsize=2) as d:
        put_at = []
        for i in range(5):
            await d.put("a", i)
            put_at.append(now())
    # the worker takes item 0 at once; 1 and 2 fill the queue; 3 and 4 wait a slot each
    assert put_at == [0, 0, 0, 1, 2]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_failing_body_stops_the_dispatcher_without_serving_the_rest():
    served = Served()
    with pytest.raises(KeyError):
        async with WeightedDispatcher({"a": 1}, served) as d:
            for i in range(5):
                await d.put("a", i)
            await asyncio.sleep(1.5)
            raise KeyError("body failed")
    assert served.sequence() == "aa"
    assert d.stats()["a"].queued == 3


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_put_waiting_for_room_is_refused_when_the_dispatcher_stops():
    d = WeightedDispatcher({"a": 1}, Served(), maxsize=1)
    await d.put("a", 1)
    waiting = asyncio.create_task(d.put("a", 2))
    await asyncio.sleep(1)
    assert not waiting.done()
    runner = asyncio.create_task(d.run())
    await asyncio.sleep(0.5)  # run() took item 1: item 2 got in
    await waiting
    waiting = asyncio.create_task(d.put("a", 3))
    await asyncio.sleep(0)
    runner.cancel()
    with pytest.raises(RuntimeError, match="closed: refused an item for 'a'"):
        await waiting
    with pytest.raises(asyncio.CancelledError):
        await runner


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_handler_cannot_close_its_own_dispatcher():
    errors = []

    async def handler(tenant, item):
        try:
            await d.close()
        except RuntimeError as exc:
            errors.append(str(exc))

    async with WeightedDispatcher({"a": 1}, handler) as d:
        await d.put("a", 1)
    assert len(errors) == 1 and "cannot close its own dispatcher" in errors[0]


def test_dispatcher_refuses_bad_settings():
    with pytest.raises(ValueError, match="at least one tenant"):
        WeightedDispatcher({}, Served())
    with pytest.raises(ValueError, match="weight of 'a'"):
        WeightedDispatcher({"a": 0}, Served())
    with pytest.raises(ValueError, match="concurrency"):
        WeightedDispatcher({"a": 1}, Served(), concurrency=0)
    with pytest.raises(ValueError, match="maxsize"):
        WeightedDispatcher({"a": 1}, Served(), maxsize=-1)


# --- TokenBucket ----------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_bucket_starts_full_then_grants_at_the_rate_exactly():
    bucket = TokenBucket(rate_per_s=2, capacity=4)
    times = []
    for n in [1, 1, 2, 1, 2, 4]:
        await bucket.acquire(n)
        times.append(now())
    assert times == [0, 0, 0, 0.5, 1.5, 3.5]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_bucket_refills_up_to_capacity_and_no_further():
    bucket = TokenBucket(rate_per_s=1, capacity=3)
    await bucket.acquire(3)
    await asyncio.sleep(100)
    assert bucket.tokens == 3
    await bucket.acquire(3)
    assert now() == 100


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_bucket_serves_waiters_in_order_a_big_head_blocks_smaller_later_ones():
    bucket = TokenBucket(rate_per_s=1, capacity=5)
    await bucket.acquire(5)
    granted: list[tuple[str, float]] = []

    async def want(label: str, n: int) -> None:
        await bucket.acquire(n)
        granted.append((label, now()))

    async with asyncio.TaskGroup() as tg:
        tg.create_task(want("big", 4))
        await asyncio.sleep(0)
        tg.create_task(want("small", 1))  # would fit at t=1, but waits its turn
        await asyncio.sleep(0)
        assert bucket.try_acquire() is False  # nor does try_acquire jump the queue
    assert granted == [("big", 4), ("small", 5)]


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_try_acquire_takes_tokens_only_when_there_are_enough():
    bucket = TokenBucket(rate_per_s=10, capacity=2)
    assert bucket.try_acquire(2) is True
    assert bucket.try_acquire() is False
    await asyncio.sleep(0.1)
    assert bucket.try_acquire() is True
    assert bucket.try_acquire() is False


@pytest.mark.asyncio
@pytest.mark.parametrize("n", [0, -1, 3, math.inf])
async def test_bucket_refuses_requests_it_could_never_grant(n):
    bucket = TokenBucket(rate_per_s=1, capacity=2)
    with pytest.raises(ValueError, match=r"0 < n <= capacity=2"):
        await bucket.acquire(n)
    with pytest.raises(ValueError, match=r"0 < n <= capacity=2"):
        bucket.try_acquire(n)


@pytest.mark.parametrize(("rate", "capacity"), [(0, 1), (-1, 1), (math.inf, 1), (1, 0)])
def test_bucket_refuses_bad_settings(rate, capacity):
    with pytest.raises(ValueError, match=r"rate_per_s|capacity"):
        TokenBucket(rate, capacity)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_cancelled_waiter_leaves_the_queue_and_takes_no_tokens():
    bucket = TokenBucket(rate_per_s=1, capacity=4)
    await bucket.acquire(4)
    big = asyncio.create_task(bucket.acquire(4))
    await asyncio.sleep(0)
    small = asyncio.create_task(bucket.acquire(1))
    await asyncio.sleep(2.5)
    big.cancel()  # the head leaves: small fits in the 2.5 tokens there now
    with pytest.raises(asyncio.CancelledError):
        await big
    await small
    assert now() == 2.5
    assert bucket.tokens == 1.5
    assert "0 waiting" in repr(bucket)


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_waiter_cancelled_just_after_its_grant_gives_the_tokens_back():
    bucket = TokenBucket(rate_per_s=1, capacity=4)
    await bucket.acquire(4)
    await asyncio.sleep(1.5)
    head = asyncio.create_task(bucket.acquire(4))
    await asyncio.sleep(0)
    second = asyncio.create_task(bucket.acquire(1))
    await asyncio.sleep(0)
    head.cancel()
    await asyncio.sleep(0)  # head's cleanup ran: second got its token...
    assert bucket.tokens == 0.5
    second.cancel()  # ...but is cancelled before it could resume
    with pytest.raises(asyncio.CancelledError):
        await second
    assert bucket.tokens == 1.5  # given back


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_cancelled_middle_waiter_does_not_disturb_the_others():
    bucket = TokenBucket(rate_per_s=1, capacity=2)
    await bucket.acquire(2)
    tasks = [asyncio.create_task(bucket.acquire(1)) for _ in range(3)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    done_at = []
    for task in (tasks[0], tasks[2]):
        await task
        done_at.append(now())
    assert done_at == [1, 2]
    assert tasks[1].cancelled()


# --- the course's policy: a caller cancelled during cleanup -------------------------------


class _SlowCleanup:
    """A job whose cleanup takes 0.2 s after a cancel; notes what it got to do."""

    def __init__(self) -> None:
        self.log: list[str] = []

    async def job(self) -> None:
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            self.log.append(f"cancelled at {now():g}")
            await asyncio.sleep(0.2)  # cleanup that must not be cut short
            self.log.append(f"cleaned up at {now():g}")
            raise


@pytest.mark.asyncio
@pytest.mark.looptime
async def test_a_second_close_waits_for_the_cleanup_instead_of_cutting_it_short():
    slow = _SlowCleanup()
    pool = PriorityTaskPool(1)
    job = pool.submit(slow.job())
    await asyncio.sleep(0.01)
    first = asyncio.create_task(pool.close(cancel_pending=True))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(pool.close(cancel_pending=True))
    await asyncio.gather(first, second)
    assert slow.log == ["cancelled at 0.01", "cleaned up at 0.21"]
    assert job.cancelled()


@pytest.mark.asyncio
@pytest.mark.looptime
@pytest.mark.parametrize("cancels", [1, 2])
async def test_a_cancelled_close_still_waits_for_every_job_to_end(cancels):
    slow = _SlowCleanup()
    pool = PriorityTaskPool(1)
    job = pool.submit(slow.job())
    closer = asyncio.create_task(pool.close())
    await asyncio.sleep(1)
    for _ in range(cancels):
        closer.cancel()
        await asyncio.sleep(0.05)
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert job.done(), "close() raised while a job was still cleaning up"
    assert slow.log == ["cancelled at 1", "cleaned up at 1.2"]
    assert now() == pytest.approx(1.2)
