"""Grading tests for exercises 4.1-4.4 (notebooks/04_distributed_queue.ipynb).

Every test runs on a fakeredis server of its own, so no check sees another's keys and
no Redis server is needed. Each worker is a client with its own connection, and what
travels on that connection goes through a _Wire, which plays the network and the
crashes a real deployment has:

- before each command, control goes back to the event loop, so that the commands of
  workers running at the same time interleave, as they do on a real server (fakeredis
  runs a command the moment it is sent, so without this one worker's two commands
  would always run back to back and a race would never show). A pipeline without
  MULTI is sent command by command too: a real server may run other clients'
  commands between them. A MULTI ... EXEC block or a Lua script is one step.
- after a given number of commands the worker dies: every later command raises
  _Died instead of reaching the server. Whatever the server holds then is what a
  crash would leave.

The tests of 4.2 are plain function calls, with no loop at all. Those of 4.4 run on
looptime's virtual clock, which fakeredis's BLOCK follows; the idle time of a pending
entry is the server's own (real) clock, so a test that needs an entry idle for minutes
sets its idle time with XCLAIM ... IDLE, as a real server would let it.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

import fakeredis
import pytest
from _support import _async, _outcome, _raise_if_failed, _said, _stop, _within

from course_lib.redis import PROTOCOL

MODULE = "ch04_distributed"

# Sync tests (4.2) carry no asyncio mark (_async): pytest-asyncio warns about those.


# --- the lab: a server of the test's own, workers, their wires ---------------------------


class _Died(BaseException):
    """The worker died: raised instead of sending a command (a BaseException, so that
    no ``except Exception:`` in the code under test can carry on as if alive)."""


# What a connection sends by itself when it opens: not the code under test's commands.
_HANDSHAKE = {"HELLO", "AUTH", "CLIENT", "SELECT"}
# More round trips than any answer needs for what these tests ask: past it, a loop
# that never ends fails with a message instead of running until the test times out.
_MAX_ROUND_TRIPS = 2_000


class _Wire:
    """The connection of one worker, as the test sees it.

    ``yields``: how many times to hand control to the loop before each command (an
    int, or a function drawing one). ``dies_after``: the number of commands after
    which the worker dies. ``sent``: each round trip that reached the server, as
    "LMOVE" or "MULTI LTRIM RPUSH EXEC".
    """

    def __init__(
        self, *, yields: int | Callable[[], int] = 1, dies_after: int | None = None
    ) -> None:
        self._yields = yields
        self.dies_after = dies_after
        self.sent: list[str] = []
        self.armed = False  # off while the test sets the client up
        self.died = False

    @property
    def last(self) -> str:
        """The last command before the worker died, for messages."""
        return f"right after its {self.sent[-1]}" if self.sent else "before its first command"

    async def pause(self) -> None:
        count = self._yields() if callable(self._yields) else self._yields
        for _ in range(count):
            await asyncio.sleep(0)

    async def before(self, names: list[str]) -> None:
        """Called before a round trip: dies, or lets others run first."""
        if not self.armed:
            return
        if self.died or (self.dies_after is not None and len(self.sent) >= self.dies_after):
            self.died = True
            raise _Died
        if len(self.sent) >= _MAX_ROUND_TRIPS:
            pytest.fail(
                f"over {_MAX_ROUND_TRIPS:,} commands sent for a few jobs: does it loop forever "
                "(say, on an empty list, where LMOVE returns None, or reading a stream with no "
                "BLOCK)?"
            )
        await self.pause()
        self.sent.append(" ".join(names))


def _split(data: bytes) -> list[tuple[str, bytes]]:
    """The commands packed in ``data`` (RESP arrays of bulk strings): (name, bytes) each."""
    commands: list[tuple[str, bytes]] = []
    i = 0
    try:
        while i < len(data):
            end = data.index(b"\r\n", i)
            count, k, name = int(data[i + 1 : end]), end + 2, "?"
            for n in range(count):
                end = data.index(b"\r\n", k)
                length = int(data[k + 1 : end])
                if n == 0:
                    name = data[end + 2 : end + 2 + length].decode("ascii", "replace").upper()
                k = end + 2 + length + 2
            commands.append((name, data[i:k]))
            i = k
    except ValueError:  # not the shape redis-py packs: one opaque round trip
        return [("?", data)]
    return commands


def _connection_class(base: type, wire: _Wire) -> type:
    """``base`` (fakeredis's connection class) with its sends going through ``wire``."""

    class _WiredConnection(base):
        async def send_packed_command(self, command, check_health=True):
            data = command if isinstance(command, bytes | bytearray) else b"".join(
                bytes(chunk) for chunk in command
            )
            commands = _split(bytes(data))
            if not commands or commands[0][0] in _HANDSHAKE:
                return await super().send_packed_command(command, check_health)
            await wire.before([name for name, _ in commands])
            if len(commands) > 1 and commands[0][0] != "MULTI" and wire.armed:
                # A pipeline without MULTI is no transaction: on a real server other
                # clients' commands may run between its commands. Here they do.
                for n, (_, part) in enumerate(commands):
                    if n:
                        await wire.pause()
                    await super().send_packed_command(part, check_health)
                return None
            return await super().send_packed_command(command, check_health)

    return _WiredConnection


class _Lab:
    """``async with _Lab() as lab:`` a fakeredis server of the test's own.

    ``lab.redis`` is a client to set up and look (its wire never pauses nor dies);
    ``await lab.worker(wire)`` is another client, whose commands go through ``wire``.
    Every client is closed when the block ends.
    """

    def __init__(self) -> None:
        self.server = fakeredis.FakeServer()
        self._clients: list[Any] = []

    async def worker(self, wire: _Wire | None = None):
        client = fakeredis.FakeAsyncRedis(server=self.server, protocol=PROTOCOL)
        self._clients.append(client)
        if wire is not None:
            pool = client.connection_pool
            pool.connection_class = _connection_class(pool.connection_class, wire)
            await client.ping()  # connected before the race starts, so nobody lags behind
            wire.armed = True
        return client

    async def __aenter__(self) -> _Lab:
        # Wired too, with no pauses: a claim() that loops forever on it still ends.
        self.redis = await self.worker(_Wire(yields=0))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for client in self._clients:
            await client.aclose()


async def _at_once(aws: Iterable[Awaitable[Any]], hint: str) -> list[Any]:
    """Run them at the same time; their results, or the first error one of them raised
    (NotImplementedError first, so that a stub says "not implemented yet")."""
    results = await _within(60, asyncio.gather(*aws, return_exceptions=True), hint)
    errors = [r for r in results if isinstance(r, BaseException)]
    for error in errors:
        if isinstance(error, NotImplementedError):
            raise error
    if errors:
        raise errors[0]
    return results


def _show(jobs: Any) -> str:
    """[b'j0', b'j1'] as '[j0 j1]', short enough for a one-line message; not a list of
    bytes as its repr."""
    if not (isinstance(jobs, list) and all(isinstance(j, bytes) for j in jobs)):
        return repr(jobs)
    return "[" + " ".join(j.decode(errors="replace") for j in jobs) + "]"


def _jobs(n: int) -> list[bytes]:
    return [f"j{i}".encode() for i in range(n)]


SOURCE, PROCESSING = "jobs", "jobs:processing"
_HANGS = "{} was still running after 60 s: does it wait for something that never comes?"


# --- 4.1 claim and ack ---------------------------------------------------------------------


async def _claim(ex, client, n: int) -> Any:
    return await _within(60, ex.claim(client, SOURCE, PROCESSING, n), _HANGS.format("claim()"))


async def _claim_until_empty(ex, client, sizes: Iterable[int]) -> list[bytes]:
    """One worker's claims of ``sizes`` jobs in turn, again and again, until one gets []."""
    taken: list[bytes] = []
    for size in sizes:
        batch = await ex.claim(client, SOURCE, PROCESSING, size)
        if not batch:
            return taken
        taken += batch
    raise AssertionError("claim() kept returning jobs after the list was surely empty")


def _check_exactly_once(jobs: list[bytes], taken: list[bytes], how: str) -> None:
    counts = Counter(taken)
    twice = [j for j in jobs if counts[j] > 1]
    never = [j for j in jobs if counts[j] == 0]
    assert not twice and not never, (
        f"{how}: {len(twice)} of {len(jobs)} jobs went to two of them, {len(never)} to "
        "none: LRANGE then LTRIM is the article's race; move each job atomically (LMOVE, Lua)"
    )
    strangers = [j for j in counts if j not in jobs]
    assert not strangers, f"{how}: claim() returned {_show(strangers[:5])}, never queued"


@_async
@pytest.mark.exercise("4.1")
async def test_claim_takes_the_oldest_jobs_first(ex):
    """claim(n) returns the n oldest jobs, in order; the next claim goes on from there."""
    async with _Lab() as lab:
        jobs = _jobs(10)
        await lab.redis.rpush(SOURCE, *jobs)
        first = await _claim(ex, lab.redis, 4)
        assert first == jobs[:4], (
            f"claim(n=4) of [j0 ... j9] returned {_show(first)}, expected {_show(jobs[:4])} (a "
            "list): jobs are pushed on the right, so take them from the left, oldest first"
        )
        second = await _claim(ex, lab.redis, 3)
        assert second == jobs[4:7], (
            f"a second claim(n=3) returned {_show(second)}, expected {_show(jobs[4:7])}: the "
            "next oldest"
        )


@_async
@pytest.mark.exercise("4.1")
async def test_claim_takes_what_is_left_then_returns_an_empty_list(ex):
    """claim(5) with 3 jobs left takes those 3; then claim() gives [], as on a missing list."""
    async with _Lab() as lab:
        jobs = _jobs(3)
        await lab.redis.rpush(SOURCE, *jobs)
        got = await _claim(ex, lab.redis, 5)
        assert got == jobs, (
            f"claim(n=5) with 3 jobs queued returned {_show(got)}, expected {_show(jobs)}"
        )
        got = await _claim(ex, lab.redis, 5)
        assert got == [], f"claim(n=5) on an emptied list returned {got!r}, expected []"
        await lab.redis.delete(SOURCE, PROCESSING)
        got = await _claim(ex, lab.redis, 5)
        assert got == [], f"claim(n=5) on a list that does not exist returned {got!r}, expected []"


@_async
@pytest.mark.exercise("4.1")
async def test_claimed_jobs_wait_in_processing_until_acked(ex):
    """Claimed jobs sit in the processing list; ack() removes one: True, then False."""
    async with _Lab() as lab:
        jobs = [b"a", b"b", b"c", b"d", b"e"]
        await lab.redis.rpush(SOURCE, *jobs)
        await _claim(ex, lab.redis, 3)
        left = await lab.redis.lrange(SOURCE, 0, -1)
        assert left == [b"d", b"e"], (
            f"after claim(n=3) of [a b c d e] the source list held {_show(left)}, expected [d e]"
        )
        held = sorted(await lab.redis.lrange(PROCESSING, 0, -1))
        assert held == [b"a", b"b", b"c"], (
            f"after claim(n=3) the processing list held {_show(held)}, expected [a b c]: a "
            "claimed job waits there until it is acked"
        )
        done = await _within(60, ex.ack(lab.redis, PROCESSING, b"b"), _HANGS.format("ack()"))
        assert done is True, f"ack() of a claimed job returned {done!r}, expected True (a bool)"
        held = sorted(await lab.redis.lrange(PROCESSING, 0, -1))
        assert held == [b"a", b"c"], (
            f"after ack(b'b') the processing list held {_show(held)}, expected [a c]"
        )
        again = await _within(60, ex.ack(lab.redis, PROCESSING, b"b"), _HANGS.format("ack()"))
        assert again is False, (
            f"a second ack(b'b') returned {again!r}, expected False: it was not there any more"
        )
        held = sorted(await lab.redis.lrange(PROCESSING, 0, -1))
        assert held == [b"a", b"c"], f"a second ack(b'b') left {_show(held)}, expected [a c]"


@_async
@pytest.mark.exercise("4.1")
async def test_ack_removes_one_copy_of_a_job_queued_twice(ex):
    """The same job queued twice is two jobs: ack() removes one copy, not both."""
    async with _Lab() as lab:
        await lab.redis.rpush(SOURCE, b"x", b"x", b"y")
        await _claim(ex, lab.redis, 3)
        await _within(60, ex.ack(lab.redis, PROCESSING, b"x"), _HANGS.format("ack()"))
        held = sorted(await lab.redis.lrange(PROCESSING, 0, -1))
        assert held == [b"x", b"y"], (
            f"one ack(b'x') with two x in processing left {_show(held)}, expected [x y]: remove "
            "one copy (LREM with count 1), the other is still to do"
        )


@_async
@pytest.mark.exercise("4.1")
async def test_claim_refuses_n_below_1(ex):
    """claim(n=0) or claim(n=-1): ValueError, and no job moves."""
    async with _Lab() as lab:
        jobs = _jobs(5)
        await lab.redis.rpush(SOURCE, *jobs)
        for n in (0, -1):
            outcome = await _outcome(60, ex.claim(lab.redis, SOURCE, PROCESSING, n),
                                     _HANGS.format(f"claim(n={n})"))  # fmt: skip
            assert outcome[0] == "raised" and isinstance(outcome[1], ValueError), (
                f"claim(n={n}) {_said(outcome)}, expected ValueError (LRANGE 0 -1 would "
                "read the whole list)"
            )
        left = await lab.redis.lrange(SOURCE, 0, -1)
        assert left == jobs, f"claim(n=0) moved jobs: the source list holds {_show(left)}"


@_async
@pytest.mark.exercise("4.1")
async def test_two_claimers_at_once_never_share_or_lose_a_job(ex):
    """Two workers claim 10 of 20 jobs at the same time: each job goes to exactly one."""
    async with _Lab() as lab:
        jobs = _jobs(20)
        await lab.redis.rpush(SOURCE, *jobs)
        workers = [await lab.worker(_Wire()) for _ in range(2)]
        batches = await _at_once(
            (ex.claim(w, SOURCE, PROCESSING, 10) for w in workers), _HANGS.format("claim()")
        )
        _check_exactly_once(jobs, [j for b in batches for j in b], "2 claims of 10 at once")
        for batch in batches:
            assert batch == sorted(batch, key=jobs.index), (
                f"a claim returned {_show(batch)}: not in the order the jobs were queued"
            )
        held = await lab.redis.lrange(PROCESSING, 0, -1)
        assert sorted(held, key=jobs.index) == jobs, (
            f"after both claims the processing list held {len(held)} jobs, expected all 20"
        )


@_async
@pytest.mark.exercise("4.1")
async def test_many_claimers_take_every_job_exactly_once(ex):
    """4 workers claim batches of 1-7 until the list is empty: no job twice, none lost."""
    for seed in (1, 2, 3):  # three interleavings, the same on every run
        rng = random.Random(seed)
        async with _Lab() as lab:
            jobs = _jobs(60)
            await lab.redis.rpush(SOURCE, *jobs)
            workers = [
                await lab.worker(_Wire(yields=partial(rng.randint, 0, 3))) for _ in range(4)
            ]
            sizes = [1, 3, 5, 7] * 25  # each worker starts at another size, then cycles
            taken = await _at_once(
                (_claim_until_empty(ex, w, sizes[i:]) for i, w in enumerate(workers)),
                _HANGS.format("claim()"),
            )
            _check_exactly_once(jobs, [j for t in taken for j in t], "4 workers claiming at once")
            for each in taken:
                assert each == sorted(each, key=jobs.index), (
                    f"one worker's claims returned {_show(each[:12])}...: out of the order queued"
                )
            held = await lab.redis.lrange(PROCESSING, 0, -1)
            assert sorted(held, key=jobs.index) == jobs, (
                f"once every job was claimed the processing list held {len(held)}, expected 60"
            )


@_async
@pytest.mark.exercise("4.1")
async def test_a_worker_dying_in_the_middle_of_a_claim_loses_no_job(ex):
    """A worker dies after any command of claim(5): each job is still in one list, once."""
    jobs = _jobs(5)
    for dies_after in range(40):
        async with _Lab() as lab:
            await lab.redis.rpush(SOURCE, *jobs)
            wire = _Wire(dies_after=dies_after)
            worker = await lab.worker(wire)
            try:
                await _within(60, ex.claim(worker, SOURCE, PROCESSING, 5),
                              _HANGS.format("claim()"))  # fmt: skip
            except _Died:
                pass
            left = await lab.redis.lrange(SOURCE, 0, -1)
            held = await lab.redis.lrange(PROCESSING, 0, -1)
            counts = Counter(left + held)
            lost = [j for j in jobs if counts[j] == 0]
            assert not lost, (
                f"a worker that died {wire.last} lost {_show(lost)}: in neither list. Move each "
                "job in one step (LMOVE, or a Lua script)"
            )
            both = [j for j in jobs if counts[j] > 1]
            assert not both, (
                f"a worker that died {wire.last} left {_show(both)} in both lists: they would "
                "run twice. Move each job in one step (LMOVE, or a Lua script)"
            )
            if not wire.died:  # the claim ended before its turn to die: every step tried
                return


# --- 4.2 decide ----------------------------------------------------------------------------


def _decide(ex, *args: Any, **kwargs: Any):
    """``ex.decide(...)``, checked to return a Decision."""
    got = ex.decide(*args, **kwargs)
    assert isinstance(got, ex.Decision), (
        f"decide() returned {got!r}: return a Decision(action, delay_s, reason)"
    )
    return got


def _call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
    return f"decide({', '.join(shown)})"


def _refused(ex, args: tuple[Any, ...], kwargs: dict[str, Any], expected: type) -> str | None:
    """None if ``decide(*args, **kwargs)`` raised ``expected``, else what it did instead."""
    try:
        got = ex.decide(*args, **kwargs)
    except NotImplementedError:
        raise
    except expected:
        return None
    except Exception as exc:
        return f"raised {exc!r}"
    return f"returned {got!r}"


@pytest.mark.exercise("4.2")
def test_decide_acks_a_success(ex):
    """No error: "ack", with no delay, on any attempt, the last one too."""
    for attempt in (1, 2, 3):
        got = _decide(ex, attempt, 3, None, retry_on=(OSError,))
        assert got.action == "ack" and got.delay_s == 0, (
            f"decide({attempt}, 3, None, retry_on=(OSError,)) returned {got!r}, expected action "
            "'ack', delay_s 0: the attempt succeeded"
        )


@pytest.mark.exercise("4.2")
def test_decide_retries_with_exponential_backoff(ex):
    """Retryable errors: "retry" after base_s, 2*base_s, 4*base_s... (1, 2, 4, 8, 16 s)."""
    for base_s, expected in ((1.0, [1, 2, 4, 8, 16]), (0.5, [0.5, 1, 2, 4, 8])):
        got = [_decide(ex, a, 10, ConnectionError("reset"), retry_on=(ConnectionError,),
                       base_s=base_s) for a in range(1, 6)]  # fmt: skip
        actions = [d.action for d in got]
        assert actions == ["retry"] * 5, (
            f"attempts 1-5 of 10 failing with ConnectionError (in retry_on) gave {actions}, "
            "expected 'retry' each time: attempts are left"
        )
        delays = [d.delay_s for d in got]
        assert all(math.isclose(d, e) for d, e in zip(delays, expected, strict=True)), (
            f"with base_s={base_s:g} the delays after attempts 1-5 were "
            f"{[round(d, 3) for d in delays]}, expected {expected}: base_s * 2 ** (attempt - 1)"
        )


@pytest.mark.exercise("4.2")
def test_decide_caps_the_delay_at_max_s(ex):
    """The delay never exceeds max_s, even for attempt 1100 (no OverflowError)."""
    got = [_decide(ex, a, 20, OSError("down"), retry_on=(OSError,), base_s=1, max_s=10).delay_s
           for a in (4, 5, 6, 19)]  # fmt: skip
    assert all(math.isclose(d, e) for d, e in zip(got, [8, 10, 10, 10], strict=True)), (
        f"with base_s=1, max_s=10 the delays after attempts 4, 5, 6 and 19 were {got}, "
        "expected [8, 10, 10, 10]: min(max_s, base_s * 2 ** (attempt - 1))"
    )
    try:
        late = _decide(ex, 1100, 2000, OSError("down"), retry_on=(OSError,), base_s=0.5,
                       max_s=10.0)  # fmt: skip
    except OverflowError:
        pytest.fail(
            "attempt 1100 of 2000 (base_s=0.5, max_s=10.0) raised OverflowError: 2 ** 1099 is "
            "too big for a float; once past max_s, stop doubling"
        )
    assert late.action == "retry" and math.isclose(late.delay_s, 10), (
        f"decide(1100, 2000, OSError(), base_s=0.5, max_s=10.0) returned {late!r}, expected "
        "'retry' in 10 s"
    )


@pytest.mark.exercise("4.2")
def test_decide_gives_up_when_the_last_attempt_fails(ex):
    """A retried error on the last attempt (or later): "dead", no delay, the type in the reason."""
    error = ConnectionError("reset")
    for attempt, max_attempts in ((3, 3), (1, 1), (5, 3)):
        got = _decide(ex, attempt, max_attempts, error, retry_on=(ConnectionError,))
        assert got.action == "dead" and got.delay_s == 0, (
            f"expected action 'dead', delay_s 0: no attempt is left after attempt {attempt} of "
            f"{max_attempts}; decide({attempt}, {max_attempts}, ConnectionError(), "
            f"retry_on=(ConnectionError,)) returned {got!r}"
        )
        assert "ConnectionError" in got.reason, (
            f"the reason for giving up, {got.reason!r}, does not name the error: ConnectionError"
        )
    got = _decide(ex, 2, 3, error, retry_on=(ConnectionError,))
    assert got.action == "retry", (
        f"decide(2, 3, ConnectionError(), retry_on=(ConnectionError,)) returned {got!r}, "
        "expected 'retry': attempt 3 is left"
    )


@pytest.mark.exercise("4.2")
def test_decide_fails_an_error_it_does_not_retry_at_once(ex):
    """An error outside retry_on: "failed" (not "dead") at once, the type in the reason."""
    got = _decide(ex, 1, 5, ValueError("no such user"), retry_on=(ConnectionError,))
    assert got.action != "dead", (
        "expected 'failed', not 'dead': the library keeps 'dead' for a dead letter (out of "
        "attempts); an error not worth retrying is FAILED, an answer for the caller. "
        f"decide(1, 5, ValueError(), retry_on=(ConnectionError,)) returned {got!r}"
    )
    assert got.action == "failed" and got.delay_s == 0, (
        f"decide(1, 5, ValueError(), retry_on=(ConnectionError,)) returned {got!r}, expected "
        "'failed' at once: retrying the same bad input fails the same way"
    )
    assert "ValueError" in got.reason, (
        f"the reason {got.reason!r} does not say which error: ValueError"
    )


@pytest.mark.exercise("4.2")
def test_decide_retries_subclasses_of_retry_on(ex):
    """retry_on matches as except does: subclasses retry (ConnectionRefusedError for OSError)."""
    cases = [
        ((OSError,), ConnectionRefusedError("refused"), "retry"),
        ((OSError,), TimeoutError("slow"), "retry"),  # TimeoutError is an OSError
        ((KeyError, ConnectionError), ConnectionResetError("reset"), "retry"),
        ((ConnectionError,), OSError("disk full"), "failed"),  # a base class is no subclass
    ]
    for retry_on, error, expected in cases:
        got = _decide(ex, 1, 3, error, retry_on=retry_on)
        names = ", ".join(c.__name__ for c in retry_on)
        assert got.action == expected, (
            f"a {type(error).__name__} with retry_on=({names},) gave {got.action!r}, expected "
            f"{expected!r}: retry it when isinstance(error, retry_on)"
        )


@pytest.mark.exercise("4.2")
def test_decide_names_the_error_type_in_the_reason(ex):
    """The reason of a retry, a failed and a dead job names the error's type (a custom one too)."""

    class PaymentDeclined(Exception):
        pass

    error = PaymentDeclined("card expired")
    for args, kwargs, what in (
        ((1, 3, error), {"retry_on": (PaymentDeclined,)}, "a retry"),
        ((3, 3, error), {"retry_on": (PaymentDeclined,)}, "giving up after the last attempt"),
        ((1, 3, error), {"retry_on": (ConnectionError,)}, "an error that is not retried"),
    ):
        got = _decide(ex, *args, **kwargs)
        assert "PaymentDeclined" in got.reason, (
            f"the reason for {what} was {got.reason!r}: name the error's type "
            "(type(error).__name__), here PaymentDeclined"
        )


@pytest.mark.exercise("4.2")
def test_decide_refuses_to_settle_a_cancellation(ex):
    """CancelledError, KeyboardInterrupt, SystemExit: TypeError, whatever retry_on says."""
    for error in (asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(1)):
        for kwargs in ({"retry_on": (Exception,)}, {"retry_on": (BaseException,)}):
            args = (1, 3, error)
            wrong = _refused(ex, args, kwargs, TypeError)
            assert wrong is None, (
                f"a cancelled job is handed back, never settled: expected TypeError, but "
                f"{_call(args, kwargs)} {wrong}"
            )


@pytest.mark.exercise("4.2")
def test_decide_refuses_attempts_below_1(ex):
    """attempt 0 or max_attempts 0: ValueError (attempts count from 1)."""
    kwargs = {"retry_on": (ValueError,)}
    for args in ((0, 3, None), (1, 0, None), (0, 3, ValueError("x"))):
        wrong = _refused(ex, args, kwargs, ValueError)
        assert wrong is None, f"{_call(args, kwargs)} {wrong}, expected ValueError"


# --- 4.3 apply_payment ---------------------------------------------------------------------


async def _pay(ex, client, payment_id: str, account: str, amount: int, **kwargs: Any) -> Any:
    return await _within(
        60,
        ex.apply_payment(client, payment_id, account, amount, **kwargs),
        _HANGS.format("apply_payment()"),
    )


async def _balance(lab: _Lab, account: str) -> int:
    raw = await lab.redis.get(f"balance:{account}")
    return 0 if raw is None else int(raw)


def _is(got: Any, expected: int) -> bool:
    return type(got) is int and got == expected


@_async
@pytest.mark.exercise("4.3")
async def test_payment_credits_the_amount_and_returns_the_balance(ex):
    """Payments add to balance:<account> and return the new balance, as an int."""
    async with _Lab() as lab:
        await lab.redis.set("balance:carol", 10)
        for payment_id, account, amount, expected in (
            ("p1", "alice", 100, 100),
            ("p2", "alice", 50, 150),
            ("p3", "bob", 7, 7),
            ("p4", "carol", 5, 15),
        ):
            got = await _pay(ex, lab.redis, payment_id, account, amount)
            assert _is(got, expected), (
                f"apply_payment({payment_id!r}, {account!r}, {amount}) returned {got!r}, expected "
                f"the new balance {expected} (an int)"
            )
            stored = await _balance(lab, account)
            assert stored == expected, (
                f"after apply_payment({payment_id!r}, {account!r}, {amount}) balance:{account} "
                f"holds {stored}, expected {expected}"
            )


@_async
@pytest.mark.exercise("4.3")
async def test_a_payment_applied_again_changes_nothing(ex):
    """Running payment p1 again adds nothing and returns the balance as it is."""
    async with _Lab() as lab:
        await _pay(ex, lab.redis, "p1", "alice", 100)
        again = await _pay(ex, lab.redis, "p1", "alice", 100)
        assert _is(again, 100), (
            f"apply_payment('p1', 'alice', 100) run a second time returned {again!r}, expected "
            "100 (an int): the balance, unchanged"
        )
        assert await _balance(lab, "alice") == 100, (
            f"p1 applied twice left the balance at {await _balance(lab, 'alice')}, expected 100"
        )
        await _pay(ex, lab.redis, "p2", "alice", 50)
        late = await _pay(ex, lab.redis, "p1", "alice", 100)
        assert _is(late, 150) and await _balance(lab, "alice") == 150, (
            f"p1 applied again after p2 returned {late!r} and left the balance at "
            f"{await _balance(lab, 'alice')}, expected 150 and 150"
        )


@_async
@pytest.mark.exercise("4.3")
async def test_twenty_runs_of_one_payment_at_once_credit_it_once(ex):
    """20 workers run payment p1 at the same time: the balance grows once; all return it."""
    for seed in (1, 2):  # two interleavings, the same on every run
        rng = random.Random(seed)
        async with _Lab() as lab:
            workers = [
                await lab.worker(_Wire(yields=partial(rng.randint, 1, 3))) for _ in range(20)
            ]
            got = await _at_once(
                (ex.apply_payment(w, "p1", "alice", 100) for w in workers),
                _HANGS.format("apply_payment()"),
            )
            balance = await _balance(lab, "alice")
            assert balance == 100, (
                f"20 runs of one payment at once credited it {balance / 100:g} times: "
                "check-then-act (GET, then INCRBY) is a race; check and add in one step (Lua, "
                "or WATCH/MULTI)"
            )
            wrong = [g for g in got if not _is(g, 100)]
            assert not wrong or not all(type(g) is int for g in wrong), (
                f"runs of p1 returned {wrong[:5]!r}, expected 100 from each: a run that finds "
                "p1 applied must find it credited too (one step: Lua, or MULTI/EXEC)"
            )
            assert not wrong, (
                f"runs of p1 returned {wrong[:5]!r}, expected 100 (an int) from each"
            )


@_async
@pytest.mark.exercise("4.3")
async def test_a_run_cut_short_then_run_again_credits_once(ex):
    """A worker dies after any command of a run; the retry then credits once, not 0 or 2 times."""
    for dies_after in range(40):
        async with _Lab() as lab:
            await lab.redis.set("balance:alice", 10)
            wire = _Wire(dies_after=dies_after)
            try:
                await _pay(ex, await lab.worker(wire), "p1", "alice", 100)
            except _Died:
                pass
            got = await _pay(ex, lab.redis, "p1", "alice", 100)
            balance = await _balance(lab, "alice")
            times = (balance - 10) / 100
            assert balance == 110, (
                f"a run that died {wire.last}, then its retry, credited p1 {times:g} times: "
                "record the payment and credit it in one step (Lua, or MULTI/EXEC)"
            )
            assert _is(got, 110), f"the retry returned {got!r}, expected the balance, 110"
            if not wire.died:
                return


@_async
@pytest.mark.exercise("4.3")
async def test_the_record_of_a_payment_expires_and_the_balance_never(ex):
    """applied:<id> expires after ttl_s (default a day); balance:<account> has no TTL."""
    async with _Lab() as lab:
        await _pay(ex, lab.redis, "p1", "alice", 100, ttl_s=600)
        await _pay(ex, lab.redis, "p2", "alice", 100)
        for key, low, high in (("applied:p1", 590, 600), ("applied:p2", 86_390, 86_400)):
            ttl = await lab.redis.ttl(key)
            assert ttl != -2, f"there is no key {key}: record each payment under applied:<id>"
            assert ttl != -1, f"{key} never expires (TTL -1): set it with EX ttl_s"
            assert low <= ttl <= high, f"{key} expires in {ttl} s, expected {high} (ttl_s)"
        ttl = await lab.redis.ttl("balance:alice")
        assert ttl == -1, f"balance:alice expires in {ttl} s: money must not vanish; no TTL on it"


# --- 4.4 consume ---------------------------------------------------------------------------

STREAM, GROUP = "jobs:stream", "workers"
_CONSUME_HANGS = (
    "never BLOCK 0 (on an idle stream that read never returns), and check stop before each "
    "read: consume() still ran 60 s after stop was set"
)


async def _stream(lab: _Lab, n: int) -> list[bytes]:
    """A stream of ``n`` entries {n: i} and the group, reading from the start; their ids."""
    await lab.redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    pipe = lab.redis.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, {"n": i})
    return list(await pipe.execute()) if n else []


