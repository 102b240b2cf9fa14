"""The test suite's own promises: debug-mode loops, and asyncio reports that fail tests."""

from __future__ import annotations

import asyncio
import gc
import os
import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


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


def test_asyncio_reports_and_unawaited_coroutines_fail_the_test_that_caused_them(pytester):
    """The suite's hygiene, run on three deliberately sloppy tests in a scratch project."""
    tests = Path(__file__).resolve().parents[1]
    pytester.makeconftest((tests / "conftest.py").read_text())
    pytester.makepyfile(_redis_server=(tests / "_redis_server.py").read_text(),
                        _redis_cluster=(tests / "_redis_cluster.py").read_text())
    pyproject = tomllib.loads((tests.parent / "pyproject.toml").read_text())
    ini = pyproject["tool"]["pytest"]["ini_options"]
    pytester.makeini(
        "[pytest]\n"
        "asyncio_mode = strict\nasyncio_debug = true\n"
        "asyncio_default_fixture_loop_scope = function\n"
        "markers =\n" + "".join(f"    {m}\n" for m in ini["markers"])
        + "filterwarnings =\n" + "".join(f"    {w}\n" for w in ini["filterwarnings"])
    )
    pytester.makepyfile(
        test_sloppy="""
        import asyncio, gc
        import pytest

        async def boom():
            raise ValueError("nobody looks")

        async def forever():
            await asyncio.sleep(3600)

        @pytest.mark.asyncio
        async def test_never_retrieved():
            task = asyncio.create_task(boom())
            await asyncio.sleep(0)
            del task

        def test_never_awaited():
            boom()
            gc.collect()

        def test_destroyed_while_pending():
            loop = asyncio.new_event_loop()
            loop.create_task(forever())
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

        def test_clean():
            pass
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:nbval")
    # asyncio's reports arrive after the test body, so they fail its teardown (an error).
    result.assert_outcomes(passed=3, failed=1, errors=2)
    result.stdout.fnmatch_lines(
        [
            "FAILED test_sloppy.py::test_never_awaited*",
            "ERROR test_sloppy.py::test_never_retrieved*",
            "ERROR test_sloppy.py::test_destroyed_while_pending*",
        ],
        consecutive=False,
    )
    out = result.stdout.str()
    for report in ("was never awaited", "Task exception was never retrieved",
                   "Task was destroyed but it is pending"):
        assert report in out, report
