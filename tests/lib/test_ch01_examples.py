"""course_lib.examples.ch01_harness: chapter 1's subprocess and logging helpers."""

from __future__ import annotations

import logging
import sys

from course_lib.examples.ch01_harness import caught_logs, facts, pythons, run_script


def test_run_script_returns_the_lines_and_the_exit_code():
    result = run_script("print('one'); print('two'); raise SystemExit(3)")
    assert result.lines == ["one", "two"]
    assert result.exit_code == 3
    assert not result.killed


def test_run_script_kills_a_script_that_stays_silent_past_the_timeout():
    result = run_script("import time; print('started'); time.sleep(60)", timeout_s=2)
    assert result.lines == ["started"]
    assert result.killed


def test_run_script_cuts_a_traceback_to_its_exception_line():
    result = run_script("def f():\n    raise ValueError('bad')\nf()")
    assert result.lines == ["Traceback (most recent call last): ...", "ValueError: bad"]
    assert result.exit_code == 1


def test_run_script_sends_sigint_after_each_prefix():
    script = (
        "import asyncio\n"
        "async def main():\n"
        "    print('ready')\n"
        "    try:\n"
        "        await asyncio.sleep(60)\n"
        "    except asyncio.CancelledError:\n"
        "        print('cancelled')\n"
        "        raise\n"
        "try:\n"
        "    asyncio.run(main())\n"
        "except KeyboardInterrupt:\n"
        "    print('KeyboardInterrupt')\n"
    )
    result = run_script(script, sigint_after=["ready"])
    assert result.lines == ["ready", "cancelled", "KeyboardInterrupt"]
    assert result.exit_code == 0


def test_caught_logs_collects_first_lines_and_restores_the_logger():
    logger = logging.getLogger("ch01-harness-test")
    with caught_logs("ch01-harness-test") as caught:
        logger.error("first line\nsecond line")
    assert caught == ["first line"]
    assert logger.propagate is True
    assert not logger.handlers


def test_facts_keeps_the_lines_that_do_not_depend_on_timing():
    lines = ["ready (pid 1)", "stop requested (SIGTERM)", "report: finished=[a] in 0.31 s",
             "worker-1: job 1 done", "jobs left in the queue: 7"]
    assert facts(lines, 0) == [
        "stop requested (SIGTERM)", "report: finished=[a] in … s",
        "jobs left in the queue: 7", "exit code 0",
    ]


def test_pythons_lists_this_python_first_among_3_11_and_newer():
    found = pythons()
    versions = [tuple(map(int, v.split("."))) for v, _ in found]
    assert versions == sorted(versions) and all(v >= (3, 11) for v in versions)
    assert (f"{sys.version_info.major}.{sys.version_info.minor}", sys.executable) in found
