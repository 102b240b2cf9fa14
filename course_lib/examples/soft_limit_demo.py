"""What a Celery soft time limit does to async code run from a sync task: two ways, compared.

    python -m course_lib.examples.soft_limit_demo

No Celery needed. Celery's prefork pool enforces ``soft_time_limit`` the way this
script does: a timer sends the worker process a signal (SIGUSR1), and the signal
handler raises ``SoftTimeLimitExceeded`` in the main thread, wherever it happens
to be (billiard's ``soft_timeout_sighandler``). The job is async: it awaits for 5 s
and has cleanup to run. The limit is 0.2 s.

1. ``asyncio.run()`` per task (the usual bridge): the exception lands in the event
   loop's ``select()``, not at the job's ``await``. The job hears of it only because
   ``asyncio.run`` cancels the leftover tasks as it closes the loop.
2. One long-lived loop in a thread, the task waiting on
   ``run_coroutine_threadsafe(...).result()``: the exception lands in that wait,
   and the task cancels the job's future: a real cancellation, at the job's await.

Prints what happened, one line per event; the notebook of chapter 4 runs it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import traceback


class SoftTimeLimitExceeded(Exception):
    """Stands for celery.exceptions.SoftTimeLimitExceeded."""


def _raise_soft_limit(signum: int, frame: object) -> None:
    raise SoftTimeLimitExceeded()  # what billiard's handler does


def say(line: str) -> None:
    print(line, flush=True)


async def job(label: str) -> str:
    try:
        await asyncio.sleep(5)  # waiting on I/O
        return "done"
    except asyncio.CancelledError:
        say(f"  {label} job: CancelledError at its await; cleaning up")
        raise
    finally:
        say(f"  {label} job: finally ran")


def _where(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-2]  # [-1] is the signal handler
    return f"{os.path.basename(frame.filename)}, in {frame.name}()"


def task_with_asyncio_run() -> None:
    say("1. asyncio.run() per task")
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    try:
        asyncio.run(job("1."))
    except SoftTimeLimitExceeded as exc:
        say(f"  SoftTimeLimitExceeded raised in {_where(exc)}")
    finally:
        timer.cancel()


def task_with_loop_thread(loop: asyncio.AbstractEventLoop) -> None:
    say("2. one loop in a thread, run_coroutine_threadsafe")
    ended = threading.Event()  # the concurrent future says "cancelled" at once: too early

    async def tracked() -> str:
        try:
            return await job("2.")
        finally:
            ended.set()

    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGUSR1))
    timer.start()
    future = asyncio.run_coroutine_threadsafe(tracked(), loop)
    try:
        future.result(timeout=10)
    except SoftTimeLimitExceeded as exc:
        say(f"  SoftTimeLimitExceeded raised in {_where(exc)}; cancelling the job")
        future.cancel()  # reaches the job as CancelledError, at its await
        say(f"  its cleanup finished within 5 s: {ended.wait(timeout=5)}")
    finally:
        timer.cancel()


def main() -> None:
    signal.signal(signal.SIGUSR1, _raise_soft_limit)
    task_with_asyncio_run()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="the worker's loop")
    thread.start()
    try:
        task_with_loop_thread(loop)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()


if __name__ == "__main__":
    main()
