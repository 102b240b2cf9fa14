"""Exercise 1.2 as the old model answer: one asyncio.wait(); a cancelled caller leaves at once,
with the task it cancelled still cleaning up."""

import asyncio

from solutions.ch01_lifecycle import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "1.2"
EXPECT = "still running its cleanup"


async def cancel_and_wait(task, *, msg=None, timeout_s=None):
    if not task.done():
        task.cancel(msg)
        await asyncio.wait({task}, timeout=timeout_s)
        if not task.done():
            raise TimeoutError(f"task {task.get_name()!r} still running after {timeout_s} s")
    if task.cancelled():
        return True
    task.result()
    return False
