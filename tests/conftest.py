"""Shared test configuration for the whole course.

- ``--target``: which package the grading tests grade (``exercises`` or
  ``solutions``); ``COURSE_TARGET`` sets the default.
- asyncio debug mode for every loop pytest-asyncio creates.
- asyncio's own error reports ("Task exception was never retrieved",
  "Task was destroyed but it is pending!") fail the test that caused them;
  "coroutine ... was never awaited" does too, through the warning filters in
  pyproject.toml.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os

import pytest

# asyncio debug mode is switched on by pytest-asyncio (`asyncio_debug = true` in
# pyproject.toml), for the test loops only. Not through PYTHONASYNCIODEBUG: that
# would reach every subprocess and notebook kernel the tests start, and skew
# what they show and measure.

pytest_plugins = ["_redis_server", "_redis_cluster"]

_ASYNCIO_REPORTS = (
    "Task exception was never retrieved",
    "Task was destroyed but it is pending",
    "Future exception was never retrieved",
    "exception was never retrieved",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--target",
        default=os.environ.get("COURSE_TARGET", "exercises"),
        help="package graded by tests/exercises: 'exercises' (default) or 'solutions'",
    )


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--target")


def load_target(config: pytest.Config, module: str):
    """Import ``<target>.<module>``, e.g. ``exercises.ch00_warmup``."""
    return importlib.import_module(f"{config.getoption('--target')}.{module}")


class _AsyncioReports(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if any(text in record.getMessage() for text in _ASYNCIO_REPORTS):
            self.records.append(record)


_reports = _AsyncioReports()
logging.getLogger("asyncio").addHandler(_reports)


# The longest files first, so that `make test`'s workers (xdist, --dist loadfile
# --no-loadscope-reorder) start on them at once and share the rest as they free up.
# Measured on a quiet 2-core machine: every notebook run in the browser ~220 s, the kept
# wrong answers ~95 s, the integrity check ~20 s; everything else ~200 s in all. Left in
# collection order, the notebooks came last and one worker ran on alone for minutes.
_FIRST = ("tests/notebooks/test_notebooks_run_clean.py", "tests/test_wrong_answers.py",
          "tests/notebooks/test_notebooks_real_redis.py", "tests/test_integrity.py")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return _FIRST.index(path) if path in _FIRST else len(_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the rest, the order stays


def pytest_collection_finish(session: pytest.Session) -> None:
    # Every test ends with a full gc.collect() (below), which walks every object
    # in the process: ~0.1-0.3 s each once Jupyter, matplotlib and hypothesis are
    # imported. Objects alive now (modules, test functions) are moved out of the
    # collector's sight; what the tests themselves create is still collected.
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _asyncio_hygiene(request: pytest.FixtureRequest):
    """Fail a test that left a task destroyed while pending or an exception unretrieved."""
    _reports.records.clear()
    yield
    gc.collect()
    found = [r.getMessage().splitlines()[0] for r in _reports.records]
    _reports.records.clear()
    if found and request.node.get_closest_marker("allow_asyncio_errors") is None:
        pytest.fail("asyncio reported: " + "; ".join(found), pytrace=False)
