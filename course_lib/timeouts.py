"""Timeouts: deadlines that nest and travel, retries that respect them, races that clean up.

One idea: time is a budget that a call hands down, and what runs out of it is stopped
and waited for, never left behind.

- ``Deadline``: an absolute time on the loop's clock, passed from call to call;
  ``child()`` never ends later than its parent; ``async with deadline:`` applies it.
- ``retry()``: exponential backoff with full jitter, under a deadline, retrying only
  the errors the caller names transient (``retry_on``, required), never a
  cancellation; gives up with a ``RetryError`` holding every attempt's error.
- ``first_completed()``: the first successful result; the losers are cancelled and
  awaited before it returns. ``as_completed_within()``: completions until a deadline.

Both follow the course's rule for a caller cancelled during cleanup (stated in full in
``course_lib.lifecycle``): what they started is cancelled and waited for to the end,
further cancels included, before CancelledError reaches the caller, as TaskGroup does.
"""

__all__ = ["Deadline", "RetryError", "as_completed_within", "backoff_s", "first_completed", "retry"]

import asyncio
import inspect
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Self, TypeVar

logger = logging.getLogger(__name__)
T = TypeVar("T")

_JITTERS = ("full", "equal", "none")
_STUCK_WARNING_S = 5.0  # losers still running this long after cancel() get a warning


class Deadline:
    """An absolute time on the running loop's clock, to hand down from call to call.

        deadline = Deadline.after(2.0)
        async with deadline:                       # TimeoutError when it passes
            user = await fetch_user(deadline.child(0.5))   # at most 0.5 s of the 2
            await fetch_orders(user, deadline)              # whatever is left

    Only loop time is stored, so a deadline made in one coroutine means the same in
    another. Each ``async with`` enters a fresh ``asyncio.timeout_at`` (``scope()``): the
    same deadline can be entered again, nested, or in several tasks at once. Like
    ``timeout_at`` it turns only its own cancel into TimeoutError, never an outer
    cancellation; entered once passed, it raises TimeoutError at the first await inside.
    """

    __slots__ = ("_scopes", "_when")

    def __init__(self, when: float) -> None:
        if math.isnan(when):
            raise ValueError("a deadline cannot be NaN")
        self._when = float(when)  # math.inf: no limit
        # One stack of asyncio.Timeout per task: several tasks may enter this deadline.
        self._scopes: dict[asyncio.Task[Any] | None, list[asyncio.Timeout]] = {}

    @classmethod
    def at(cls, when: float | None) -> Self:
        """The deadline at loop time ``when`` (``loop.time()`` clock); None: no limit."""
        return cls(math.inf if when is None else when)

    @classmethod
    def after(cls, delay_s: float | None) -> Self:
        """The deadline ``delay_s`` from now on the running loop; None: no limit."""
        return cls(math.inf if delay_s is None else asyncio.get_running_loop().time() + delay_s)

    @classmethod
    def none(cls) -> Self:
        """No limit: ``remaining()`` is inf, ``async with`` never times out."""
        return cls(math.inf)

    @property
    def when(self) -> float:
        """The loop time it passes at; ``math.inf`` for no limit."""
        return self._when

    def remaining(self) -> float:
        """Seconds left, 0.0 once passed (never negative: it feeds timeouts); inf for none."""
        return max(0.0, self._when - asyncio.get_running_loop().time())

    @property
    def expired(self) -> bool:
        """True once the loop time has reached it."""
        return asyncio.get_running_loop().time() >= self._when

    def child(self, budget_s: float | None) -> "Deadline":
        """``budget_s`` from now, cut back to this deadline: never ends later than it."""
        now = asyncio.get_running_loop().time()
        return Deadline(self._when if budget_s is None else min(self._when, now + budget_s))

    def __repr__(self) -> str:
        if self._when == math.inf:
            return "<Deadline none>"
        try:
            left_s = self._when - asyncio.get_running_loop().time()
        except RuntimeError:  # no running loop: nothing to be relative to
            return f"<Deadline at loop time {self._when:g}>"
        if left_s > 0:
            return f"<Deadline in {round(left_s, 3):g} s>"
        return f"<Deadline expired {round(-left_s, 3):g} s ago>"

    def scope(self) -> asyncio.Timeout:
        """A fresh ``asyncio.timeout_at`` for this deadline (what ``async with`` enters)."""
        return asyncio.timeout_at(None if self._when == math.inf else self._when)

    async def __aenter__(self) -> Self:
        scope = self.scope()
        await scope.__aenter__()  # raises RuntimeError outside a task
        self._scopes.setdefault(asyncio.current_task(), []).append(scope)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        task = asyncio.current_task()
        stack = self._scopes[task]
        scope = stack.pop()  # exits are nested in one task: the last entered is ours
        if not stack:
            del self._scopes[task]  # no reference kept to a finished task
        return await scope.__aexit__(*exc_info)


