"""Chapter 5: debugging and monitoring asyncio.

Edit the code below, then run ``check("5.1")``, ``check("5.2")`` and ``check("5.3")``
in notebooks/05_debugging_monitoring.ipynb.
"""

from __future__ import annotations

__all__ = ["LagMonitor", "Service", "lookup", "where"]

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


def where(task: asyncio.Task[Any]) -> list[str]:
    """Exercise 5.1: the chain of awaits a suspended task is stopped in, outermost first.

        where(task)
        # ['main (app.py:12)', 'Store.fetch (app.py:30)', 'sleep (tasks.py:665)']

    - One string per frame: ``"function (file:line)"``, with the function's qualified
      name (``frame.f_code.co_qualname``: ``Store.fetch``, not ``fetch``), the file's
      base name (``os.path.basename``) and the line the frame is stopped at
      (``frame.f_lineno``).
    - Start at ``task.get_coro()`` and follow what each object awaits:

      - a coroutine: its frame is ``cr_frame``, what it awaits ``cr_await``;
      - an async generator: ``ag_frame``, ``ag_await``;
      - a generator (a class's ``__await__``, a ``@types.coroutine``): ``gi_frame``,
        ``gi_yieldfrom``.

    - ``async for`` over an async generator awaits an ``async_generator_asend``
      object, which has no frame and no attribute leading to its generator. Go on
      through the generator all the same: find it among what the object refers to.
    - The chain ends at an object with no frame: the iterator of the Future that will
      wake the task. If that Future is itself a Task (``await other_task``), the
      last string names it: ``"<Task 'name'>"`` (``other_task.get_name()``). A plain
      Future (what ``sleep``, ``Event.wait``, ``Queue.get`` wait on) is not named.
    - A finished task (returned, failed or cancelled): ``[]``. A task created and not
      started yet: its coroutine's frame, at the ``def`` line (it has run nothing).
    - A chain 1,000 awaits deep works (the recursion limit is 1,000).
    - (A task calling ``where()`` on itself is running, not suspended: not asked.)
    """
    raise NotImplementedError("Exercise 5.1: where")


class LagMonitor:
    """Exercise 5.2: measure the event loop's lag: how late it runs what is due.

        async with LagMonitor(interval_s=0.01) as mon:
            await service()                  # somewhere in it, a time.sleep(0.2)
        mon.max_s, mon.p99_s, len(mon.samples)   # (0.2, 0.0003, 512)

    - Entering the block starts one task that, again and again, sleeps
      ``interval_s`` and records how late it woke up: ``loop.time()`` when it runs
      again, minus the time it was due (``loop.time()`` before the sleep, plus
      ``interval_s``). The clock is ``asyncio.get_running_loop().time()``. On a loop
      that nothing blocks the lag is about 0: the interval itself is not lag.
    - Each sleep is measured on its own: the next one is due ``interval_s`` after the
      wake-up that was late, so a block of 0.2 s gives one late sample of about
      0.2 s, not one per interval it covered.
    - The first sleep starts before the block's body runs (``__aenter__`` lets the task
      start): a ``time.sleep()`` on the body's first line is measured too.
    - ``samples``: the lags in seconds, in the order measured (a list). ``max_s``: the
      largest. ``p99_s``: the 99th percentile, the smallest sample that at least 99%
      of the samples are at or below (``sorted(samples)[ceil(0.99 * n) - 1]``). Both
      0.0 with no samples; both can be read during the block too.
    - Leaving the block stops the task and waits until it has ended: no task is left
      behind, and no sample is added afterwards. An exception from the body goes on
      out of the block, unchanged.
    - Leaving normally never raises CancelledError. If the task running the block is
      cancelled, even twice (in the body, then again while the monitor stops), the
      monitor still ends before CancelledError goes on.
    - ``interval_s`` must be above 0: ValueError.
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        raise NotImplementedError("Exercise 5.2: LagMonitor")

    @property
    def max_s(self) -> float:
        raise NotImplementedError("Exercise 5.2: LagMonitor")

    @property
    def p99_s(self) -> float:
        raise NotImplementedError("Exercise 5.2: LagMonitor")

    async def __aenter__(self) -> LagMonitor:
        raise NotImplementedError("Exercise 5.2: LagMonitor")

    async def __aexit__(self, *exc_info: object) -> None:
        raise NotImplementedError("Exercise 5.2: LagMonitor")


def lookup(request: str) -> str:
    """A synchronous call (a driver or an HTTP client with no async support): it holds
    the thread that calls it for 50 ms. Leave it as it is: change how it is called."""
    time.sleep(0.05)
    return request.upper()


class Service:
    """Exercise 5.3: a small service with three bugs. Find them, and repair it.

        service = Service(sink)          # sink: an async function storing one line
        await service.start()
        await service.handle("ping")     # 'PING'; the line "ping -> PING" goes to sink
        await service.aclose()

    It answers a request with ``lookup(request)`` and writes an audit line for it,
    ``f"{request} -> {answer}"``, with ``await sink(line)``: in the background, one
    line after the other, so that a slow sink never holds up an answer. In a quick
    demo it works. It has three bugs, one of each kind this chapter finds: a blocked
    loop, a task left behind, an error nobody hears of. Repaired, it does this:

    - ``handle()`` never blocks the loop, however long ``lookup()`` takes: every
      other task goes on running meanwhile. ``lookup()`` stays a synchronous function
      you cannot change, called once per request (as ``lookup``, the name in this
      module: the checks replace it).
    - ``aclose()`` stops every task the service started and returns only once they
      have ended: none is left running. Lines still queued are dropped.
    - If the caller of ``aclose()`` is cancelled while it waits, even twice, the
      service's tasks have still ended when CancelledError comes out of it.
    - An error raised by ``sink`` is not lost: the background writer stops there,
      and ``aclose()`` raises that very exception (not a copy, not a log line).
    - 1,000 requests at once get their 1,000 answers, and ``sink`` gets their 1,000
      lines, each once.
    - ``handle()`` after ``aclose()``: RuntimeError (it does that already).
    """

    def __init__(self, sink: Callable[[str], Awaitable[None]]) -> None:
        # Delete the next line, then find and repair the three bugs in the code below.
        raise NotImplementedError("Exercise 5.3: repair Service")
        self._sink = sink
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        self.closed = False

    async def start(self) -> None:
        # The writer runs as long as the program does.
        asyncio.create_task(self._write_lines())

    async def handle(self, request: str) -> str:
        if self.closed:
            raise RuntimeError("the service is closed")
        answer = lookup(request)
        self._lines.put_nowait(f"{request} -> {answer}")
        return answer

    async def _write_lines(self) -> None:
        while True:
            line = await self._lines.get()
            try:
                await self._sink(line)
            except Exception:
                pass  # one bad line must not stop the service

    async def aclose(self) -> None:
        self.closed = True
