"""Exercise 5.1 answered with recursion, one call per frame: a chain 1,000 awaits deep
raises RecursionError (the recursion limit is 1,000 frames, and the test's own are some)."""

import asyncio
import gc
import inspect
import os

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "5.1"
EXPECT = "RecursionError"


def _chain(obj) -> list[str]:
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
            return _chain(agen)
        other = next((r for r in held if isinstance(r, asyncio.Task)), None)
        return [f"<Task {other.get_name()!r}>"] if other is not None else []
    if frame is None:
        return []
    code = frame.f_code
    here = f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{frame.f_lineno})"
    return [here] + (_chain(awaited) if awaited is not None else [])


def where(task):
    return [] if task.done() else _chain(task.get_coro())
