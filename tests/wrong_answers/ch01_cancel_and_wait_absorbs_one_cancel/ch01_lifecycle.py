"""Exercise 1.2 that absorbs the caller's first cancel but not a second one."""

import asyncio

from solutions.ch01_lifecycle import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "1.2"
EXPECT = "second cancel"


async def cancel_and_wait(task, *, msg=None, timeout_s=None):
    if not task.done():
        task.cancel(msg)
        try:
            await asyncio.wait({task}, timeout=timeout_s)
        except asyncio.CancelledError:
            await asyncio.wait({task}, timeout=timeout_s)  # once more, then go
            raise
        if not task.done():
            raise TimeoutError(f"task {task.get_name()!r} still running after {timeout_s} s")
    if task.cancelled():
        return True
    task.result()
    return False
