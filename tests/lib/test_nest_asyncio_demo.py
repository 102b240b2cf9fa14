"""The facts chapter 0 states about nest_asyncio, kept true by running its demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

DEMO = [sys.executable, "-m", "course_lib.examples.nest_asyncio_demo"]


def _run(*args: str) -> str:
    done = subprocess.run([*DEMO, *args], capture_output=True, text=True, timeout=60, check=True)
    assert "never awaited" not in done.stderr, done.stderr
    return done.stdout


def test_apply_swaps_the_c_task_for_the_pure_python_one_and_nests_asyncio_run():
    out = _run("show")
    assert "Task class before apply(): _asyncio.Task" in out
    assert "Task class after apply():  asyncio.tasks.Task" in out
    assert "asyncio.run() inside a running loop, before apply(): RuntimeError" in out
    assert "asyncio.run() inside a running loop, after apply(): ran" in out


def test_apply_does_not_fix_asyncio_runner():
    assert "asyncio.Runner().run() after apply(): RuntimeError" in _run("show")


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop does not exist on Windows")
def test_apply_refuses_a_uvloop_loop():
    assert "nest_asyncio.apply(uvloop loop): ValueError: Can't patch loop" in _run("show")


def test_measure_reports_which_task_class_ran():
    patched = json.loads(_run("measure", "--patch", "--tasks", "200", "--repeats", "2"))
    plain = json.loads(_run("measure", "--no-patch", "--tasks", "200", "--repeats", "2"))
    assert patched["task_class"] == "asyncio.tasks.Task"
    assert plain["task_class"] == "_asyncio.Task"
    assert patched["median_us"] > 0 and plain["median_us"] > 0


def test_the_fork_nest_asyncio2_swaps_the_task_class_before_python_3_14_only():
    out = _run("show", "--module", "nest_asyncio2")
    assert f"nest_asyncio2 on Python {sys.version_info.major}.{sys.version_info.minor}" in out
    assert "asyncio.run() inside a running loop, after apply(): ran" in out
    # nest-asyncio2 skips the pure-Python Task on 3.14+: it would break current_task().
    after = "asyncio.tasks.Task" if sys.version_info < (3, 14) else "_asyncio.Task"
    assert f"Task class after apply():  {after}" in out
