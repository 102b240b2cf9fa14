"""Exercise 6.2 answered with the routes in a dict, looked up by the path's prefixes,
longest first: fast, but the longest prefix wins where the original takes the first
route in the list ("/a" listed before "/a/b" gets "/a/b/c")."""

import asyncio

from solutions.ch06_performance import *  # noqa: F403  (the other exercises, solved)
from solutions.ch06_performance import _load_settings

EXERCISE = "6.2"
EXPECT = "the original"


async def tally(events, settings_json):
    settings = _load_settings(settings_json)
    blocked = set(settings["blocked"])
    by_prefix = {}
    for prefix, name in settings["routes"]:
        by_prefix.setdefault(prefix, name)
    counts = {}
    for n, event in enumerate(events, 1):
        if event["client"] in blocked:
            continue
        path = event["path"]
        name = next(
            (by_prefix[path[:k]] for k in range(len(path), -1, -1) if path[:k] in by_prefix),
            "other",
        )
        counts[name] = counts.get(name, 0) + 1
        if n % 100 == 0:
            await asyncio.sleep(0)
    return dict(sorted(counts.items()))
