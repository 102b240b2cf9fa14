"""Chapter 2's table: every timeout mechanism run four ways on one call, compared.

    table = await mechanism_table(MECHANISMS, call)
    display(Markdown(table.markdown()))

``MECHANISMS`` maps a name to ``async def mechanism(coro)`` (``wait_for`` around the
call, ``async with asyncio.timeout(...)``, ...); ``call(log, work_s, stubborn)`` is the
notebook's call under test, which appends ``(event, loop time)`` pairs to ``log``. Each
mechanism meets four situations (``WAYS``), all at the same time, each run in a task of
its own: a call done in 50 ms, a 300 ms call, a stubborn call that ignores its cancel,
and the 300 ms call with the *caller* cancelled from outside at 50 ms. Each run also
starts an unrelated sibling task and checks afterwards that nothing touched it.

The notebook keeps the lesson (the call, the mechanisms, what the table says); this
module keeps the plumbing that turns runs into a table.
"""

from __future__ import annotations

__all__ = ["WAYS", "MechanismTable", "mechanism_table"]

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

WAYS = ("fast", "slow", "stubborn", "outer cancel")
_FAST_S, _SLOW_S = 0.05, 0.3  # the call's work in the "fast" way, and in the others
_OUTER_CANCEL_S = 0.05  # when the caller is cancelled from outside, in "outer cancel"
_SETTLE_S = 0.5  # each run lasts this long, so what a mechanism left behind can finish

Mechanism = Callable[[Any], Awaitable[Any]]
Call = Callable[..., Any]


@dataclass
class MechanismTable:
    """The runs (``{(mechanism, way): {event: seconds since the start, ...}}``) and the rows."""

    runs: dict[tuple[str, str], dict[str, Any]]
    rows: dict[str, dict[str, str]]

    def markdown(self) -> str:
        """The table as Markdown, one row per mechanism."""
        header = ["mechanism", *next(iter(self.rows.values()))]
        lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for m, cells in self.rows.items():
            lines.append(f"| `{m}` | " + " | ".join(cells.values()) + " |")
        return "\n".join(lines)

    def raw_ms(self, ways: tuple[str, ...] = ("slow", "stubborn")) -> str:
        """The times behind the table, in ms since each run started, one line per mechanism."""
        lines = []
        for m in self.rows:
            timings = {
                w: {k: round(v * 1000) for k, v in self.runs[m, w].items() if isinstance(v, float)}
                for w in ways
            }
            lines.append(f"{m:30} {timings}")
        return "\n".join(lines)


async def mechanism_table(mechanisms: Mapping[str, Mechanism], call: Call) -> MechanismTable:
    """Run every mechanism in every way at once; the runs and the table they fill in."""
    async with asyncio.TaskGroup() as tg:
        tasks = {
            (m, w): tg.create_task(_observe(f, call, w), name=f"{m}: {w}")
            for m, f in mechanisms.items()
            for w in WAYS
        }
    runs = {key: task.result() for key, task in tasks.items()}
    rows = {m: _row(*(runs[m, w] for w in WAYS)) for m in mechanisms}
    return MechanismTable(runs, rows)


async def _observe(mechanism: Mechanism, call: Call, way: str) -> dict[str, Any]:
    """One run: {event: seconds since the start} of the call, plus the outcome."""
    loop, log = asyncio.get_running_loop(), []
    start = loop.time()
    sibling = asyncio.create_task(asyncio.sleep(0.2), name="sibling")
    work_s = _FAST_S if way == "fast" else _SLOW_S
    caller = asyncio.create_task(mechanism(call(log, work_s, way == "stubborn")))
    caller.add_done_callback(lambda _: log.append(("back", loop.time())))
    if way == "outer cancel":
        loop.call_later(_OUTER_CANCEL_S, caller.cancel)
    await asyncio.wait({caller})
    await asyncio.sleep(start + _SETTLE_S - loop.time())  # let what was left behind finish
    seen: dict[str, Any] = {event: at - start for event, at in log}
    seen["outcome"] = _outcome(caller)
    seen["sibling"] = "untouched" if sibling.done() and not sibling.cancelled() else "disturbed"
    return seen


def _outcome(task: asyncio.Task[Any]) -> str:
    """What the caller got, in words."""
    if task.cancelled():
        return "raises CancelledError"
    if task.exception() is not None:
        return f"raises {type(task.exception()).__name__}"
    got = task.result()
    if isinstance(got, tuple):  # wait(): (done, pending)
        return "returns " + ("({task}, set())" if got[0] else "(set(), {task})")
    return f"returns {got!r}"


def _ms(seconds: float) -> str:
    return f"~{round(seconds * 10) * 100} ms"  # to the nearest 100 ms: sleeps jitter a little


def _row(fast: dict, slow: dict, stubborn: dict, outer: dict) -> dict[str, str]:
    cancelled = "cancelled" in slow
    if not cancelled:
        cleanup = "n/a"
    elif slow["cleaned up"] <= slow["back"]:
        cleanup = "yes"
    else:
        cleanup = f"no: {_ms(slow['cleaned up'] - slow['back'])} later"
    return {
        "call done in 50 ms": fast["outcome"],
        "300 ms call": f"{slow['outcome']} at {_ms(slow['back'])}",
        "cancels the call": "yes" if cancelled else f"no: it finishes at {_ms(slow['finished'])}",
        "its 100 ms cleanup done before you go on": cleanup,
        "call that ignores the cancel": f"{stubborn['outcome']} at {_ms(stubborn['back'])}",
        "caller cancelled at 50 ms": outer["outcome"]
        + (", call cancelled too" if "cancelled" in outer else ", call runs on"),
        "sibling task": slow["sibling"],
    }
