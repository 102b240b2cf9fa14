"""Grading tests for exercises 3.1-3.4 (notebooks/03_scheduling.ipynb).

3.1 and 3.2 are plain iterators, graded with hypothesis properties over many weights.
Each pick runs under a step limit (a count of the lines run in the graded module),
so that a round robin stuck in an endless loop, like the article's once its weights
are used up, fails with a message instead of freezing the check.

3.3 and 3.4 run on the virtual clock. Every task a test starts, and every task the
code under test leaves behind, is stopped at the end of the test's own body (fixture
teardown would run on the real clock); coroutines handed over and never started are
closed there too; every wait on the code under test has a virtual-time bound.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import sys
from collections import Counter
from fractions import Fraction
from typing import Any

import pytest
from _support import _async, _Cleanup, _outcome, _raise_if_failed, _said, _within
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

MODULE = "ch03_scheduling"

# Sync tests (3.1, 3.2) carry no asyncio mark (_async): pytest-asyncio warns about those.


# --- 3.1 and 3.2: the round robins ---------------------------------------------------------

# A pick of either algorithm runs a few dozen lines for the weights drawn here (LVS's
# at most two sweeps of the keys). The limits are generous to slow code, and still stop
# an endless loop within milliseconds: hypothesis then tries a few dozen smaller weights
# that fail the same way, and the whole check must stay well within its 15 s.
_STEPS_PER_PICK = 2_000
_STEPS_PER_TAKEN = 500

_PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every run: a check never flickers
    database=None,
    report_multiple_bugs=False,  # one failure, one message (not an ExceptionGroup)
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no explain phase: it traces too
    suppress_health_check=[HealthCheck.too_slow],
)


class _Spinning(BaseException):
    """Raised inside the graded code when it exceeds its step limit (BaseException, so that
    its `except Exception:` cannot swallow it)."""


class _StepLimit:
    """``with _StepLimit(ex) as limit:`` counts the lines run in the graded module's file;
    past ``limit.reset(steps)`` of them, _Spinning is raised inside that code."""

    def __init__(self, ex) -> None:
        self._filename = ex.__file__
        self._left = 0
        self._previous = None

    def reset(self, steps: int) -> None:
        self._left = steps

    def __enter__(self) -> _StepLimit:
        self._previous = sys.gettrace()
        sys.settrace(self._on_call)
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.settrace(self._previous)

    def _on_call(self, frame, event, arg):
        return self._on_line if frame.f_code.co_filename == self._filename else None

    def _on_line(self, frame, event, arg):
        if event == "line":
            self._left -= 1
            if self._left < 0:
                raise _Spinning
        return self._on_line


_SPINS = (
    "{what}: {when} ran {steps:,} lines without returning: it loops forever (are weights "
    "used up and never restored, as in the article?)"
)


def _make(ex, cls_name: str, weights: dict[str, int]):
    """``ex.<cls_name>(weights)``, under a step limit."""
    steps = _STEPS_PER_PICK * 10  # generous: the constructor runs once
    with _StepLimit(ex) as limit:
        limit.reset(steps)
        try:
            return getattr(ex, cls_name)(weights)
        except _Spinning:
            raise AssertionError(
                f"{cls_name}({weights!r}) ran {steps:,} lines without returning: the "
                "constructor loops forever"
            ) from None


def _picks(ex, wrr, n: int, what: str, steps: int = _STEPS_PER_PICK) -> list[Any]:
    """``n`` picks with ``next(wrr)``, each under a step limit."""
    picks: list[Any] = []
    with _StepLimit(ex) as limit:
        for _ in range(n):
            limit.reset(steps)
            try:
                picks.append(next(wrr))
            except _Spinning:
                when = f"pick {len(picks) + 1} (after {''.join(map(str, picks[-30:]))!r})"
                raise AssertionError(_SPINS.format(what=what, when=when, steps=steps)) from None
            except StopIteration:
                raise AssertionError(
                    f"{what}: next() raised StopIteration after {len(picks)} picks: the "
                    "sequence never ends, it starts the cycle over"
                ) from None
    return picks


def _take(ex, wrr, n: int, what: str) -> list[Any]:
    """``wrr.take(n)``, under a step limit."""
    steps = _STEPS_PER_PICK + _STEPS_PER_TAKEN * n
    with _StepLimit(ex) as limit:
        limit.reset(steps)
        try:
            got = wrr.take(n)
        except _Spinning:
            raise AssertionError(_SPINS.format(what=what, when=f"take({n})", steps=steps)) from None
    assert isinstance(got, list), f"{what}: take({n}) returned {got!r}, not a list"
    return got


def _show(picks: list[Any]) -> str:
    return "".join(map(str, picks)) if all(isinstance(p, str) for p in picks) else repr(picks)


_NAMES = "abcdefgh"


def _weights(max_keys: int, max_weight: int, *, min_keys: int = 1):
    """Weights for up to ``max_keys`` keys, inserted in a random order (not 'a' first)."""
    return st.lists(st.integers(1, max_weight), min_size=min_keys, max_size=max_keys).flatmap(
        lambda ws: st.permutations(_NAMES[: len(ws)]).map(
            lambda names: dict(zip(names, ws, strict=True))
        )
    )


def _with_common_factor(max_keys: int, max_weight: int):
    """Weights that often share a factor (a gcd above 1): {a: 6, b: 4} as well as {a: 3, b: 2}."""
    return st.tuples(_weights(max_keys, max_weight), st.integers(1, 4)).map(
        lambda wf: {k: w * wf[1] for k, w in wf[0].items()}
    )


def _assert_cycles(ex, cls_name: str, weights: dict[str, int], step: int, cycles: int) -> None:
    """Each cycle of sum(weights)/step picks has each key weight/step times."""
    what = f"{cls_name}({weights})"
    length = sum(weights.values()) // step
    picks = _picks(ex, _make(ex, cls_name, weights), cycles * length, what)
    expected = {k: w // step for k, w in weights.items()}
    for c in range(cycles):
        cycle = picks[c * length : (c + 1) * length]
        counts = dict(Counter(cycle))
        share = "its weight" if step == 1 else f"weight/gcd = weight/{step}"
        assert counts == expected, (
            f"{what}: picks {c * length + 1}-{(c + 1) * length} were {_show(cycle)!r}, "
            f"that is {counts}; expected {expected}, each key {share} times a cycle"
        )


def _assert_ties_go_first_to_the_first_inserted(ex, cls_name: str, weights: dict[str, int]):
    """Keys of equal weight alternate, the one inserted first leading: its j-th pick comes
    before the j-th pick of any key of the same weight inserted after it."""
    what = f"{cls_name}({weights})"
    picks = _picks(ex, _make(ex, cls_name, weights), 2 * sum(weights.values()), what)
    keys = list(weights)
    for i, first in enumerate(keys):
        for later in keys[i + 1 :]:
            if weights[first] != weights[later]:
                continue
            firsts = [j for j, p in enumerate(picks) if p == first]
            laters = [j for j, p in enumerate(picks) if p == later]
            assert all(f < s for f, s in zip(firsts, laters, strict=False)), (
                f"{what}: {later!r} came up before {first!r}, which has the same weight and "
                f"was inserted first ({_show(picks)!r}): a tie goes to the first inserted"
            )


def _assert_endless(ex, cls_name: str, weights: dict[str, int], period: int) -> None:
    what = f"{cls_name}({weights})"
    _picks(ex, _make(ex, cls_name, weights), 2 * period + 1, what)  # stuck? fail fast, pick by pick
    picks = _take(ex, _make(ex, cls_name, weights), 1000, what)
    assert len(picks) == 1000, f"{what}: take(1000) gave {len(picks)} picks"
    for j in range(period, 1000):
        assert picks[j] == picks[j - period], (
            f"{what}: pick {j + 1} was {picks[j]!r}, but pick {j + 1 - period}, one cycle "
            f"({period} picks) earlier, was {picks[j - period]!r}: every cycle is the same"
        )


def _assert_iterator(ex, cls_name: str, weights: dict[str, int], expected: str) -> None:
    what = f"{cls_name}({weights})"
    wrr = _make(ex, cls_name, weights)
    assert iter(wrr) is wrr, f"{what}: iter(wrr) is not wrr itself (__iter__ returns self)"
    first = _picks(ex, wrr, 2, what)
    middle = _take(ex, wrr, 3, what)
    last = _picks(ex, iter(wrr), 4, what)
    got = "".join(first + middle + last)
    assert got == expected, (
        f"{what}: next() twice, take(3), next() four times gave {got!r}, expected "
        f"{expected!r}: take() goes on from where next() left off, and the other way round"
    )
    assert _take(ex, wrr, 0, what) == [], f"{what}: take(0) is not []"


def _assert_rejects(ex, cls_name: str) -> None:
    for weights in ({"a": 2, "b": 0}, {"a": -1}, {"a": 1.5, "b": 1}):
        try:
            _make(ex, cls_name, weights)
        except ValueError:
            continue
        except NotImplementedError:
            raise
        except Exception as exc:
            pytest.fail(f"{cls_name}({weights}) raised {exc!r}, expected ValueError")
        pytest.fail(
            f"{cls_name}({weights}) was accepted: weights must be positive ints (ValueError)"
        )


def _assert_rejects_empty(ex, cls_name: str) -> None:
    try:
        _make(ex, cls_name, {})
    except ValueError:
        return
    except NotImplementedError:
        raise
    except Exception as exc:
        pytest.fail(f"{cls_name}({{}}) raised {exc!r}, expected ValueError")
    pytest.fail(
        f"{cls_name}({{}}) was accepted: with no keys there is nothing to pick (ValueError)"
    )


def _assert_keeps_its_own_weights(ex, cls_name: str) -> None:
    """The caller changes the dict after handing it over: the picks do not change."""
    weights = {"a": 4, "b": 3, "c": 2}
    what = f"{cls_name}({weights})"
    expected = _picks(ex, _make(ex, cls_name, dict(weights)), 30, what)
    given = dict(weights)
    wrr = _make(ex, cls_name, given)
    got = _picks(ex, wrr, 5, what)
    given["a"] = 1  # the caller reuses its dict
    given["d"] = 7
    del given["b"]
    got += _picks(ex, wrr, 25, what)
    assert got == expected, (
        f"keep a copy of the weights (dict(weights)) in __init__: once the caller changed "
        f"the dict it gave {cls_name} (a=1, d added, b removed), picks 6-30 were "
        f"{_show(got[5:])!r}, expected {_show(expected[5:])!r}"
    )


_ODD_KEYS: list[Any] = [0, 1, "a", ("x", 1), None, frozenset({2}), 2.5, b"k"]


def _assert_many_keys(ex, cls_name: str, step_of) -> None:
    """120 keys of every hashable kind (ints, tuples, None...), weights 1-9, two cycles."""
    weights = {key: 1 + (7 * i) % 9 for i, key in enumerate(_ODD_KEYS + list(range(2, 114)))}
    what = f"{cls_name}(120 keys: 0, None, ('x', 1)...)"
    step = step_of(weights)
    length = sum(weights.values()) // step
    try:
        wrr = _make(ex, cls_name, weights)
        picks = _picks(ex, wrr, 2 * length, what, steps=100 * len(weights))
    except TypeError as exc:
        raise AssertionError(
            f"{what} raised {exc!r}: keys are any hashable, not only strings (do not sort "
            "or join them)"
        ) from None
    expected = {k: w // step for k, w in weights.items()}
    for c in range(2):
        counts = Counter(picks[c * length : (c + 1) * length])
        wrong = {k: (counts[k], n) for k, n in expected.items() if counts[k] != n}
        assert not wrong, (
            f"{what}: is a key such as None or 0 taken for 'no best key yet' (`best = "
            f"None`, `if not best`)? In cycle {c + 1} ({length} picks) some keys came up "
            f"the wrong number of times, (got, expected): {dict(list(wrong.items())[:5])}"
        )


# --- 3.1 SmoothWRR -------------------------------------------------------------------------


@pytest.mark.exercise("3.1")
def test_swrr_gives_nginxs_sequence_for_5_1_1(ex):
    """Weights a=5, b=1, c=1 give 'aabacaa', then the same again."""
    weights = {"a": 5, "b": 1, "c": 1}
    picks = _picks(ex, _make(ex, "SmoothWRR", weights), 14, f"SmoothWRR({weights})")
    assert _show(picks) == "aabacaa" * 2, (
        f"SmoothWRR({weights}) picked {_show(picks)!r}, expected 'aabacaaaabacaa': add each "
        "weight to its current weight, pick the largest, subtract the total from it"
    )


@pytest.mark.exercise("3.1")
def test_swrr_gives_each_key_its_weight_in_every_cycle(ex):
    """In every cycle of sum(weights) picks, each key comes up exactly weight times."""
    _make(ex, "SmoothWRR", {"a": 1})  # the stub stops here, before hypothesis starts

    @_PROPERTY
    @given(weights=_weights(6, 12))
    def prop(weights: dict[str, int]) -> None:
        _assert_cycles(ex, "SmoothWRR", weights, step=1, cycles=3)

    prop()


def _shares(ex, weights: dict[str, int]) -> list[tuple[int, str, Fraction]]:
    """(n, key, count - n*w/W) after every prefix of the first two cycles."""
    total = sum(weights.values())
    what = f"SmoothWRR({weights})"
    picks = _picks(ex, _make(ex, "SmoothWRR", weights), 2 * total, what)
    counts: Counter[Any] = Counter()
    gaps = []
    for n, pick in enumerate(picks, start=1):
        counts[pick] += 1
        gaps.extend((n, key, counts[key] - Fraction(n * w, total)) for key, w in weights.items())
    return gaps


@pytest.mark.exercise("3.1")
def test_swrr_never_gets_a_whole_pick_ahead_of_its_share(ex):
    """After any n picks, no key is a whole pick ahead of its share n*w/W.

    The true bound: with k keys, a key is never more than 1 - 1/k picks ahead of
    n*w/W (W: the total weight), and 2 keys of weight 1 reach it ('a' after one pick).
    Why: after n picks current_weight = n*w - W*count, so "ahead by d" is "current
    weight -d*W". When a key is picked, the current weights sum to W, so the largest,
    the one picked, is at least W/k; it drops by W, to no less than -(1 - 1/k)*W, and
    a key not picked only goes up. A bursty round robin ('aaaaabc' for 5, 1, 1) is
    10/7 picks ahead for 'a' after five picks.
    """
    _make(ex, "SmoothWRR", {"a": 1})

    @_PROPERTY
    @given(weights=_weights(8, 12))
    def prop(weights: dict[str, int]) -> None:
        bound = 1 - Fraction(1, len(weights))
        for n, key, ahead in _shares(ex, weights):
            assert ahead <= bound, (
                f"SmoothWRR({weights}): after {n} picks {key!r} was {float(ahead):.2f} picks "
                f"ahead of its share (n*w/W), more than 1 - 1/k = {float(bound):.2f}: the "
                "picks are bunched, not spread out"
            )

    prop()


@pytest.mark.exercise("3.1")
def test_swrr_never_falls_a_whole_pick_behind_its_share(ex):
    """With up to 4 keys, after any n picks no key is a whole pick behind n*w/W.

    "Less than one pick from its share" is not true of nginx's algorithm on this side
    for any number of keys: with 5 keys {1, 1, 1, 6, 6} a weight-6 key falls exactly
    1 pick behind (after 10 picks), with 6 keys {1, 1, 1, 5, 5, 5} 19/18 of a pick,
    and the worst lag grows slowly with more keys (8/7 for 13 keys, found by a random
    search). The simple proven bound, from the current weights summing to 0 and the
    ahead bound above, is only (k - 1)**2 / k picks. Up to 4 keys it stays below 1:
    computed exactly for every weighting with weights up to 20 (4 keys), 40 (3 keys)
    and 30 (2 keys, never more than 1/2 behind). This check draws up to 4 keys with
    weights up to 12, all inside what was computed.
    """
    _make(ex, "SmoothWRR", {"a": 1})

    @_PROPERTY
    @given(weights=_weights(4, 12))
    def prop(weights: dict[str, int]) -> None:
        for n, key, ahead in _shares(ex, weights):
            assert ahead > -1, (
                f"SmoothWRR({weights}): after {n} picks {key!r} was {float(-ahead):.2f} picks "
                "behind its share (n*w/W): a whole pick or more, so it was passed over "
                "too long"
            )

    prop()


@pytest.mark.exercise("3.1")
def test_swrr_breaks_ties_in_favour_of_the_key_inserted_first(ex):
    """Equal current weights: the key that came first in the dict wins ('b' before 'a')."""
    for weights, expected in (
        ({"b": 1, "a": 1, "c": 1}, "bacbac"),
        ({"y": 2, "x": 2}, "yxyx"),
        ({"c": 1, "a": 2, "b": 1}, "acba" * 2),
    ):
        picks = _picks(ex, _make(ex, "SmoothWRR", weights), len(expected), f"SmoothWRR({weights})")
        assert _show(picks) == expected, (
            f"SmoothWRR({weights}) picked {_show(picks)!r}, expected {expected!r}: on a tie, "
            "the key inserted first wins (compare with >, not >=; dicts keep insertion order)"
        )

    @_PROPERTY
    @given(weights=_weights(6, 4, min_keys=2))
    def prop(weights: dict[str, int]) -> None:
        _assert_ties_go_first_to_the_first_inserted(ex, "SmoothWRR", weights)

    prop()


@pytest.mark.exercise("3.1")
def test_swrr_never_runs_out(ex):
    """take(1000) works for any weights, repeating the same cycle of sum(weights) picks."""
    _make(ex, "SmoothWRR", {"a": 1})

    @settings(_PROPERTY, max_examples=15)
    @given(weights=_weights(5, 10))
    def prop(weights: dict[str, int]) -> None:
        _assert_endless(ex, "SmoothWRR", weights, period=sum(weights.values()))

    prop()


@pytest.mark.exercise("3.1")
def test_swrr_is_an_iterator_and_take_goes_on_from_next(ex):
    """iter(wrr) is wrr; next() and take(n) share one sequence of picks."""
    _assert_iterator(ex, "SmoothWRR", {"a": 5, "b": 1, "c": 1}, "aabacaa" + "aa")


@pytest.mark.exercise("3.1")
def test_swrr_rejects_weights_that_are_not_positive_ints(ex):
    """A weight of 0, -1 or 1.5: ValueError."""
    _assert_rejects(ex, "SmoothWRR")


@pytest.mark.exercise("3.1")
def test_swrr_rejects_no_keys(ex):
    """No keys at all ({}): ValueError."""
    _assert_rejects_empty(ex, "SmoothWRR")


@pytest.mark.exercise("3.1")
def test_swrr_keeps_its_own_copy_of_the_weights(ex):
    """The caller changes its dict after SmoothWRR(weights): the picks do not change."""
    _assert_keeps_its_own_weights(ex, "SmoothWRR")


@pytest.mark.exercise("3.1")
def test_swrr_handles_many_keys_of_any_hashable_type(ex):
    """120 keys (ints, tuples, None, bytes...): each key its weight's picks in every cycle."""
    _assert_many_keys(ex, "SmoothWRR", lambda weights: 1)


