"""Exercise 5.3 with one bug repaired: lookup() runs in a thread, and the loop is free.
The writer is still started and forgotten: it outlives aclose(), and its errors too."""

import asyncio

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "5.3"
EXPECT = "left running after aclose()"


class Service:
    def __init__(self, sink):
        self._sink = sink
        self._lines = asyncio.Queue()
        self.closed = False

    async def start(self):
        asyncio.create_task(self._write_lines())

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
                pass

    async def aclose(self):
        self.closed = True
