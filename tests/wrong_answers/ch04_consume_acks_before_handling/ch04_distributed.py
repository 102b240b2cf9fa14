"""Exercise 4.4 that acks an entry as soon as it is read, then handles it: a crash loses it."""

import asyncio

from solutions.ch04_distributed import *  # noqa: F403  (the other exercises, solved)
from solutions.ch04_distributed import entries

EXERCISE = "4.4"
EXPECT = 'acked before'


async def consume(redis, stream, group, consumer, handle, *, stop: asyncio.Event, count=10,
                  block_ms=1_000, min_idle_ms=30_000):
    if count < 1 or block_ms < 1:
        raise ValueError("count and block_ms must be at least 1")
    acked = 0

    async def settle(batch):
        nonlocal acked
        for entry_id, fields in batch:
            acked += await redis.xack(stream, group, entry_id)  # "got it", then work
            try:
                await handle(entry_id, fields)
            except Exception:
                continue

    after = "0"
    while batch := entries(await redis.xreadgroup(group, consumer, {stream: after}, count=count)):
        await settle(batch)
        after = batch[-1][0]
    while not stop.is_set():
        _, claimed, *_ = await redis.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms,
                                                start_id="0-0", count=count)
        await settle(claimed)
        if stop.is_set():
            break
        reply = await redis.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms)
        await settle(entries(reply))
    return acked