# --- 3.2 InterleavedWRR --------------------------------------------------------------------


@pytest.mark.exercise("3.2")
def test_iwrr_gives_lvss_sequence_for_4_3_2(ex):
    """Weights a=4, b=3, c=2 give 'aababcabc' (levels 4, 3, 2, 1), then the same again."""
    weights = {"a": 4, "b": 3, "c": 2}
    picks = _picks(ex, _make(ex, "InterleavedWRR", weights), 18, f"InterleavedWRR({weights})")
    assert _show(picks) == "aababcabc" * 2, (
        f"InterleavedWRR({weights}) picked {_show(picks)!r}, expected 'aababcabc' twice: "
        "level 4 lets a through, level 3 a and b, levels 2 and 1 a, b and c"
    )


@pytest.mark.exercise("3.2")
def test_iwrr_steps_down_by_the_gcd(ex):
    """Weights a=4, b=2 step down 4, 2 (by their gcd, 2): 'aab', not 'aaabab'."""
    weights = {"a": 4, "b": 2}
    picks = _picks(ex, _make(ex, "InterleavedWRR", weights), 6, f"InterleavedWRR({weights})")
    assert _show(picks) == "aab" * 2, (
        f"InterleavedWRR({weights}) picked {_show(picks)!r}, expected 'aabaab': the level "
        "drops by gcd(4, 2) = 2 each round, so there are two levels, 4 and 2"
    )


