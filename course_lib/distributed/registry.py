"""The task registry: which ``async def`` functions a worker may run, and how.

    registry = TaskRegistry()

    @registry.task(max_attempts=5, timeout_s=30, retry_on=(ConnectionError,))
    async def resize(image_id: int) -> str: ...

A job names its task; a worker runs only the tasks of its registry, so a job naming
anything else is dead-lettered, never imported or evaluated (``job`` has the envelope).
"""

from __future__ import annotations

__all__ = ["Task", "TaskRegistry"]

import dataclasses
import inspect
import math
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from .job import _TASK_NAME, _is_number


@dataclasses.dataclass(frozen=True, slots=True)
class Task:
    """A registered task: the coroutine function and how the worker treats it."""

    name: str
    fn: Callable[..., Awaitable[Any]]
    max_attempts: int = 3
    timeout_s: float | None = None
    retry_on: tuple[type[Exception], ...] = (Exception,)

    def retries(self, exc: BaseException) -> bool:
        """True when a failure with ``exc`` deserves another attempt."""
        return isinstance(exc, self.retry_on)


class TaskRegistry:
    """The allow-list of tasks a worker may run, by name.

        registry = TaskRegistry()

        @registry.task(max_attempts=5, timeout_s=30, retry_on=(ConnectionError,))
        async def resize(image_id: int, width: int = 640) -> str: ...

        registry["resize"].fn    # the function; a job naming anything else is dead-lettered
    """

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self.periodic: list[Any] = []  # Periodic schedules (``every``), for the schedulers

    def __repr__(self) -> str:
        return f"<TaskRegistry {sorted(self._tasks)}>"

    def task(
        self,
        fn: Callable[..., Awaitable[Any]] | None = None,
        *,
        name: str | None = None,
        max_attempts: int = 3,
        timeout_s: float | None = None,
        retry_on: tuple[type[Exception], ...] | type[Exception] = (Exception,),
    ) -> Any:
        """Register an ``async def`` (as ``@registry.task`` or ``@registry.task(...)``)."""

        def register(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            self.add(fn, name=name, max_attempts=max_attempts, timeout_s=timeout_s,
                     retry_on=retry_on)
            return fn

        return register if fn is None else register(fn)

    def add(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        name: str | None = None,
        max_attempts: int = 3,
        timeout_s: float | None = None,
        retry_on: tuple[type[Exception], ...] | type[Exception] = (Exception,),
    ) -> Task:
        """Register ``fn`` under ``name`` (default: its ``__name__``); return the Task."""
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"task {fn!r} must be an async def function: the worker awaits it")
        name = fn.__name__ if name is None else name
        if not isinstance(name, str) or not _TASK_NAME.fullmatch(name):
            raise ValueError(f"task name {name!r} is not usable: a letter or '_', then "
                             "letters, digits, '_.:-' (at most 200)")
        if name in self._tasks:
            raise ValueError(f"task {name!r} is already registered ({self._tasks[name].fn!r})")
        if type(max_attempts) is not int or max_attempts < 1:
            raise ValueError(f"max_attempts must be an integer >= 1, not {max_attempts!r}")
        if timeout_s is not None and not (_is_number(timeout_s) and 0 < timeout_s < math.inf):
            raise ValueError(f"timeout_s must be a number > 0 or None, not {timeout_s!r}")
        classes = retry_on if isinstance(retry_on, tuple) else (retry_on,)
        for cls in classes:
            # CancelledError and KeyboardInterrupt are BaseException: never retried.
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                raise TypeError(f"retry_on must hold Exception subclasses, not {cls!r}")
        task = Task(name, fn, max_attempts, timeout_s, classes)
        self._tasks[name] = task
        return task

    def every(self, every_s: Any, task: str, args: Sequence[Any] = (),
              kwargs: Mapping[str, Any] | None = None, *, offset_s: Any = 0.0,
              name: str | None = None, deadline_s: Any = None) -> Any:
        """Run the registered ``task`` every ``every_s`` (seconds or a timedelta); its Periodic.

            registry.every(3600, "cleanup")                               # on every hour
            registry.every(86400, "report", ["daily"], offset_s=3 * 3600)   # 03:00 UTC daily

        Ticks are aligned to the Unix epoch (UTC) plus ``offset_s``; the workers running
        this registry enqueue each tick's job once between them (see ``periodic``). A
        tick's job that has not started ``deadline_s`` after its tick (default: at the
        next tick; ``math.inf``: never) dies unrun instead of running late.
        """
        from .periodic import Periodic  # here: periodic imports this module

        if task not in self._tasks:
            raise ValueError(f"no task {task!r} in {self!r}: register it first")
        schedule = Periodic(task, every_s, offset_s, args, kwargs or {}, name or task,
                            deadline_s)
        if any(p.name == schedule.name for p in self.periodic):
            raise ValueError(f"a periodic schedule named {schedule.name!r} is already in "
                             f"{self!r}: give this one another name=")
        self.periodic.append(schedule)
        return schedule

    def get(self, name: str) -> Task | None:
        return self._tasks.get(name)

    def __getitem__(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise KeyError(f"no task {name!r} in {self!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)
