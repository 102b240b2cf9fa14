"""Exercise 1.2 with `await task`: it takes a cancel aimed at the caller for the task's own."""

import asyncio

from solutions.ch01_lifecycle import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "1.2"
EXPECT = "await task"


async def cancel_and_wait(task, *, msg=None, timeout_s=None):
    if task.done():
        if task.cancelled():
            return True
        task.result()
        return False
    task.cancel(msg)
    try:
        await asyncio.wait_for(task, timeout_s)
    except asyncio.CancelledError:
        return True
    except TimeoutError:
        raise TimeoutError(f"task {task.get_name()!r} did not end") from None
    return False