@pytest.mark.exercise("3.2")
def test_iwrr_gives_each_key_weight_over_gcd_in_every_cycle(ex):
    """Every cycle of sum(weights)/gcd picks has each key exactly weight/gcd times.

    One cycle is the level stepping down from max(weights) to gcd: at each level each
    key is picked once if its weight reaches the level, which happens for weight/gcd
    levels.
    """
    _make(ex, "InterleavedWRR", {"a": 1})

    @_PROPERTY
    @given(weights=_with_common_factor(6, 10))
    def prop(weights: dict[str, int]) -> None:
        _assert_cycles(ex, "InterleavedWRR", weights, step=math.gcd(*weights.values()), cycles=3)

    prop()


@pytest.mark.exercise("3.2")
def test_iwrr_never_runs_out(ex):
    """take(1000) works for any weights, repeating the same cycle: no weight is used up."""
    _make(ex, "InterleavedWRR", {"a": 1})

    @settings(_PROPERTY, max_examples=15)
    @given(weights=_with_common_factor(5, 8))
    def prop(weights: dict[str, int]) -> None:
        period = sum(weights.values()) // math.gcd(*weights.values())
        _assert_endless(ex, "InterleavedWRR", weights, period=period)

    prop()


@pytest.mark.exercise("3.2")
def test_iwrr_scans_keys_in_insertion_order(ex):
    """At each level keys come in the dict's order: c=1, a=2, b=1 give 'a', then 'cab'."""
    for weights, expected in (
        ({"c": 1, "a": 2, "b": 1}, "acab" * 2),
        ({"b": 1, "a": 1, "c": 1}, "bacbac"),
    ):
        picks = _picks(
            ex, _make(ex, "InterleavedWRR", weights), len(expected), f"InterleavedWRR({weights})"
        )
        assert _show(picks) == expected, (
            f"InterleavedWRR({weights}) picked {_show(picks)!r}, expected {expected!r}: "
            "i goes through the keys in the order they were given"
        )

    @_PROPERTY
    @given(weights=_weights(6, 4, min_keys=2))
    def prop(weights: dict[str, int]) -> None:
        _assert_ties_go_first_to_the_first_inserted(ex, "InterleavedWRR", weights)

    prop()