def backoff_s(failures: int, *, base_s: float, max_s: float, jitter: str = "full",
              rand: Callable[[], float] = random.random) -> float:
    """The delay after the ``failures``-th failure: min(max_s, base_s * 2**(failures-1)), jittered.

    ``jitter``: "full" draws from [0, cap) (AWS's "full jitter": retries of many
    clients spread out instead of arriving in waves), "equal" from [cap/2, cap),
    "none" is the cap itself.
    """
    _check_backoff(base_s, max_s, jitter)
    if failures < 1:
        raise ValueError(f"failures must be >= 1, not {failures!r}")
    cap_s = min(max_s, base_s * 2.0 ** min(failures - 1, 1000))  # 2.0**1100 overflows
    if jitter == "full":
        return rand() * cap_s
    if jitter == "equal":
        return cap_s / 2 + rand() * cap_s / 2
    return cap_s


class RetryError(ExceptionGroup):
    """``retry()`` gave up: every attempt's error in order, as an ExceptionGroup.

        try:
            await retry(connect, attempts=5, base_s=0.1, max_s=2,
                        retry_on=ConnectionError, deadline=deadline)
        except RetryError as gave_up:
            log.error("unreachable after %d attempts (out of time: %s): %r",
                      gave_up.attempts, gave_up.timed_out, gave_up.exceptions[-1])

    ``attempts`` says how many were made; ``timed_out`` whether the deadline ended the
    retry, in which case the last exception is a TimeoutError. ``except*`` works too,
    but each clause sees only its part: with a deadline, an ``except* ConnectionError``
    alone lets the TimeoutError part escape.
    """

    def __new__(cls, message: str, exceptions: Sequence[Exception],
                attempts: int | None = None, timed_out: bool = False) -> Self:
        self = super().__new__(cls, message, exceptions)
        self.attempts = len(exceptions) if attempts is None else attempts
        self.timed_out = timed_out
        return self

    def __init__(self, message: str, exceptions: Sequence[Exception],
                 attempts: int | None = None, timed_out: bool = False) -> None:
        super().__init__(message, exceptions)

    def derive(self, excs: Sequence[Exception]) -> "RetryError":  # type: ignore[override]
        # except* and split() build the matching part with derive(): keep the counts.
        return RetryError(self.message, excs, self.attempts, self.timed_out)


async def retry(
    fn: Callable[[], Awaitable[T]], *, attempts: int, base_s: float, max_s: float,
    retry_on: type[Exception] | tuple[type[Exception], ...], jitter: str = "full",
    deadline: Deadline | None = None, sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
    on_retry: Callable[[int, Exception, float], object] | None = None,
) -> T:
    """Await ``fn()`` up to ``attempts`` times, sleeping ``backoff_s(n)`` after failure n.

        await retry(lambda: fetch(url), attempts=5, base_s=0.1, max_s=2,
                    retry_on=(ConnectionError, TimeoutError))

    ``fn`` makes a fresh awaitable per attempt (``lambda: fetch(url)``). ``retry_on``
    is required: the caller says which errors are transient (a lost connection, a
    timeout); a bug (KeyError, TypeError) retried only fails more slowly. An error
    not in ``retry_on`` is raised as is. Out of attempts: ``RetryError`` with every error.
    With a ``deadline``, each attempt runs under it, and the retry stops with a
    ``RetryError`` (``timed_out``, a TimeoutError last) when it passes during an
    attempt or when the next backoff would reach it: no sleep outlasts the deadline.

    Cancellation is never retried: ``retry_on`` takes Exception subclasses only, and a
    CancelledError (or KeyboardInterrupt) during an attempt or a sleep propagates at
    once. Each retry logs ``↻ retry 2/5 in 0.8s after ConnectionError(...)`` (INFO,
    logger ``course_lib.timeouts``), then calls ``on_retry(failed_attempt, exc,
    delay_s)`` if given; what it raises ends the retry. ``sleep`` and ``rand`` are
    injectable for tests.
    """
    if not callable(fn):
        if inspect.iscoroutine(fn):
            fn.close()  # refused: close it, or it warns "never awaited"
        raise TypeError(f"fn must be a zero-argument callable that returns a fresh awaitable "
                        f"each attempt (e.g. lambda: fetch(url)), not {fn!r}")
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        raise ValueError(f"attempts must be an int >= 1, not {attempts!r}")
    _check_backoff(base_s, max_s, jitter)
    retry_on = _check_retry_on(retry_on)
    deadline = Deadline.none() if deadline is None else deadline
    loop = asyncio.get_running_loop()
    errors: list[Exception] = []
    for attempt in range(1, attempts + 1):
        scope = deadline.scope()
        try:
            async with scope:
                return await _call(fn)
        except _NotAwaitableError as exc:
            raise TypeError(str(exc)) from None
        except Exception as exc:
            if not scope.expired() and not isinstance(exc, retry_on):
                raise
            errors.append(exc)
        if scope.expired():
            # The deadline's own TimeoutError ends the retry; anything else an attempt
            # raised while being cut off (it mishandled the cancel) gets one after it.
            if not isinstance(errors[-1], TimeoutError):
                errors.append(TimeoutError(f"{deadline!r} passed during attempt {attempt}"))
            raise RetryError(f"gave up after {attempt} of {attempts} attempts: deadline passed",
                             errors, attempt, timed_out=True)
        if attempt == attempts:
            break
        delay_s = backoff_s(attempt, base_s=base_s, max_s=max_s, jitter=jitter, rand=rand)
        if loop.time() + delay_s >= deadline.when:
            # Sleeping until the deadline would leave the next attempt no time at all.
            errors.append(TimeoutError(f"a {delay_s:.3g} s backoff would reach {deadline!r}"))
            raise RetryError(f"gave up after {attempt} of {attempts} attempts: deadline near",
                             errors, attempt, timed_out=True)
        logger.info("↻ retry %d/%d in %.3gs after %r", attempt + 1, attempts, delay_s, errors[-1])
        if on_retry is not None:
            on_retry(attempt, errors[-1], delay_s)
        await sleep(delay_s)
    raise RetryError(f"gave up after {attempts} attempts", errors, attempts)


