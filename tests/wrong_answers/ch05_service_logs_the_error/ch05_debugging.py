"""Exercise 5.3 repaired but for the error, which is logged instead of swallowed: a log
line nobody reads, and aclose() returns as if all was well."""

import asyncio
import logging

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "5.3"
EXPECT = "lost"

_log = logging.getLogger(__name__)


class Service:
    def __init__(self, sink):
        self._sink = sink
        self._lines = asyncio.Queue()
        self._writer = None
        self.closed = False

    async def start(self):
        self._writer = asyncio.create_task(self._write_lines())

    async def handle(self, request):
        if self.closed:
            raise RuntimeError("the service is closed")
        answer = await asyncio.to_thread(lookup, request)
        self._lines.put_nowait(f"{request} -> {answer}")
        return answer

    async def _write_lines(self):
        while True:
            line = await self._lines.get()
            try:
                await self._sink(line)
            except Exception:
                _log.exception("could not write %r", line)

    async def aclose(self):
        self.closed = True
        self._writer.cancel()
        try:
            await self._writer
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():
                raise
