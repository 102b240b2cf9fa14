"""A small TaskRegistry for the CLI tests: ``--app _cli_app:registry`` (tests/lib on the path).

- ``add(a, b)``: returns ``a + b``.
- ``boom(message)``: raises ValueError; one attempt only.
- ``slow(seconds)``: sleeps, then returns ``"slept <seconds>"`` (to stop a worker mid-job).
- ``freeze(seconds)``: blocks the worker's loop with ``time.sleep`` (for ``--watchdog``).
- ``loop_class()``: the class of the loop it runs on, ``module.Name`` (for ``--loop``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from course_lib.distributed import TaskRegistry

registry = TaskRegistry()
empty = TaskRegistry()  # an app with nothing to run: refused
not_a_registry = {"add": "not a registry"}


@registry.task
async def add(a: Any, b: Any) -> Any:
    return a + b


@registry.task(max_attempts=1)
async def boom(message: str = "boom") -> None:
    raise ValueError(message)


@registry.task(timeout_s=60)
async def slow(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@registry.task(max_attempts=1)
async def freeze(seconds: float) -> str:
    time.sleep(seconds)  # noqa: ASYNC251 -- the loop blocked on purpose: the watchdog names it
    return f"froze {seconds}"


@registry.task
async def loop_class() -> str:
    loop = type(asyncio.get_running_loop())
    return f"{loop.__module__}.{loop.__qualname__}"