@pytest.mark.exercise("3.2")
def test_iwrr_is_an_iterator_and_take_goes_on_from_next(ex):
    """iter(wrr) is wrr; next() and take(n) share one sequence of picks."""
    _assert_iterator(ex, "InterleavedWRR", {"a": 4, "b": 3, "c": 2}, "aababcabc")


@pytest.mark.exercise("3.2")
def test_iwrr_rejects_weights_that_are_not_positive_ints(ex):
    """A weight of 0, -1 or 1.5: ValueError."""
    _assert_rejects(ex, "InterleavedWRR")


@pytest.mark.exercise("3.2")
def test_iwrr_rejects_no_keys(ex):
    """No keys at all ({}): ValueError."""
    _assert_rejects_empty(ex, "InterleavedWRR")


@pytest.mark.exercise("3.2")
def test_iwrr_keeps_its_own_copy_of_the_weights(ex):
    """The caller changes its dict after InterleavedWRR(weights): the picks do not change."""
    _assert_keeps_its_own_weights(ex, "InterleavedWRR")


@pytest.mark.exercise("3.2")
def test_iwrr_handles_many_keys_of_any_hashable_type(ex):
    """120 keys (ints, tuples, None, bytes...): each key weight/gcd picks in every cycle."""
    _assert_many_keys(ex, "InterleavedWRR", lambda weights: math.gcd(*weights.values()))


# --- 3.3 and 3.4: helpers on the virtual clock ---------------------------------------------


def _now() -> float:
    """The loop's (virtual) time, rounded to the microsecond so that times compare exactly."""
    return round(asyncio.get_running_loop().time(), 6)



async def _call(fn, *args):
    return fn(*args)



# --- 3.3 PriorityPool ----------------------------------------------------------------------


class _Jobs(_Cleanup):
    """Jobs for the pool that log, as (time, "name event"), when they start, end, fail or
    are cancelled, and count how many run at the same time."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[float, str]] = []
        self.running = 0
        self.most_running = 0

    def job(self, name: str, run_s: float, *, result: Any = None, error=None, cleanup_s=0.0):
        """A coroutine that runs ``run_s``, then returns ``result`` (or raises ``error``);
        cancelled, it cleans up for ``cleanup_s``."""
        return self.track(self._run(name, run_s, result, error, cleanup_s))

    async def _run(self, name, run_s, result, error, cleanup_s):
        self.log.append((_now(), f"{name} started"))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(run_s)
        except asyncio.CancelledError:
            self.log.append((_now(), f"{name} cancelled"))
            await asyncio.sleep(cleanup_s)
            self.log.append((_now(), f"{name} cleaned up"))
            raise
        finally:
            self.running -= 1
        if error is not None:
            self.log.append((_now(), f"{name} failed"))
            raise error
        self.log.append((_now(), f"{name} ended"))
        return result

    def times(self, event: str) -> dict[str, float]:
        """{name: time} of each job's ``event`` ("started", "ended", ...)."""
        return {e.removesuffix(f" {event}"): t for t, e in self.log if e.endswith(f" {event}")}

    def started(self) -> list[str]:
        return [e.rpartition(" ")[0] for _, e in self.log if e.endswith(" started")]


def _submit(pool, jobs: _Jobs, coro, **kwargs):
    return jobs.keep(pool.submit(coro, **kwargs))


async def _all_done(futures, limit_s: float) -> None:
    """Wait (at most ``limit_s``) until every future is done; the test then looks at them."""
    await asyncio.wait(futures, timeout=limit_s)


def _start_order(jobs: _Jobs) -> str:
    return ", ".join(f"{name} at {t:g} s" for name, t in jobs.times("started").items())


@_async
@pytest.mark.exercise("3.3")
async def test_pool_never_runs_more_than_concurrency_jobs_at_once(ex):
    """concurrency=3 and 10 jobs: never more than 3 of them running at the same time."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(3)
        futures = [_submit(pool, jobs, jobs.job(f"j{i}", 10)) for i in range(10)]
        await _all_done(futures, 1000)
        assert jobs.most_running <= 3, (
            f"{jobs.most_running} jobs ran at the same time, with concurrency=3: start one "
            "only when fewer than 3 are running"
        )


@_async
@pytest.mark.exercise("3.3")
async def test_pool_keeps_concurrency_jobs_running(ex):
    """concurrency=3, 10 jobs of 10 s: 3 at a time, all done at 40 s (not 100 s)."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(3)
        futures = [_submit(pool, jobs, jobs.job(f"j{i}", 10)) for i in range(10)]
        await _all_done(futures, 1000)
        ended = sorted(jobs.times("ended").values())
        assert len(ended) == 10, f"only {len(ended)} of the 10 jobs ran to the end within 1000 s"
        assert jobs.most_running == 3 and ended[-1] == 40, (
            f"at most {jobs.most_running} jobs ran at once and the last ended at "
            f"{ended[-1]:g} s; expected 3 at once, all done at 40 s: when a job ends, "
            "start the next one right away"
        )