class _Handler:
    """A ``handle(entry_id, fields)`` that records what it is given.

    ``done`` (shared between handlers if given): the numbers of the entries whose handler
    returned; ``stop`` is set once it holds ``until`` of them. ``fail``: numbers whose
    handler raises. ``hold``: numbers whose handler never returns (``started`` is set).
    ``lab``: look, as each call starts, whether its entry is still pending.
    """

    def __init__(self, stop: asyncio.Event, *, until: int | None = None,
                 done: list[int] | None = None, fail: Iterable[int] = (),
                 hold: Iterable[int] = (), lab: _Lab | None = None) -> None:  # fmt: skip
        self.stop, self.until = stop, until
        self.done = [] if done is None else done
        self.fail, self.hold, self.lab = set(fail), set(hold), lab
        self.calls: list[int] = []
        self.acked_already: list[int] = []
        self.started = asyncio.Event()

    async def __call__(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        n = int(fields[b"n"])
        self.calls.append(n)
        if self.lab is not None:
            rows = await self.lab.redis.xpending_range(STREAM, GROUP, entry_id, entry_id, 1)
            if not rows:
                self.acked_already.append(n)
        await asyncio.sleep(0)  # a handler does I/O: others run meanwhile
        if n in self.hold:
            self.started.set()
            await asyncio.Event().wait()
        if n in self.fail:
            raise ValueError(f"entry {n} is bad")
        self.done.append(n)
        if self.until is not None and len(self.done) >= self.until:
            self.stop.set()


async def _consume(ex, client, consumer: str, handle: _Handler, *, limit_s: float = 5.0,
                   **options: Any) -> int:  # fmt: skip
    """``ex.consume(...)`` until its handler sets stop, or ``limit_s`` (virtual) seconds."""
    options = {"block_ms": 100, "min_idle_ms": 60_000} | options
    timer = asyncio.get_running_loop().call_later(limit_s, handle.stop.set)
    try:
        return await _within(
            limit_s + 60,
            ex.consume(client, STREAM, GROUP, consumer, handle, stop=handle.stop, **options),
            _CONSUME_HANGS,
        )
    finally:
        timer.cancel()


async def _pending(lab: _Lab) -> dict[int, str]:
    """The pending entries: {number: consumer}."""
    rows = await lab.redis.xpending_range(STREAM, GROUP, "-", "+", 10_000)
    numbers = {}
    for row in rows:
        found = await lab.redis.xrange(STREAM, row["message_id"], row["message_id"])
        numbers[int(found[0][1][b"n"])] = row["consumer"].decode()
    return numbers


async def _age(lab: _Lab, idle_ms: int = 120_000) -> None:
    """Make every pending entry look idle for ``idle_ms``, its consumer unchanged."""
    for row in await lab.redis.xpending_range(STREAM, GROUP, "-", "+", 10_000):
        await lab.redis.xclaim(STREAM, GROUP, row["consumer"], 0, [row["message_id"]],
                               idle=idle_ms, justid=True)  # fmt: skip


@_async
@pytest.mark.exercise("4.4")
async def test_consume_handles_new_entries_and_acks_each(ex):
    """5 entries: each handled once, in order, and acked; consume() returns 5 once stopped."""
    async with _Lab() as lab:
        await _stream(lab, 5)
        handle = _Handler(asyncio.Event(), until=5)
        got = await _consume(ex, lab.redis, "A", handle, count=2)
        assert handle.calls == [0, 1, 2, 3, 4], (
            "read new entries with XREADGROUP ... STREAMS stream >, COUNT count at a time: the "
            f"handler was called for entries {handle.calls}, expected [0, 1, 2, 3, 4]"
        )
        left = await _pending(lab)
        assert not left, (
            f"XACK each entry once handle() has returned: entries {sorted(left)} are still "
            "pending after their handler returned"
        )
        assert got == 5, f"consume() returned {got!r}, expected 5: the number of entries acked"


@pytest.mark.exercise("4.4")
def test_consume_refuses_count_or_block_below_1(ex):
    """count=0 or block_ms=0: ValueError (BLOCK 0 waits for ever), before any command."""
    for options in ({"count": 0}, {"block_ms": 0}, {"block_ms": -1}):
        coro = ex.consume(None, STREAM, GROUP, "A", None, stop=asyncio.Event(), **options)
        try:
            coro.send(None)
        except NotImplementedError:
            raise
        except ValueError:
            continue
        except Exception as exc:
            pytest.fail(f"consume({options}) raised {exc!r} before ValueError: check the "
                        "arguments first")  # fmt: skip
        except StopIteration:
            pytest.fail(f"consume({options}) returned: expected ValueError")
        finally:
            coro.close()
        pytest.fail(f"consume({options}) went on to send a command: expected ValueError first "
                    "(BLOCK 0 is a read that never returns on an idle stream)")  # fmt: skip


@_async
@pytest.mark.exercise("4.4")
async def test_an_entry_is_acked_only_after_its_handler_returns(ex):
    """No entry is acked before its handler returned; one whose handler raised stays pending."""
    async with _Lab() as lab:
        await _stream(lab, 5)
        handle = _Handler(asyncio.Event(), until=4, fail={2}, lab=lab)
        await _consume(ex, lab.redis, "A", handle)
        assert not handle.acked_already, (
            "XACK only once handle() has returned: entries "
            f"{handle.acked_already} were acked before their handler ran (a crash loses them)"
        )
        assert sorted(handle.done) == [0, 1, 3, 4], (
            "catch the handler's Exception and go on with the next entry: with entry 2's "
            f"handler raising, those of {sorted(handle.done)} returned, expected [0, 1, 3, 4]"
        )
        left = await _pending(lab)
        assert left == {2: "A"}, (
            "an entry whose handler raised stays pending (no XACK), reclaimed after "
            f"min_idle_ms; the others are acked. Pending: {left}, expected {{2: 'A'}}"
        )


@_async
@pytest.mark.exercise("4.4")
async def test_a_cancelled_consumers_entry_is_reclaimed_after_min_idle(ex):
    """A consumer cancelled mid-handler leaves the entry pending; another takes it once idle."""
    async with _Lab() as lab:
        await _stream(lab, 3)
        hung = _Handler(asyncio.Event(), hold={0}, lab=lab)
        a = asyncio.create_task(ex.consume(await lab.worker(_Wire()), STREAM, GROUP, "A", hung,
                                           stop=hung.stop, count=1, block_ms=100))  # fmt: skip
        try:
            await _within(60, asyncio.wait([a, asyncio.ensure_future(hung.started.wait())],
                                           return_when=asyncio.FIRST_COMPLETED),
                          "consume() never called the handler of the first entry")  # fmt: skip
            _raise_if_failed(a)
        finally:
            await _stop(a)
        assert not hung.acked_already, (
            "XACK only once handle() has returned: entry 0 was acked before its handler ran, "
            "lost when A crashed (here: was cancelled)"
        )
        left = await _pending(lab)
        assert left.get(0) == "A", (
            "leave an entry unacked until its handler returns: A was cancelled in entry 0's "
            f"handler, and entry 0 is not pending for A (pending: {left})"
        )
        # B starts at once: A's entry has been idle for milliseconds only.
        fresh = _Handler(asyncio.Event(), until=2)
        await _consume(ex, await lab.worker(), "B", fresh, limit_s=2)
        assert 0 not in fresh.calls, (
            "pass min_idle_time=min_idle_ms to XAUTOCLAIM, or live consumers' entries run "
            "twice: B took A's entry 0, idle for a few ms only (min_idle_ms=60000)"
        )
        await _age(lab)  # A's entry: idle for 2 minutes now
        late = _Handler(asyncio.Event(), until=1)
        await _consume(ex, await lab.worker(), "B", late, limit_s=5)
        assert 0 in late.done, (
            "a dead consumer's entries stay pending for ever: XAUTOCLAIM those idle for "
            "min_idle_ms, each turn. B never took A's entry 0, idle for 2 minutes"
        )
        assert not await _pending(lab), f"still pending at the end: {await _pending(lab)}"


@_async
@pytest.mark.exercise("4.4")
async def test_a_consumer_dying_after_any_command_loses_no_entry(ex):
    """A consumer dies after any command: nothing acked unhandled; another finishes the rest."""
    for dies_after in range(40):
        async with _Lab() as lab:
            await _stream(lab, 3)
            done: list[int] = []
            wire = _Wire(dies_after=dies_after)
            first = _Handler(asyncio.Event(), until=3, done=done, lab=lab)
            try:
                await _consume(ex, await lab.worker(wire), "A", first)
            except _Died:
                pass
            info = (await lab.redis.xinfo_groups(STREAM))[0]
            last = info["last-delivered-id"]
            left = await _pending(lab)
            read = [int(f[b"n"]) for _, f in await lab.redis.xrange(STREAM, "-", last)]
            acked = [n for n in read if n not in left]
            unhandled = [n for n in acked if n not in done]
            assert not unhandled, (
                "XACK each entry only after handle() returns: a consumer that died "
                f"{wire.last} had acked entries {unhandled}, never handled: lost"
            )
            await _age(lab)
            second = _Handler(asyncio.Event(), until=3, done=done)
            await _consume(ex, await lab.worker(), "B", second)
            never = sorted(set(range(3)) - set(done))
            assert not never, (
                "reclaim idle entries with XAUTOCLAIM: after a consumer died "
                f"{wire.last}, another never handled entries {never}, idle for 2 minutes"
            )
            left = await _pending(lab)
            assert not left, f"after both consumers, entries {left} are still pending"
            if not wire.died:  # the run ended before its turn to die: every step tried
                return


@_async
@pytest.mark.exercise("4.4")
async def test_a_restarted_consumer_handles_its_own_pending_entries_first(ex):
    """Restarted under its name, A first handles the 3 entries it read before, then the new."""
    async with _Lab() as lab:
        await _stream(lab, 5)
        await lab.redis.xreadgroup(GROUP, "A", {STREAM: ">"}, count=3)  # then A crashed
        handle = _Handler(asyncio.Event(), until=5)
        await _consume(ex, lab.redis, "A", handle, limit_s=3)
        missed = [n for n in range(3) if n not in handle.calls]
        assert not missed, (
            "read own pending entries first (XREADGROUP with id 0; '>' gives only new ones): "
            f"A, restarted, never handled entries {missed}, read before its restart"
        )
        assert handle.calls == [0, 1, 2, 3, 4], (
            "its own pending entries first, then the new ones, each once: A handled "
            f"{handle.calls}, expected [0, 1, 2, 3, 4]"
        )


@_async
@pytest.mark.exercise("4.4")
async def test_stop_is_honoured_within_one_block(ex):
    """stop set while consume() waits on an idle stream: it returns within one block_ms."""
    async with _Lab() as lab:
        await _stream(lab, 0)
        loop = asyncio.get_running_loop()
        handle = _Handler(asyncio.Event())
        task = asyncio.create_task(ex.consume(await lab.worker(_Wire()), STREAM, GROUP, "A",
                                              handle, stop=handle.stop, block_ms=200))  # fmt: skip
        try:
            await asyncio.sleep(1.05)
            _raise_if_failed(task)
            handle.stop.set()
            stopped_at = loop.time()
            await _within(60, asyncio.shield(task), _CONSUME_HANGS)
            waited_ms = (loop.time() - stopped_at) * 1000
        finally:
            await _stop(task)
        assert waited_ms <= 200 + 1, (
            "pass BLOCK block_ms to XREADGROUP, and check stop before each read: consume() "
            f"returned {waited_ms:.0f} ms after stop was set (block_ms=200)"
        )


@_async
@pytest.mark.exercise("4.4")
async def test_two_consumers_handle_1000_entries_exactly_once(ex):
    """Two consumers at once, 1,000 entries: each handled exactly once, all acked."""
    async with _Lab() as lab:
        await _stream(lab, 1000)
        rng = random.Random(4)
        done: list[int] = []
        stop = asyncio.Event()
        handlers = [_Handler(stop, until=1000, done=done) for _ in range(2)]
        clients = [await lab.worker(_Wire(yields=partial(rng.randint, 0, 2))) for _ in range(2)]
        got = await _at_once(
            (_consume(ex, c, name, h, limit_s=60, count=10)
             for c, name, h in zip(clients, "AB", handlers, strict=True)),
            _CONSUME_HANGS,
        )  # fmt: skip
        counts = Counter(done)
        twice = sorted(n for n, k in counts.items() if k > 1)
        assert not twice, (
            "XAUTOCLAIM only entries idle for min_idle_ms, never a live consumer's: "
            f"{len(twice)} of 1,000 entries were handled twice with no crash (say {twice[:3]})"
        )
        never = 1000 - len(counts)
        assert not never, f"{never} of 1,000 entries were never handled by either consumer"
        left = await _pending(lab)
        assert not left, f"{len(left)} entries still pending after both consumers stopped"
        assert sum(got) == 1000, (
            f"the two consume() calls returned {got}, expected a sum of 1000: the entries acked"
        )
