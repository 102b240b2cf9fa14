"""course_lib: the reference implementations behind the asyncio course.

Plain modules, one idea each, importable from scripts and workers as well as
notebooks (none imports Jupyter at module level):

- ``course_lib.runtime``: ``run()`` a coroutine from synchronous code (it blocks the
  caller); ``await run_in_thread()`` from a coroutine or a notebook cell.
- ``course_lib.timeline``: record what every task did, and draw it.
- ``course_lib.redis``: ``connect()`` to a real Redis or the shared fakeredis.
- ``course_lib.grading``: ``check("0.1")`` and the grade table.
- ``course_lib.lifecycle``: cancel_and_wait, BackgroundTasks, graceful shutdown.
- ``course_lib.timeouts``: Deadline, retry with backoff and jitter, first_completed.
- ``course_lib.distributed``: a Redis Streams job queue, its worker and CLI.
- ``course_lib.scheduling``: PriorityTaskPool (aging), TokenBucket; re-exports
  ``course_lib.wrr``: InterleavedWRR (LVS), SmoothWRR (nginx), WeightedDispatcher.
"""

__all__: list[str] = []
