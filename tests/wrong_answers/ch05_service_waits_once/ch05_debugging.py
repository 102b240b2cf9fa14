"""Exercise 5.3 with an aclose() that cancels the writer and waits once with
``asyncio.wait``: a cancel of the caller ends that wait while the writer still cleans
up, and wait() never raises the writer's error either."""

import asyncio

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "5.3"
EXPECT = "still running when the cancelled aclose() ended"


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
            await self._sink(line)

    async def aclose(self):
        self.closed = True
        self._writer.cancel()
        await asyncio.wait({self._writer})
