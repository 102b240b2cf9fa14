"""Exercise 1.2 that waits through the caller's cancels, then returns as if nothing happened."""

import asyncio

from solutions.ch01_lifecycle import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "1.2"
EXPECT = "swallowed the caller's own CancelledError"


async def cancel_and_wait(task, *, msg=None, timeout_s=None):
    if not task.done():
        task.cancel(msg)
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while not task.done():
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                raise TimeoutError(f"task {task.get_name()!r} still running after {timeout_s} s")
            try:
                await asyncio.wait({task}, timeout=left)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()  # "handled": the caller's cancel is lost
    if task.cancelled():
        return True
    task.result()
    return False
