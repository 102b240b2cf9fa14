"""Chapter 5's stuck worker: a TaskRegistry whose jobs hang, for attaching from outside.

    python -m course_lib.distributed --redis-url redis://127.0.0.1:6379/0 --queue stuck \\
        worker --app course_lib.examples.ch05_stuck_service:registry --aiomonitor-port 0

The tasks (each tried once: ``max_attempts=1``, so an outcome is final):

- ``wait_for_signal(name)``: awaits an ``asyncio.Event`` that nothing ever sets. The
  job's own task is suspended for good; aiomonitor's ``where`` shows the ``await``,
  py-spy sees nothing of it (a suspended coroutine is on no thread's stack).
- ``wait_for_reply(name)``: awaits a helper task, named ``reply <name>``, that awaits
  such an Event. Cancel the helper, not the job: the job then ends with
  ``CancelledError`` nobody asked it for, and the worker records it as failed.
- ``block(seconds)``: ``time.sleep(seconds)`` inside the coroutine, the classic
  mistake: the whole event loop stops, and py-spy's dump names the line.
- ``block_until(path, limit_s=600)``: the same mistake, held until the file ``path``
  exists (a test or a notebook releases it when it has looked).
- ``add(a, b)``: returns ``a + b``: proof that the worker goes on.

What the worker does when the *job's own task* is cancelled from outside (aiomonitor's
``cancel`` on the task named ``<worker> <entry id>``): not a stop, so not handed back;
the attempt failed ("cancelled from outside the worker"), retried if attempts are
left, else dead-lettered. Here, one attempt: the job is dead. A job that hangs is
also ended by a timeout: its task's ``timeout_s``, else the worker's
``--job-timeout`` (300 s by default).
"""

from __future__ import annotations

__all__ = ["add", "block", "block_until", "registry", "wait_for_reply", "wait_for_signal"]

import asyncio
import os
import time
from typing import Any

from course_lib.distributed import TaskRegistry

registry = TaskRegistry()


@registry.task(max_attempts=1)
async def wait_for_signal(name: str = "go") -> str:
    never = asyncio.Event()  # nothing holds a reference to set it: it never comes
    await never.wait()
    return f"{name} came"


@registry.task(max_attempts=1)
async def wait_for_reply(name: str = "reply") -> str:
    reply = asyncio.create_task(_reply(name), name=f"reply {name}")
    return await reply


async def _reply(name: str) -> str:
    never = asyncio.Event()
    await never.wait()
    return f"{name} came"


@registry.task(max_attempts=1)
async def block(seconds: float = 3.0) -> str:
    time.sleep(seconds)  # noqa: ASYNC251 (the bug on purpose: the loop stops here)
    return f"blocked {seconds} s"


@registry.task(max_attempts=1)
async def block_until(path: str, limit_s: float = 600.0) -> str:
    give_up = time.monotonic() + limit_s
    while not os.path.exists(path) and time.monotonic() < give_up:  # noqa: ASYNC240
        time.sleep(0.05)  # noqa: ASYNC251 (the bug on purpose: the loop stops here)
    return f"released by {path}"


@registry.task(max_attempts=1)
async def add(a: Any, b: Any) -> Any:
    return a + b
