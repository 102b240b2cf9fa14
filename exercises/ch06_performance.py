"""Chapter 6: performance and scale.

Edit the code below, then run ``check("6.1")`` and ``check("6.2")`` in
notebooks/06_performance.ipynb.
"""

from __future__ import annotations

__all__ = ["fetch_all", "tally", "tally_slow"]

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def fetch_all(
    fetch: Callable[[T], Awaitable[R]], items: Iterable[T], *, limit: int
) -> list[R]:
    """Exercise 6.1: fetch every item, at most ``limit`` calls at a time, as fast as that allows.

        pages = await fetch_all(get_page, urls, limit=10)   # pages[i] is get_page(urls[i])

    - Call ``await fetch(item)`` once for every item, and return the results in the
      order of ``items`` (not the order the calls finished). No items: ``[]``.
    - ``items`` is any iterable: a list, or a generator, read once.
    - Never more than ``limit`` calls of ``fetch`` in flight at the same moment (the
      service behind it allows ``limit`` connections), with 1,000 items too.
    - And as fast as that allows: ``limit`` calls in flight for as long as items are
      left, a new call starting as soon as one ends. 100 calls of 1 s each, ``limit``
      10, take 10 s; and when latencies vary, no call waits for the slowest of a group.
    - ``limit`` larger than the number of items: every item at once.
    - One call fails (raises an Exception): start no new call, cancel the calls still
      in flight, wait until they have ended, then raise the error (as it is, or in an
      ExceptionGroup, as a TaskGroup does).
    - fetch_all() itself is cancelled, once or again while the calls clean up: the
      same, then CancelledError goes on. When fetch_all() has ended, however it
      ended, none of its calls is still running.
    - ``limit`` below 1: ValueError, before any call.
    """
    raise NotImplementedError("Exercise 6.1: fetch_all")


# --- 6.2: find and fix a hot spot ----------------------------------------------------------


def _load_settings(text: str) -> dict[str, Any]:
    """The settings, parsed and checked:
    ``{"blocked": [client, ...], "routes": [[prefix, name], ...]}``."""
    settings = json.loads(text)
    if not isinstance(settings.get("blocked"), list):
        raise ValueError("settings: 'blocked' must be a list of clients")
    if not isinstance(settings.get("routes"), list):
        raise ValueError("settings: 'routes' must be a list of [prefix, name] pairs")
    return settings


def _route(path: str, routes: list[list[str]]) -> str:
    """The name of the first route whose prefix ``path`` starts with; "other" if none."""
    for prefix, name in routes:
        if path.startswith(prefix):
            return name
    return "other"


async def tally_slow(events: list[dict[str, str]], settings_json: str) -> dict[str, int]:
    """The original job handler: correct, and slow. Leave it as it is (the checks keep a
    copy of it and compare your ``tally`` with that copy).

    A worker runs it on every batch of access-log events it takes from the queue:
    how many requests each route got, leaving out the blocked clients.

        await tally_slow(
            [{"client": "10.0.0.7", "path": "/api/items/3"},
             {"client": "10.0.0.9", "path": "/login"}],
            '{"blocked": ["10.0.0.9"], "routes": [["/api/", "api"], ["/", "site"]]}',
        )
        # {'api': 1}
    """
    counts: dict[str, int] = {}
    for n, event in enumerate(events, 1):
        settings = _load_settings(settings_json)
        if event["client"] in settings["blocked"]:
            continue
        name = _route(event["path"], settings["routes"])
        counts[name] = counts.get(name, 0) + 1
        if n % 100 == 0:
            await asyncio.sleep(0)  # let the worker's other tasks run now and then
    return dict(sorted(counts.items()))


async def tally(events: list[dict[str, str]], settings_json: str) -> dict[str, int]:
    """Exercise 6.2: ``tally_slow``, made fast: find its hot spot with a profiler, fix it.

    - The same answer as ``tally_slow`` for every batch of events and every (valid)
      settings: the checks compare the two on many (routes that overlap, clients
      blocked or not, empty batches); the same dict in the same order, inputs unchanged.
    - Each call follows the settings it is given: two calls with different settings
      give two different answers, one after the other or at the same time (a worker
      runs several batches at once, each with its own settings).
    - At least 3x faster than ``tally_slow`` on a batch of 1,000 events with a
      realistic settings (400 blocked clients, 40 routes), measured against it in the
      same run: CPU time and elapsed time, the best of several runs of each, taken
      in turns. A good fix is more than 10x faster.

    Find the spot before you change anything: guessing is how one makes fast the
    part that was never slow. In the notebook, on a big batch::

        import cProfile, pstats
        with cProfile.Profile() as prof:
            await tally_slow(events, settings_json)
        pstats.Stats(prof).sort_stats("cumulative").print_stats(12)

    or pyinstrument, which knows about coroutines (``async_mode="enabled"``)::

        from pyinstrument import Profiler
        with Profiler(async_mode="enabled") as prof:
            await tally_slow(events, settings_json)
        prof.print()

    and on a running worker, from a terminal: ``py-spy top --pid <pid>``. Read the
    cumulative column: which call takes most of the time, and how many times is it
    made? Fix it, profile again: the next spot shows up once the first is gone.
    Wrapping the slow code in ``asyncio.to_thread`` moves the work elsewhere, it
    does not make it less.
    """
    raise NotImplementedError("Exercise 6.2: tally")