@_async
@pytest.mark.exercise("3.3")
async def test_pool_starts_the_lowest_priority_number_first(ex):
    """Jobs waiting behind a busy slot start by priority: 0, 1, 3, 4, 5."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(1)
        futures = [_submit(pool, jobs, jobs.job("blocker", 10))]
        await asyncio.sleep(1)
        for name, priority in (("p5", 5), ("p1", 1), ("p3", 3), ("p0", 0), ("p4", 4)):
            futures.append(_submit(pool, jobs, jobs.job(name, 1), priority=priority))
        await _all_done(futures, 1000)
        expected = {"blocker": 0, "p0": 10, "p1": 11, "p3": 12, "p4": 13, "p5": 14}
        assert jobs.times("started") == expected, (
            f"the jobs started: {_start_order(jobs)}; expected p0 at 10 s, then p1, p3, p4, "
            "p5 one a second: when the slot frees, the lowest priority number goes next"
        )


@_async
@pytest.mark.exercise("3.3")
async def test_pool_runs_equal_priorities_first_in_first_out(ex):
    """Equal priorities start in the order they were submitted."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(1)
        futures = [_submit(pool, jobs, jobs.job("blocker", 10))]
        await asyncio.sleep(1)
        for name, priority in (("e1", 2), ("d1", 1), ("c2", 2), ("b2", 1), ("a3", 2), ("z3", 1)):
            futures.append(_submit(pool, jobs, jobs.job(name, 1), priority=priority))
        await _all_done(futures, 1000)
        expected = ["blocker", "d1", "b2", "z3", "e1", "c2", "a3"]
        assert jobs.started() == expected, (
            f"the jobs started in the order {jobs.started()}, expected {expected}: "
            "priority 1 before 2, and among equals, first submitted first (a counter "
            "in the heap entry)"
        )


async def _aging_scenario(ex, jobs: _Jobs, **kwargs) -> None:
    """concurrency=1: a blocker runs 0-100 s; 'old' (priority 3) is submitted at 1 s, then
    h10, h20, h30, h40, h50 (priority 0) at 10, 20, 30, 40, 50 s; each job after the
    blocker runs 1 s."""
    pool = ex.PriorityPool(1, **kwargs)
    futures = [_submit(pool, jobs, jobs.job("blocker", 100))]
    await asyncio.sleep(1)
    futures.append(_submit(pool, jobs, jobs.job("old", 1), priority=3))
    for t in (10, 20, 30, 40, 50):
        await asyncio.sleep(t - _now())
        futures.append(_submit(pool, jobs, jobs.job(f"h{t}", 1), priority=0))
    await _all_done(futures, 1000)


@_async
@pytest.mark.exercise("3.3")
async def test_pool_aging_lets_an_old_job_overtake_newer_better_ones(ex):
    """aging_s=10: 'old' (priority 3, in at 1 s) overtakes h40 and h50, not h30: at 103 s."""
    async with _Jobs() as jobs:
        await _aging_scenario(ex, jobs, aging_s=10)
        expected = {"blocker": 0, "h10": 100, "h20": 101, "h30": 102, "old": 103,
                    "h40": 104, "h50": 105}  # fmt: skip
        assert jobs.times("started") == expected, (
            f"the jobs started: {_start_order(jobs)}; expected old at 103 s, between h30 "
            "and h40: it waited 29 s longer than h30 (2.9 levels, less than the 3 between "
            "them) and 39 s longer than h40 (3.9 levels, more). Effective priority: "
            "priority - waited_s / aging_s, not rounded"
        )


@_async
@pytest.mark.exercise("3.3")
async def test_pool_without_aging_a_low_priority_job_waits_behind_all_better_ones(ex):
    """No aging_s: 'old' (priority 3, in at 1 s) waits until every priority-0 job has run."""
    async with _Jobs() as jobs:
        await _aging_scenario(ex, jobs)
        expected = {"blocker": 0, "h10": 100, "h20": 101, "h30": 102, "h40": 103,
                    "h50": 104, "old": 105}  # fmt: skip
        assert jobs.times("started") == expected, (
            f"the jobs started: {_start_order(jobs)}; expected old last, at 105 s: "
            "without aging_s, priority alone decides"
        )


@_async
@pytest.mark.exercise("3.3")
async def test_pool_future_gets_the_jobs_result(ex):
    """submit() returns an asyncio.Future at once; it gets the job's return value."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(2)
        future = _submit(pool, jobs, jobs.job("job", 5, result="report"))
        assert isinstance(future, asyncio.Future), (
            f"submit() returned {future!r}, not an asyncio.Future"
        )
        assert not future.done(), "the future was done at once, before the job ran"
        await _all_done([future], 60)
        assert future.done(), "the future was not done 60 s after a 5 s job"
        assert not future.cancelled() and future.exception() is None, (
            f"the future holds {'a cancel' if future.cancelled() else future.exception()!r}, "
            "expected the job's result"
        )
        assert future.result() == "report" and _now() == 5, (
            f"the future got {future.result()!r} at {_now():g} s, expected 'report' at 5 s"
        )


@_async
@pytest.mark.exercise("3.3")
async def test_pool_failing_job_reaches_its_future_and_the_next_job_runs(ex):
    """A job that raises: the exception goes to its future, and the next job still runs."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(1)
        error = ValueError("boom")
        bad = _submit(pool, jobs, jobs.job("bad", 1, error=error))
        good = _submit(pool, jobs, jobs.job("good", 1, result="ok"))
        await _all_done([bad, good], 60)
        assert bad.done() and not bad.cancelled() and bad.exception() is error, (
            "the failing job's future holds "
            f"{_outcome_of(bad)}, expected its ValueError('boom'): future.set_exception()"
        )
        assert good.done() and not good.cancelled(), (
            f"the job after the failing one: its future holds {_outcome_of(good)}: a failing "
            "job must not stop the pool"
        )
        assert good.exception() is None and good.result() == "ok", (
            f"the job after the failing one: its future holds {_outcome_of(good)}, expected 'ok'"
        )
        assert jobs.times("started").get("good") == 1, (
            f"the next job started at {jobs.times('started').get('good')} s, expected at 1 s"
        )


def _outcome_of(future) -> str:
    if not future.done():
        return "nothing yet (still pending)"
    if future.cancelled():
        return "a cancel"
    error = future.exception()
    return f"the error {error!r}" if error is not None else f"the result {future.result()!r}"


