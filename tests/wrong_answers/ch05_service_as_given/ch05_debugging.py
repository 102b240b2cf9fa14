"""Exercise 5.3 handed in as given, only the NotImplementedError line deleted: lookup()
blocks the loop, the writer task is never kept nor stopped, and the sink's errors are
swallowed by ``except Exception: pass``."""

import asyncio

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "5.3"
EXPECT = "blocked"


class Service:
    def __init__(self, sink):
        self._sink = sink
        self._lines = asyncio.Queue()
        self.closed = False

    async def start(self):
        # The writer runs as long as the program does.
        asyncio.create_task(self._write_lines())

    async def handle(self, request):
        if self.closed:
            raise RuntimeError("the service is closed")
        answer = lookup(request)
        self._lines.put_nowait(f"{request} -> {answer}")
        return answer

    async def _write_lines(self):
        while True:
            line = await self._lines.get()
            try:
                await self._sink(line)
            except Exception:
                pass  # one bad line must not stop the service

    async def aclose(self):
        self.closed = True
