"""Debugging and monitoring asyncio, live (chapter 5): task trees, watchdog, debug mode, leaks.

One module an idea; the names most code needs are re-exported here:

- ``course_lib.monitor.tasks``: ``snapshot()`` of every task (state, age, the line it
  is suspended at, what it waits for, who awaits whom), drawn as a tree like
  ``python -m asyncio pstree`` with deadlock cycles marked, or as a table;
  ``where(task)``; ``track()`` for ages and creation lines.
- ``course_lib.monitor.watchdog``: ``LoopWatchdog``, a thread that measures the loop's
  lag and reads the loop thread's stack while it is blocked, with a lag histogram.
- ``course_lib.monitor.debug``: ``debug_block()``, asyncio's debug mode for one block,
  its reports collected into one table instead of log noise.
- ``course_lib.monitor.leaks``: ``TaskCensus`` (task counts by coroutine over time),
  ``memory_diff()`` (tracemalloc around a block), ``VanishedTasks`` (chapter 1's
  weak-reference trap caught with the line that created the task).
- ``course_lib.monitor.dashboard``: ``live_dashboard()`` / ``Dashboard``: tasks, loop lag
  and chapter 4's queue (in flight per worker, done/s) redrawn in place until it stops
  (``until=drained``, a duration, an interrupt); a ``DashboardReport`` to print or plot.
- ``course_lib.monitor.queue_figures``: ``read_queue_figures()``, a chapter-4 queue's
  counts, in flight per worker, rates and done/s in one bounded Redis round trip (the
  figures of the dashboard and of ``stats --watch``).
- ``course_lib.monitor.attach``: from outside a running process: ``AioMonitor`` drives
  aiomonitor (ps, where, cancel) in a worker started with ``--aiomonitor-port``;
  ``py_spy_dump(pid)`` gives its threads' stacks, or one line saying why it could not.

The less common names (rows, reports, kinds) stay in their modules.
"""

__all__ = [
    "AioMonitor",
    "AttachError",
    "Dashboard",
    "DashboardReport",
    "LoopWatchdog",
    "TaskCensus",
    "VanishedTasks",
    "debug_block",
    "drained",
    "live_dashboard",
    "memory_diff",
    "monitor_url",
    "py_spy_dump",
    "snapshot",
    "track",
    "where",
]

from course_lib.monitor.attach import AioMonitor, AttachError, monitor_url, py_spy_dump
from course_lib.monitor.dashboard import Dashboard, DashboardReport, drained, live_dashboard
from course_lib.monitor.debug import debug_block
from course_lib.monitor.leaks import TaskCensus, VanishedTasks, memory_diff
from course_lib.monitor.tasks import snapshot, track, where
from course_lib.monitor.watchdog import LoopWatchdog
