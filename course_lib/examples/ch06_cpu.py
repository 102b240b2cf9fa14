"""Chapter 6's CPU work, three ways to run it from a coroutine, and what the loop feels.

    async with LoopWatchdog(threshold_s=0.05, interval_s=0.005) as dog:
        seconds = await run_jobs("to_thread", py_work, 6, 1_000_000)
    dog.report().p99_s                     # how late the loop's callbacks ran

Two kinds of work of about the same length:

- ``py_work(n)``: a pure-Python loop. It holds the GIL all along, so two threads
  running it take turns (every 5 ms, ``sys.getswitchinterval()``), never at once,
  on the usual (GIL) build of CPython.
- ``hash_work(iterations)``: ``hashlib.pbkdf2_hmac``, C code that releases the GIL
  while it hashes: threads run it in parallel.

Both are plain functions at module level, so a process pool can run them (they are
sent to the child by name).
"""

from __future__ import annotations

__all__ = ["MODES", "hash_work", "py_work", "run_jobs"]

import asyncio
import concurrent.futures
import hashlib
import time
from collections.abc import Callable

MODES = ("on the loop", "to_thread", "process pool")


def py_work(n: int) -> int:
    """CPU work in Python bytecode: the GIL is held from start to end."""
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def hash_work(iterations: int) -> bytes:
    """CPU work in C that releases the GIL (OpenSSL's PBKDF2)."""
    return hashlib.pbkdf2_hmac("sha256", b"password", b"salt", iterations)


async def run_jobs(mode: str, work: Callable[[int], object], jobs: int, size: int,
                   executor: concurrent.futures.Executor | None = None) -> float:
    """Run ``jobs`` calls of ``work(size)`` at once, the ``mode`` way; return the seconds.

    ``"on the loop"`` calls ``work`` inside each coroutine (the mistake: the loop runs
    nothing else meanwhile); ``"to_thread"`` uses ``asyncio.to_thread`` (the loop's
    default thread pool); ``"process pool"`` uses ``loop.run_in_executor`` with
    ``executor``, a ``ProcessPoolExecutor`` you create once and keep (starting
    processes per call would cost more than the work).
    """
    loop = asyncio.get_running_loop()

    async def one() -> object:
        if mode == "on the loop":
            return work(size)
        if mode == "to_thread":
            return await asyncio.to_thread(work, size)
        if mode == "process pool":
            if executor is None:
                raise ValueError("process pool: pass executor=ProcessPoolExecutor(...)")
            return await loop.run_in_executor(executor, work, size)
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(jobs):
            tg.create_task(one())
    return time.perf_counter() - start
