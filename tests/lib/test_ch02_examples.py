"""course_lib.examples.ch02_table: chapter 2's table of timeout mechanisms, in virtual time."""

from __future__ import annotations

import asyncio

import pytest

from course_lib.examples.ch02_table import WAYS, mechanism_table

pytestmark = [pytest.mark.asyncio, pytest.mark.looptime]
LIMIT_S = 0.1


async def call(log, work_s=0.3, stubborn=False):
    """The notebook's call: works work_s; cancelled, cleans up 100 ms (stubborn: works on)."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(work_s)
        log.append(("finished", loop.time()))
        return "ok"
    except asyncio.CancelledError:
        log.append(("cancelled", loop.time()))
        await asyncio.sleep(0.2 if stubborn else 0.1)
        log.append(("finished" if stubborn else "cleaned up", loop.time()))
        if stubborn:
            return "late"
        raise


async def with_timeout(coro):
    async with asyncio.timeout(LIMIT_S):
        return await coro


async def with_wait(coro):
    task = asyncio.create_task(coro)
    return await asyncio.wait({task}, timeout=LIMIT_S)


async def with_wait_then_cancel(coro):
    task = asyncio.create_task(coro)
    done, pending = await asyncio.wait({task}, timeout=LIMIT_S)
    for t in pending:
        t.cancel()
    return done, pending


MECHANISMS = {"timeout": with_timeout, "wait": with_wait, "article": with_wait_then_cancel}


async def test_the_table_says_what_each_mechanism_did():
    table = await mechanism_table(MECHANISMS, call)
    assert set(table.runs) == {(m, w) for m in MECHANISMS for w in WAYS}
    timeout, wait, article = (table.rows[m] for m in MECHANISMS)
    assert timeout["call done in 50 ms"] == "returns 'ok'"
    assert timeout["300 ms call"] == "raises TimeoutError at ~200 ms"
    assert timeout["cancels the call"] == "yes"
    assert timeout["its 100 ms cleanup done before you go on"] == "yes"
    assert timeout["call that ignores the cancel"] == "returns 'late' at ~300 ms"
    assert timeout["caller cancelled at 50 ms"] == "raises CancelledError, call cancelled too"
    assert wait["300 ms call"] == "returns (set(), {task}) at ~100 ms"
    assert wait["cancels the call"] == "no: it finishes at ~300 ms"
    assert wait["its 100 ms cleanup done before you go on"] == "n/a"
    assert wait["caller cancelled at 50 ms"] == "raises CancelledError, call runs on"
    assert article["its 100 ms cleanup done before you go on"] == "no: ~100 ms later"
    assert {row["sibling task"] for row in table.rows.values()} == {"untouched"}


async def test_markdown_and_raw_times():
    table = await mechanism_table({"timeout": with_timeout}, call)
    lines = table.markdown().splitlines()
    assert lines[0].startswith("| mechanism | call done in 50 ms |")
    assert lines[1] == "|---" * 8 + "|"
    assert lines[2].startswith("| `timeout` | returns 'ok' | raises TimeoutError at ~200 ms |")
    raw = table.raw_ms()
    assert raw.startswith("timeout") and "'slow': {'cancelled': 100, 'cleaned up': 200" in raw
