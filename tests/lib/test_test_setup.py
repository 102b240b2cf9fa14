"""The test suite's own promises: debug-mode loops, and asyncio reports that fail tests."""

from __future__ import annotations

import asyncio
import gc
import os

import pytest


@pytest.mark.asyncio
async def test_test_loops_run_in_asyncio_debug_mode():
    assert asyncio.get_running_loop().get_debug()


def test_debug_mode_does_not_leak_into_subprocesses_and_kernels():
    assert "PYTHONASYNCIODEBUG" not in os.environ


@pytest.mark.allow_asyncio_errors
@pytest.mark.asyncio
async def test_an_unretrieved_task_exception_is_reported(caplog):
    async def broken():
        raise ValueError("nobody looks at me")

    task = asyncio.create_task(broken())
    await asyncio.sleep(0)
    del task
    gc.collect()
    assert "Task exception was never retrieved" in caplog.text
