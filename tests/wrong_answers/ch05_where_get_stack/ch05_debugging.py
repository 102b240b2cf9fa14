"""Exercise 5.1 answered with ``task.get_stack()``, what the article's ``print_stack``
shows: for a suspended task, only the frame of its own coroutine, never what it awaits."""

import os

from solutions.ch05_debugging import *  # noqa: F403  (the other exercises, solved)

EXERCISE = "5.1"
EXPECT = "get_stack"


def where(task):
    return [
        f"{f.f_code.co_qualname} ({os.path.basename(f.f_code.co_filename)}:{f.f_lineno})"
        for f in task.get_stack()
    ]
