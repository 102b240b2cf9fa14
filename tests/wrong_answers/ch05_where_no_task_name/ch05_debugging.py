"""Exercise 5.1 answered with a walk that stops at the first object with no frame, and
so never says which task a task awaits (the Future's iterator holds it)."""

import gc
import inspect
import os

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "5.1"
EXPECT = "name the Task"


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
            obj = next((r for r in gc.get_referents(obj) if inspect.isasyncgen(r)), None)
            continue
        if frame is None:
            break
        code = frame.f_code
        chain.append(f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{frame.f_lineno})")
        obj = awaited
    return chain