@_async
@pytest.mark.exercise("3.3")
async def test_pool_join_waits_for_every_job(ex):
    """join() returns when the last job ends (9 s here), at once when there is none."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(2)
        await _within(10, pool.join(), "join() on a pool with no job did not return")
        assert _now() == 0, f"join() on an empty pool returned at {_now():g} s, not at once"
        futures = [
            _submit(pool, jobs, jobs.job(f"j{i}", run_s)) for i, run_s in enumerate((3, 5, 2, 4))
        ]
        await _within(600, pool.join(), "join() had not returned after 600 s")
        assert _now() == 9, (
            f"join() returned at {_now():g} s, expected 9 s, when the last job ended "
            "(j0 0-3 s, j1 0-5 s, j2 3-5 s, j3 5-9 s)"
        )
        pending = [f for f in futures if not f.done()]
        assert not pending, f"join() returned with {len(pending)} jobs not done"
        await _within(10, pool.join(), "a second join(), with nothing left, did not return")
        assert _now() == 9, f"a second join() returned at {_now():g} s, not at once"


@_async
@pytest.mark.exercise("3.3")
async def test_pool_close_drops_queued_jobs_and_closes_their_coroutines(ex):
    """close(): queued jobs never start, their coroutines are closed, their futures cancelled."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(1)
        _submit(pool, jobs, jobs.job("running", 100))
        queued = [jobs.job(f"q{i}", 1) for i in range(3)]
        futures = [_submit(pool, jobs, coro) for coro in queued]
        await asyncio.sleep(5)
        await _within(60, pool.close(), "close() had not returned after 60 s")
        states = [inspect.getcoroutinestate(coro) for coro in queued]
        assert all(s == inspect.CORO_CLOSED for s in states), (
            f"after close() the queued coroutines were {states}: close them "
            "(coro.close()), or Python warns 'coroutine was never awaited'"
        )
        started = [name for name in jobs.started() if name.startswith("q")]
        assert not started, f"queued jobs {started} started: close() drops them"
        assert all(f.cancelled() for f in futures), (
            "the queued jobs' futures were not cancelled: whoever awaits them would wait forever"
        )


@_async
@pytest.mark.exercise("3.3")
async def test_pool_close_cancels_running_jobs_and_waits_for_their_cleanup(ex):
    """close() at 5 s: the running jobs are cancelled; it returns after their 2 s cleanup."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(2)
        futures = [_submit(pool, jobs, jobs.job(name, 100, cleanup_s=2)) for name in ("r1", "r2")]
        await asyncio.sleep(5)
        await _within(60, pool.close(), "close() had not returned after 60 s")
        assert _now() == 7, (
            f"close() returned at {_now():g} s, expected 7 s, after the running jobs' 2 s of "
            "cleanup: cancel them, then wait for them to end"
        )
        cleaned = jobs.times("cleaned up")
        assert cleaned == {"r1": 7, "r2": 7}, (
            f"the running jobs finished their cleanup at {cleaned} s, expected both at 7 s: "
            "cancel them, then wait for them to end"
        )
        assert all(f.cancelled() for f in futures), "the running jobs' futures were not cancelled"
        assert jobs.running == 0, f"{jobs.running} jobs were still running after close()"


@_async
@pytest.mark.exercise("3.3")
async def test_pool_refuses_new_jobs_once_closed(ex):
    """submit() after close(): RuntimeError, and the coroutine it was given is closed."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(1)
        await _within(60, pool.close(), "close() of an idle pool had not returned after 60 s")
        late = jobs.job("late", 1)
        with pytest.raises(RuntimeError):
            _submit(pool, jobs, late)
        assert inspect.getcoroutinestate(late) == inspect.CORO_CLOSED, (
            "the refused coroutine was not closed: coro.close() before raising"
        )


@_async
@pytest.mark.exercise("3.3")
async def test_pool_rejects_a_concurrency_below_one(ex):
    """PriorityPool(0): ValueError."""
    with pytest.raises(ValueError):
        ex.PriorityPool(0)


def _closing(pool, name: str = "close") -> asyncio.Task[Any]:
    """pool.close() in a task of its own, so that a CancelledError it raises is seen."""
    return asyncio.create_task(pool.close(), name=name)


_CLOSE_RAISED_CANCEL = (
    "{who} raised CancelledError though nobody cancelled it: awaiting the cancelled jobs "
    "(`await task`, asyncio.gather) raises *their* CancelledError in close(); wait for "
    "them with asyncio.wait(), which never raises their outcome"
)


async def _closed_by(closer: asyncio.Task[Any], limit_s: float, who: str) -> None:
    """Wait for a close() task; fail with a hint if it hangs or raises CancelledError."""
    await asyncio.wait({closer}, timeout=limit_s)
    assert closer.done(), f"{who} had not returned after {limit_s:g} s"
    assert not closer.cancelled(), _CLOSE_RAISED_CANCEL.format(who=who)
    closer.result()


@_async
@pytest.mark.exercise("3.3")
async def test_pool_close_from_two_tasks_cancels_the_jobs_once(ex):
    """Two tasks close() the pool at 5 s: the jobs' 2 s cleanup is not cut; both wait for it."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(2)
        futures = [_submit(pool, jobs, jobs.job(name, 100, cleanup_s=2)) for name in ("r1", "r2")]
        await asyncio.sleep(5)
        first = _closing(pool, "first close")
        await asyncio.sleep(0)  # the first close() has cancelled the jobs
        await asyncio.sleep(1)  # the jobs are in the middle of their cleanup
        second = _closing(pool, "second close")
        await _closed_by(first, 60, "the first close()")
        await _closed_by(second, 60, "the second close()")
        cleaned = jobs.times("cleaned up")
        assert cleaned == {"r1": 7, "r2": 7}, (
            "the second close() cancelled the jobs again, in the middle of their 2 s "
            f"cleanup (it ended at {cleaned or 'never'} s, expected 7 s): cancel each "
            "running job once; a second close() only waits"
        )
        assert _now() == 7, (
            f"the second close() returned at {_now():g} s, expected 7 s, when the jobs' "
            "cleanup ended: every close() waits until the running jobs have ended"
        )
        assert all(f.cancelled() for f in futures), "the running jobs' futures were not cancelled"


@_async
@pytest.mark.exercise("3.3")
async def test_pool_close_cancelled_while_it_waits_then_close_again(ex):
    """close() cancelled during the jobs' cleanup: it stops waiting; a later close() waits."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(2)
        futures = [_submit(pool, jobs, jobs.job(name, 100, cleanup_s=2)) for name in ("r1", "r2")]
        await asyncio.sleep(5)
        first = _closing(pool, "first close")
        await asyncio.sleep(1)
        first.cancel()  # the caller of close() is cancelled while close() waits
        await asyncio.wait({first}, timeout=60)
        assert first.done(), (
            "close(), cancelled at 6 s, was still running after 60 s: when the caller is "
            "cancelled, close() stops waiting (the jobs are cancelled already)"
        )
        assert first.cancelled(), (
            "close(), cancelled at 6 s, did not end cancelled: let the caller's "
            "CancelledError out"
        )
        second = _closing(pool, "close() again")
        await _closed_by(second, 60, "close() again, after a cancelled close(),")
        cleaned = jobs.times("cleaned up")
        assert all(t == 7 for t in cleaned.values()), (
            f"close() again, at 6 s, cut the jobs' 2 s cleanup short (it ended at {cleaned} "
            "s, expected 7 s): a second close() only waits, it does not cancel the jobs again"
        )
        assert _now() == 7, (
            f"close() again returned at {_now():g} s, before the jobs' cleanup ended at 7 s: "
            "do not return early because the pool is closed already; every close() waits "
            "for the running jobs"
        )
        assert cleaned == {"r1": 7, "r2": 7}, (
            f"the jobs' cleanup ended at {cleaned} s, expected both at 7 s"
        )
        assert all(f.cancelled() for f in futures), "the running jobs' futures were not cancelled"


