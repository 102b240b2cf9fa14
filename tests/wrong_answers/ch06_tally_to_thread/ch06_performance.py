"""Exercise 6.2 answered by moving the slow code to a worker thread: the loop is free
meanwhile, but the work is all still there (and the GIL runs one thread at a time)."""

import asyncio

from solutions.ch06_performance import *  # noqa: F403  (the other exercises, solved)
from solutions.ch06_performance import _load_settings, _route

EXERCISE = "6.2"
EXPECT = "3x needed"


def _tally(events, settings_json):
    counts = {}
    for event in events:
        settings = _load_settings(settings_json)
        if event["client"] in settings["blocked"]:
            continue
        name = _route(event["path"], settings["routes"])
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


async def tally(events, settings_json):
    return await asyncio.to_thread(_tally, events, settings_json)
