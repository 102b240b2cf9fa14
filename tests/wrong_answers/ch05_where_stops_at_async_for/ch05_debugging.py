"""Exercise 5.1 answered without the object ``async for`` awaits: the walk follows
coroutines, async generators and generators, and stops at the ``async_generator_asend``
object, which has none of their attributes."""

import asyncio
import gc
import os

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "5.1"
EXPECT = "async generator"


def where(task):
    if task.done():
        return []
    chain = []
    obj = task.get_coro()
    while obj is not None:
        if hasattr(obj, "cr_frame"):
            frame, awaited = obj.cr_frame, obj.cr_await
        elif hasattr(obj, "ag_frame"):
            frame, awaited = obj.ag_frame, obj.ag_await
        elif hasattr(obj, "gi_frame"):
            frame, awaited = obj.gi_frame, obj.gi_yieldfrom
        else:
            other = next((r for r in gc.get_referents(obj) if isinstance(r, asyncio.Task)), None)
            if other is not None:
                chain.append(f"<Task {other.get_name()!r}>")
            break
        if frame is None:
            break
        code = frame.f_code
        chain.append(f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{frame.f_lineno})")
        obj = awaited
    return chain