class _Arrivals:
    """The async context manager and iterator returned by ``as_completed_within()``."""

    def __init__(self, aws: list[Awaitable[Any]], timeout_s: float | None) -> None:
        self._aws = aws
        self._timeout_s = timeout_s
        self._ready: deque[asyncio.Future[Any]] = deque()
        self._order: dict[asyncio.Future[Any], int] | None = None  # set once entered
        self.timed_out = False  # True once the iteration ended because time ran out

    async def __aenter__(self) -> Self:
        if self._order is not None:
            raise RuntimeError("as_completed_within() cannot be entered twice")
        now = asyncio.get_running_loop().time()
        self._when = math.inf if self._timeout_s is None else now + self._timeout_s
        self._tasks = [asyncio.ensure_future(aw) for aw in self._aws]
        self._pending = set(self._tasks)
        self._order = {task: n for n, task in enumerate(self._tasks)}  # ties: argument order
        return self

    def __aiter__(self) -> Self:
        if self._order is None:  # else it would iterate over nothing, silently
            raise RuntimeError("enter it first: `async with as_completed_within(...) as done:`")
        return self

    async def __anext__(self) -> asyncio.Future[Any]:
        if not self._ready and self._pending and not self.timed_out:
            left_s = self._when - asyncio.get_running_loop().time()
            # wait(), not timeout(): it cancels nothing, so a CancelledError out of it is
            # our caller's, and the timeout needs no self-cancel to undo.
            done, self._pending = await asyncio.wait(
                self._pending, timeout=None if left_s == math.inf else max(0.0, left_s),
                return_when=asyncio.FIRST_COMPLETED,
            )
            self.timed_out = not done
            self._ready.extend(sorted(done, key=self._order.__getitem__))  # type: ignore[union-attr]
        if not self._ready:
            raise StopAsyncIteration
        return self._ready.popleft()

    async def __aexit__(self, *_: object) -> None:
        await _cancel_and_wait_all(self._tasks)


def as_completed_within(aws: Iterable[Awaitable[T]], timeout_s: float | None = None) -> _Arrivals:
    """Iterate over ``aws`` as done futures, in completion order, until ``timeout_s``.

        async with as_completed_within(fetches, timeout_s=2.0) as done:
            async for fut in done:
                results.append(fut.result())    # raises if that one failed
        print(done.timed_out)                  # True: some did not finish in time

    When time runs out the iteration just ends (``timed_out`` says so). Leaving the
    block, by the end, ``break``, an error or a cancel, cancels what is still running
    and awaits it, through further cancels of the caller, which it raises afterwards:
    an async generator could not promise that, its cleanup after a ``break`` waits for
    the garbage collector. Errors of futures you did not look at,
    or that ended before the block did, are dropped; one raised on cancel is logged.
    """
    aws = list(aws)
    _check_awaitables(aws, timeout_s)
    return _Arrivals(aws, timeout_s)


