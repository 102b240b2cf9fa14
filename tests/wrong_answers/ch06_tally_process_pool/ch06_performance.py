"""Exercise 6.2 answered with a process pool: this process's CPU time drops, since the
work is done by another one, which only makes the batch take longer."""

import asyncio
from concurrent.futures import ProcessPoolExecutor

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
    with ProcessPoolExecutor(1) as pool:
        return await asyncio.get_running_loop().run_in_executor(pool, _tally, events, settings_json)
