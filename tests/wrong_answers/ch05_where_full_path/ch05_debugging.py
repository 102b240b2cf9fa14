"""Exercise 5.1 answered with the frame's full file path and its plain name (co_name):
``fetch (/home/me/course/tests/x.py:12)`` where ``Store.fetch (x.py:12)`` is asked for."""

import asyncio
import gc
import inspect

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "5.1"
EXPECT = "base name"


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
            held = gc.get_referents(obj)
            agen = next((r for r in held if inspect.isasyncgen(r)), None)
            if agen is not None:
                obj = agen
                continue
            other = next((r for r in held if isinstance(r, asyncio.Task)), None)
            if other is not None:
                chain.append(f"<Task {other.get_name()!r}>")
            break
        if frame is None:
            break
        chain.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})")
        obj = awaited
    return chain
