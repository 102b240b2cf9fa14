"""Grading tests: each file names its module (``MODULE = "ch00_warmup"``) and
marks each test with the exercise it grades; the first line of a test's
docstring is what the learner sees in the ``check()`` table."""

from __future__ import annotations

import importlib

import pytest


@pytest.fixture
def ex(request: pytest.FixtureRequest):
    """The graded module: ``<--target>.<MODULE>``."""
    target = request.config.getoption("--target")
    return importlib.import_module(f"{target}.{request.module.MODULE}")