async def first_completed(*aws: Awaitable[T], timeout_s: float | None = None) -> T:
    """The first successful result of ``aws``; the rest are cancelled and awaited.

        html = await first_completed(fetch(mirror_a), fetch(mirror_b), timeout_s=5)

    A failure does not win; when all fail, an ExceptionGroup of their errors in
    completion order (a BaseExceptionGroup if some were cancelled by someone else).
    After ``timeout_s``: TimeoutError, its ``__cause__`` the failures so far. Futures
    passed in are cancelled too when they lose.

    Whatever happens, every loser has ended before this returns or raises. If the
    caller is cancelled, during the race or while the losers clean up, the losers are
    cancelled (once) and waited for to the end, further cancels of the caller
    included, and then the caller's CancelledError is raised. ``timeout_s`` bounds the
    race, not that wait: a loser that ignores cancellation is waited for (with a
    warning after 5 s), as a TaskGroup would.
    """
    if not aws:
        raise ValueError("first_completed() needs at least one awaitable")
    errors: list[BaseException] = []
    async with as_completed_within(aws, timeout_s) as done:
        async for fut in done:
            if fut.cancelled():
                errors.append(asyncio.CancelledError(f"{_name(fut)} was cancelled"))
            elif (exc := fut.exception()) is not None:
                errors.append(exc)
            else:
                return fut.result()  # leaving the block cancels and awaits the others
    group = BaseExceptionGroup(f"all {len(aws)} awaitables failed", errors) if errors else None
    if group is not None and not done.timed_out:
        raise group
    raise TimeoutError(f"none of {len(aws)} awaitables succeeded within {timeout_s} s") from group


class _NotAwaitableError(TypeError):
    """fn() returned something that cannot be awaited: a bug, not a failure to retry."""


async def _call(fn: Callable[[], Awaitable[T]]) -> T:
    aw = fn()
    if not inspect.isawaitable(aw):
        raise _NotAwaitableError(f"fn() must return an awaitable, it returned {aw!r}")
    return await aw


async def _cancel_and_wait_all(tasks: list[asyncio.Future[Any]]) -> None:
    """Cancel what still runs, wait until all have ended, even through our own cancel."""
    pending = {task for task in tasks if not task.done()}
    cancelled = set(pending)
    for task in pending:
        task.cancel()  # once: a second cancel would cut short a cleanup already running
    ours: asyncio.CancelledError | None = None
    warned = False
    while pending:
        try:
            _, pending = await asyncio.wait(pending, timeout=None if warned else _STUCK_WARNING_S)
        except asyncio.CancelledError as exc:
            # Leaving now would leave tasks running behind our back. Finish waiting,
            # as TaskGroup.__aexit__ does, then pass the cancellation on.
            ours = exc
            continue
        if pending and not warned:
            warned = True
            logger.warning("still waiting %s s after cancel() for %s: they ignore "
                           "cancellation or their cleanup hangs", _STUCK_WARNING_S,
                           ", ".join(sorted(_name(task) for task in pending)))
    for task in tasks:
        exc = None if task.cancelled() else task.exception()  # no "never retrieved" then
        if exc is not None and task in cancelled:
            logger.error("%s raised while being cancelled", _name(task), exc_info=exc)
    if ours is not None:
        raise ours


def _check_awaitables(aws: list[Any], timeout_s: float | None) -> None:
    problem = None
    if timeout_s is not None and not timeout_s >= 0:  # NaN too
        problem = ValueError(f"timeout_s must be >= 0 or None, not {timeout_s!r}")
    elif bad := [aw for aw in aws if not inspect.isawaitable(aw)]:
        problem = TypeError(f"not awaitable: {bad[0]!r}")
    if problem is not None:
        for aw in aws:
            if inspect.iscoroutine(aw):
                aw.close()  # refused: close them, or each warns "never awaited"
        raise problem


def _check_backoff(base_s: float, max_s: float, jitter: str) -> None:
    if not (base_s > 0 and math.isfinite(base_s)):
        raise ValueError(f"base_s must be a finite number > 0, not {base_s!r}")
    if not (max_s >= base_s and math.isfinite(max_s)):
        raise ValueError(f"max_s must be finite and >= base_s ({base_s!r}), not {max_s!r}")
    if jitter not in _JITTERS:
        raise ValueError(f"jitter must be one of {', '.join(map(repr, _JITTERS))}, not {jitter!r}")


def _check_retry_on(retry_on: Any) -> tuple[type[Exception], ...]:
    classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            # BaseException would catch CancelledError: a task that retries cancels can't stop.
            raise TypeError(f"retry_on takes Exception subclasses only, so that a "
                            f"cancellation is never retried; got {cls!r}")
    return classes


def _name(fut: asyncio.Future[Any]) -> str:
    return repr(fut.get_name()) if isinstance(fut, asyncio.Task) else repr(fut)
