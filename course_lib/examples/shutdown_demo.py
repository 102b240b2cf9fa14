"""A tiny service that shuts down gracefully: run it, then press Ctrl-C (or send SIGTERM).

    python -m course_lib.examples.shutdown_demo --job-s 0.5 --grace-s 2

Workers take jobs from an asyncio.Queue. On the first SIGINT or SIGTERM the service
stops taking jobs, gives the jobs in progress a grace period, cancels those still
running (their cleanup hands the job back to the queue), prints a report and exits
with 0 (1 if a task failed or got stuck). A second signal exits at once, killed by
that signal (a shell shows 130 for SIGINT, 143 for SIGTERM), even while a cleanup
blocks the loop: try ``--cleanup-s 60 --blocking-cleanup``, whose cleanup is a
``time.sleep``. Chapter 1 runs it in a subprocess and sends it real signals; every
line is flushed at once.
"""

import argparse
import asyncio
import os
import sys
import time

from course_lib.lifecycle import BackgroundTasks, GracefulShutdown


def say(line: str) -> None:
    print(line, flush=True)  # flushed: a parent reading our pipe sees each line now


async def worker(
    name: str, queue: asyncio.Queue[int], busy: dict[str, int], stop: GracefulShutdown,
    job_s: float, cleanup_s: float, blocking_cleanup: bool = False,
) -> None:
    try:
        while not stop.is_set():  # stop requested: take no new job
            busy[name] = await queue.get()
            await asyncio.sleep(job_s)  # the work
            say(f"{name}: job {busy.pop(name)} done")
            queue.task_done()
    except asyncio.CancelledError:
        if name in busy:
            queue.put_nowait(busy.pop(name))  # unfinished: hand the job back
            queue.task_done()
        if blocking_cleanup:  # the bug: a blocking call, the loop stops for cleanup_s
            say(f"{name}: cleaning up, blocking the loop for {cleanup_s} s")
            time.sleep(cleanup_s)  # noqa: ASYNC251 - on purpose: what a second signal must cut
        else:
            await asyncio.sleep(cleanup_s)  # say, close a connection
        say(f"cancelled: {name} (cleanup done)")
        raise  # never swallow the cancel: close() must see this task end cancelled
    say(f"stopped: {name}")


async def main(args: argparse.Namespace) -> int:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for job in range(1, args.jobs + 1):
        queue.put_nowait(job)
    busy: dict[str, int] = {}
    async with GracefulShutdown() as stop:
        bg = BackgroundTasks(name="workers")
        for n in range(1, args.workers + 1):
            name = f"worker-{n}"
            coro = worker(name, queue, busy, stop, args.job_s, args.cleanup_s,
                          args.blocking_cleanup)
            bg.spawn(coro, name=name)
        say(f"ready (pid {os.getpid()}, {args.workers} workers, jobs of {args.job_s} s)")
        say(f"stop requested ({await stop.wait()})")
        # course_lib.lifecycle.serve() does these two steps; spelled out to print them.
        say(f"draining {len(busy)} jobs, grace {args.grace_s} s")
        report = await bg.close(args.grace_s, cancel_timeout_s=args.cancel_timeout_s)
        say(f"report: {report}")
        say(f"jobs left in the queue: {queue.qsize()}")
    return 0 if report.clean else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs queued at start")
    parser.add_argument("--job-s", type=float, default=0.5, help="how long each job takes")
    parser.add_argument("--cleanup-s", type=float, default=0.1, help="cleanup after a cancel")
    parser.add_argument("--blocking-cleanup", action="store_true",
                        help="clean up with time.sleep, blocking the loop (a bug to survive)")
    parser.add_argument("--grace-s", type=float, default=2.0, help="wait for jobs in progress")
    parser.add_argument("--cancel-timeout-s", type=float, default=5.0,
                        help="after cancelling, wait this long for cleanup")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
