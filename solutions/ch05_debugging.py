"""Chapter 5: debugging and monitoring asyncio, solved."""

from __future__ import annotations

__all__ = ["LagMonitor", "Service", "lookup", "where"]

import asyncio
import gc
import inspect
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any


def where(task: asyncio.Task[Any]) -> list[str]:
    """Exercise 5.1: the chain of awaits a task is suspended in, outermost first.

    A loop, not recursion: a chain 1,000 awaits deep is as easy as one 3 deep.
    """
    if task.done():
        return []
    chain: list[str] = []
    obj: Any = task.get_coro()
    while obj is not None:
        if hasattr(obj, "cr_frame"):  # a coroutine
            frame, awaited = obj.cr_frame, obj.cr_await
        elif hasattr(obj, "ag_frame"):  # an async generator
            frame, awaited = obj.ag_frame, obj.ag_await
        elif hasattr(obj, "gi_frame"):  # a generator: a class's __await__, @types.coroutine
            frame, awaited = obj.gi_frame, obj.gi_yieldfrom
        else:
            # No frame: a wrapper with no public link to what it wraps. `async for`
            # awaits an async_generator_asend that holds its generator; the chain
            # ends at a Future's iterator, which holds the Future. The garbage
            # collector lists what an object refers to.
            held = gc.get_referents(obj)
            agen = next((r for r in held if inspect.isasyncgen(r)), None)
            if agen is not None:
                obj = agen
                continue
            other = next((r for r in held if isinstance(r, asyncio.Task)), None)
            if other is not None:
                chain.append(f"<Task {other.get_name()!r}>")
            break
        if frame is None:  # finished: nothing more to follow
            break
        code = frame.f_code
        chain.append(f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{frame.f_lineno})")
        obj = awaited
    return chain


class LagMonitor:
    """Exercise 5.2: how late the event loop wakes a sleeper, sampled every ``interval_s``.

        async with LagMonitor(interval_s=0.01) as mon:
            await service()
        mon.max_s, mon.p99_s, len(mon.samples)
    """

    def __init__(self, interval_s: float = 0.01) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s!r}")
        self.interval_s = interval_s
        self.samples: list[float] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def max_s(self) -> float:
        return max(self.samples, default=0.0)

    @property
    def p99_s(self) -> float:
        """Nearest rank: the smallest sample that 99% of the samples are at or below."""
        if not self.samples:
            return 0.0
        ranked = sorted(self.samples)
        return ranked[math.ceil(0.99 * len(ranked)) - 1]

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Due one interval after *this* wake-up, however late it was: a late
            # wake-up is one sample, and the next ones are not late for it too (a
            # schedule fixed at the start would record one block again and again).
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.samples.append(max(0.0, loop.time() - due))

    async def __aenter__(self) -> LagMonitor:
        self._task = asyncio.create_task(self._sample(), name="lag-monitor")
        await asyncio.sleep(0)  # the first wake-up is armed before the body's first line
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task = self._task
        if task is None:
            return
        task.cancel()
        try:
            await task  # a further cancel of ours is passed on to it: it ends all the same
        except asyncio.CancelledError:
            # The monitor's own end, expected: swallowed. A cancel aimed at the task
            # leaving the block (cancelling() > 0) goes on.
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise


def lookup(request: str) -> str:
    """A synchronous call (a driver or an HTTP client with no async support): it holds
    the thread that calls it for 50 ms. Leave it as it is: change how it is called."""
    time.sleep(0.05)
    return request.upper()


class Service:
    """Exercise 5.3: the service repaired.

        service = Service(sink)
        await service.start()
        await service.handle("ping")   # 'PING', and "ping -> PING" goes to sink soon
        await service.aclose()
    """

    def __init__(self, sink: Callable[[str], Awaitable[None]]) -> None:
        self._sink = sink
        self._lines: asyncio.Queue[str] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.closed = False

    async def start(self) -> None:
        # Kept: nobody can stop or hear from a task that nobody holds.
        self._writer = asyncio.create_task(self._write_lines(), name="service-writer")

    async def handle(self, request: str) -> str:
        if self.closed:
            raise RuntimeError("the service is closed")
        # In a worker thread: the loop runs every other task meanwhile.
        answer = await asyncio.to_thread(lookup, request)
        self._lines.put_nowait(f"{request} -> {answer}")
        return answer

    async def _write_lines(self) -> None:
        while True:
            line = await self._lines.get()
            await self._sink(line)  # an error ends the writer, and aclose() raises it

    async def aclose(self) -> None:
        self.closed = True
        writer = self._writer
        if writer is None:
            return
        writer.cancel()  # nothing if it has ended already (failed)
        try:
            await writer  # raises the sink's error, if that is how it ended
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the caller was cancelled: the writer has ended, the cancel goes on