@_async
@pytest.mark.exercise("3.3")
async def test_pool_join_cancelled_leaves_the_jobs_running(ex):
    """join() cancelled at 1 s: the jobs are not cancelled; they end at 10 s with results."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(2)
        futures = [_submit(pool, jobs, jobs.job(f"j{i}", 10, result=i)) for i in range(2)]
        joiner = asyncio.create_task(pool.join(), name="join")
        await asyncio.sleep(1)
        joiner.cancel()  # whoever waited gave up: the jobs go on
        await asyncio.wait({joiner}, timeout=60)
        cancelled = sorted(jobs.times("cancelled"))
        assert not cancelled, (
            f"join() only waits, but cancelling it cancelled the jobs {cancelled}: a "
            "cancelled asyncio.gather() cancels what it gathers; wait on an asyncio.Event, "
            "or with asyncio.wait()"
        )
        await _all_done(futures, 60)
        got = [_outcome_of(f) for f in futures]
        assert all(f.done() and not f.cancelled() and f.exception() is None for f in futures), (
            f"after join() was cancelled the jobs' futures hold {got}, expected results"
        )
        assert [f.result() for f in futures] == [0, 1] and _now() == 10, (
            f"the jobs' results were {[f.result() for f in futures]} at {_now():g} s, "
            "expected [0, 1] at 10 s"
        )


@_async
@pytest.mark.exercise("3.3")
async def test_pool_runs_a_thousand_jobs_one_after_another(ex):
    """concurrency=1, 1,000 jobs of 0.01 s: each gets its result; all done at 10 s."""
    async with _Jobs() as jobs:
        pool = ex.PriorityPool(1)
        futures = [_submit(pool, jobs, jobs.job(f"j{i}", 0.01, result=i)) for i in range(1000)]
        await _all_done(futures, 100)
        bad = [(i, _outcome_of(f)) for i, f in enumerate(futures)
               if not (f.done() and not f.cancelled() and f.exception() is None)]  # fmt: skip
        assert not bad, (
            f"{len(bad)} of 1,000 jobs got no result: does a job's task await the next job "
            "(a chain of awaits that grows per job, up to RecursionError)? Start each in a "
            f"new task. The first: {bad[:2]}"
        )
        results = [f.result() for f in futures]
        assert results == list(range(1000)) and _now() == 10, (
            f"the 1,000 jobs ended at {_now():g} s, expected 10 s (one after another, "
            "0.01 s each), their results in order"
        )


# --- 3.4 TokenBucket -----------------------------------------------------------------------


async def _acquire(bucket, n: int, name: str, log: list[tuple[float, str]]) -> None:
    await bucket.acquire(n)
    log.append((_now(), name))


def _when(log: list[tuple[float, str]]) -> dict[str, float]:
    return {name: t for t, name in log}


_ACQUIRE_HANGS = "acquire() was still waiting after {} s"


@_async
@pytest.mark.exercise("3.4")
async def test_bucket_lets_a_burst_through_then_one_every_1_over_rate(ex):
    """rate 2/s, capacity 5: 5 acquire() at 0 s, then one every 0.5 s."""
    bucket = ex.TokenBucket(2, 5)
    times = []
    for _ in range(10):
        await _within(60, bucket.acquire(), _ACQUIRE_HANGS.format(60))
        times.append(_now())
    expected = [0, 0, 0, 0, 0, 0.5, 1, 1.5, 2, 2.5]
    assert times == expected, (
        f"10 acquire() in a row returned at {times} s, expected {expected}: it starts "
        "full (5 tokens), then refills 2 tokens a second"
    )


@_async
@pytest.mark.exercise("3.4")
async def test_bucket_serves_concurrent_waiters_in_order(ex):
    """10 tasks acquire at once: 5 at 0 s, then one every 0.5 s, in the order they came."""
    async with _Cleanup() as tasks:
        bucket = ex.TokenBucket(2, 5)
        log: list[tuple[float, str]] = []
        started = [tasks.start(_acquire(bucket, 1, f"t{i}", log)) for i in range(10)]
        await asyncio.wait(started, timeout=60)
        for task in started:
            _raise_if_failed(task)
        expected = [(t, f"t{i}") for i, t in enumerate([0] * 5 + [0.5, 1, 1.5, 2, 2.5])]
        assert log == expected, (
            f"first come, first served: expected t0-t4 at 0 s, then t5, t6, ... every 0.5 s; "
            f"the waiters got their token: {log}"
        )


@_async
@pytest.mark.exercise("3.4")
async def test_bucket_never_holds_more_than_capacity(ex):
    """Idle for 100 s, it holds 5 tokens (its capacity), not 200: the 6th waits 0.5 s."""
    bucket = ex.TokenBucket(2, 5)
    await _within(60, bucket.acquire(), _ACQUIRE_HANGS.format(60))
    await asyncio.sleep(100)
    times = []
    for _ in range(6):
        await _within(60, bucket.acquire(), _ACQUIRE_HANGS.format(60))
        times.append(round(_now() - 100, 6))
    assert times == [0, 0, 0, 0, 0, 0.5], (
        f"tokens never pile up above capacity: after 100 s idle, 6 acquire() returned at "
        f"+{times} s, expected 5 at once, then +0.5 s"
    )


@_async
@pytest.mark.exercise("3.4")
async def test_bucket_does_not_let_small_requests_overtake_a_large_one(ex):
    """Empty bucket, 1/s: acquire(4), then two acquire(1): served at 4, 5, 6 s, in order."""
    async with _Cleanup() as tasks:
        bucket = ex.TokenBucket(1, 5)
        await _within(60, bucket.acquire(5), _ACQUIRE_HANGS.format(60))
        log: list[tuple[float, str]] = []
        started = [tasks.start(_acquire(bucket, 4, "big", log))]
        await asyncio.sleep(0)
        started.append(tasks.start(_acquire(bucket, 1, "small1", log)))
        await asyncio.sleep(0)
        started.append(tasks.start(_acquire(bucket, 1, "small2", log)))
        await asyncio.wait(started, timeout=60)
        for task in started:
            _raise_if_failed(task)
        assert _when(log) == {"big": 4, "small1": 5, "small2": 6}, (
            f"first come, first served: acquire(4), then two acquire(1), were served at "
            f"{_when(log)} s, expected big at 4, small1 at 5, small2 at 6 (no overtaking)"
        )


@_async
@pytest.mark.exercise("3.4")
async def test_bucket_try_acquire_takes_tokens_without_waiting(ex):
    """try_acquire(): True while tokens last, False at once when not, True again later."""
    bucket = ex.TokenBucket(2, 3)
    got = [bucket.try_acquire() for _ in range(4)]
    assert got == [True, True, True, False], (
        f"4 try_acquire() on a full bucket of 3 gave {got}, expected [True, True, True, False]"
    )
    assert _now() == 0, "try_acquire() waited"
    await asyncio.sleep(0.5)
    assert bucket.try_acquire() is True, "try_acquire() at 0.5 s (1 token refilled) was False"
    assert bucket.try_acquire() is False, "a second try_acquire() at 0.5 s was True: no token left"
    await asyncio.sleep(1)
    assert bucket.try_acquire(2) is True, "try_acquire(2) at 1.5 s (2 tokens) was False"
    assert bucket.try_acquire(1) is False, "try_acquire(1) after taking both tokens was True"


@_async
@pytest.mark.exercise("3.4")
async def test_bucket_try_acquire_does_not_jump_the_line(ex):
    """With acquire(3) waiting, try_acquire() is False even when 1 token is there."""
    async with _Cleanup() as tasks:
        bucket = ex.TokenBucket(1, 5)
        assert bucket.try_acquire(5) is True, "try_acquire(5) on a full bucket of 5 was False"
        log: list[tuple[float, str]] = []
        waiter = tasks.start(_acquire(bucket, 3, "waiter", log))
        await asyncio.sleep(1)
        _raise_if_failed(waiter)
        assert bucket.try_acquire() is False, (
            "try_acquire() at 1 s took the token that acquire(3), waiting since 0 s, is "
            "saving up for: while anyone waits, it returns False"
        )
        await asyncio.wait({waiter}, timeout=60)
        _raise_if_failed(waiter)
        assert _when(log) == {"waiter": 3}, f"acquire(3) returned at {_when(log)}, expected 3 s"


@_async
@pytest.mark.exercise("3.4")
async def test_bucket_rejects_requests_it_could_never_serve(ex):
    """acquire(6) or try_acquire(6) on a bucket of 5, or n=0: ValueError, at once."""
    bucket = ex.TokenBucket(1, 5)
    for n in (6, 0):
        outcome = await _outcome(
            60,
            bucket.acquire(n),
            f"acquire({n}) on a bucket of 5 was still waiting after 60 s: expected "
            "ValueError at once (it could never be served)",
        )
        assert outcome[0] == "raised" and isinstance(outcome[1], ValueError), (
            f"acquire({n}) on a bucket of 5 {_said(outcome)}, expected ValueError: n must "
            "be between 1 and capacity"
        )
        outcome = await _outcome(60, _call(bucket.try_acquire, n), "")
        assert outcome[0] == "raised" and isinstance(outcome[1], ValueError), (
            f"try_acquire({n}) on a bucket of 5 {_said(outcome)}, expected ValueError"
        )
    assert _now() == 0, f"the ValueError came at {_now():g} s, not at once"


@_async
@pytest.mark.exercise("3.4")
async def test_bucket_cancelled_waiter_does_not_hold_up_the_line(ex):
    """acquire(5) waiting is cancelled at 2 s: acquire(1) behind it is served at once."""
    async with _Cleanup() as tasks:
        bucket = ex.TokenBucket(1, 5)
        await _within(60, bucket.acquire(5), _ACQUIRE_HANGS.format(60))
        log: list[tuple[float, str]] = []
        big = tasks.start(_acquire(bucket, 5, "big", log))
        await asyncio.sleep(0)
        small = tasks.start(_acquire(bucket, 1, "small", log))
        await asyncio.sleep(2)
        for task in (big, small):
            _raise_if_failed(task)
        big.cancel()
        await asyncio.wait({small}, timeout=60)
        _raise_if_failed(small)
        assert _when(log).get("small") == 2, (
            "a cancelled waiter leaves the line, and the next one moves up: acquire(1) behind "
            f"the cancelled acquire(5) was served at {_when(log).get('small')} s, expected at "
            "once, at 2 s (2 tokens were there)"
        )


@_async
@pytest.mark.exercise("3.4")
async def test_bucket_cancelled_waiter_takes_no_tokens(ex):
    """acquire(3) cancelled at 1 s takes nothing: at 4 s all 4 refilled tokens are there."""
    async with _Cleanup() as tasks:
        bucket = ex.TokenBucket(1, 5)
        await _within(60, bucket.acquire(5), _ACQUIRE_HANGS.format(60))
        log: list[tuple[float, str]] = []
        waiter = tasks.start(_acquire(bucket, 3, "waiter", log))
        await asyncio.sleep(1)
        _raise_if_failed(waiter)
        waiter.cancel()
        await asyncio.wait({waiter}, timeout=60)
        _raise_if_failed(waiter)
        await asyncio.sleep(3)
        assert bucket.try_acquire(4) is True, (
            "at 4 s try_acquire(4) was False: the bucket refilled 4 tokens since 0 s, but "
            "the acquire(3) cancelled at 1 s kept some (give back what a cancelled waiter "
            "reserved)"
        )



@_async
@pytest.mark.exercise("3.4")
async def test_bucket_waiter_cancelled_as_it_is_served_gives_its_tokens_back(ex):
    """acquire(1) is served, then cancelled before it resumes: its token goes back."""
    async with _Cleanup() as tasks:
        bucket = ex.TokenBucket(1, 5)
        await _within(60, bucket.acquire(5), _ACQUIRE_HANGS.format(60))
        log: list[tuple[float, str]] = []
        big = tasks.start(_acquire(bucket, 5, "big", log))
        await asyncio.sleep(0)
        small = tasks.start(_acquire(bucket, 1, "small", log))
        await asyncio.sleep(2)  # 2 tokens now; acquire(5) at the head holds up acquire(1)
        for task in (big, small):
            _raise_if_failed(task)
        big.cancel()  # the head leaves: acquire(1) is served...
        await asyncio.sleep(0)
        small.cancel()  # ...and cancelled before it could resume and return
        await asyncio.wait({big, small}, timeout=60)
        _raise_if_failed(small)
        assert "small" not in _when(log), (
            f"first come, first served: acquire(1) returned at {_when(log)['small']:g} s, "
            "while acquire(5), ahead of it in the line, was still waiting"
        )
        assert bucket.try_acquire(2) is True, (
            "acquire(1), cancelled just as it was served, kept its token (at 2 s "
            "try_acquire(2) was False): if its future has a result when the CancelledError "
            "comes, give the tokens back"
        )


@_async
@pytest.mark.exercise("3.4")
async def test_bucket_serves_a_thousand_waiters_in_order_at_its_rate(ex):
    """1,000 tasks acquire at once (rate 100/s, capacity 10): 10 at once, then 100 a second."""
    async with _Cleanup() as tasks:
        bucket = ex.TokenBucket(100, 10)
        log: list[tuple[float, str]] = []
        started = [tasks.start(_acquire(bucket, 1, f"t{i}", log)) for i in range(1000)]
        await asyncio.wait(started, timeout=60)
        for task in started:
            _raise_if_failed(task)
        names = [name for _, name in log]
        assert names == [f"t{i}" for i in range(1000)], (
            f"first come, first served: {len(names)} of 1,000 waiters were served, the first "
            "out of order at position "
            f"{next((i for i, n in enumerate(names) if n != f't{i}'), len(names))}"
        )
        late = [(name, t) for i, (t, name) in enumerate(log)
                if abs(t - max(0, i - 9) / 100) > 1e-6]  # fmt: skip
        assert not late, (
            f"the waiters were served off the rate: {late[:3]} ...; expected t0-t9 at 0 s, "
            "then t10 at 0.01 s, t11 at 0.02 s, ... t999 at 9.9 s"
        )
