"""The ``run_all`` fixture: one Run All of a notebook, in a real browser when there is one.

``run_all(path)`` returns ``(executed_notebook, how)``. With Playwright for Python and
a Chromium (Debian's /usr/bin/chromium, or ``$CHROMIUM``), it is JupyterLab's own
Run → Run All Cells in headless Chromium (tests/notebooks/_runners.py). Without them it
falls back to nbclient, run the way Run All runs (stop at the first error that is not
in a ``raises-exception`` cell), and says so at the end of the test run; under
``REQUIRE_BROWSER=1`` (CI) the fallback is a failure instead.

The fixture starts every selected notebook's Run All when the first test asks for
one, and each test waits for its own. ``NOTEBOOK_JOBS=2`` runs two notebooks at once
(each with its own Chromium and kernel): faster on a machine with cores to spare,
but on two busy cores the contention changed timing-dependent checked outputs
(chapter 0's "3x as long" read "4x"), so the default is one at a time.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from _runners import LabServer, browser_missing, kernel_env, run_with_nbclient

REPO = Path(__file__).resolve().parents[2]
RUN_ALL_TEST = "test_run_all_cells_runs_every_cell_cleanly"
_notices: list[str] = []


@pytest.fixture(scope="session")
def run_all(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    missing = browser_missing()
    if missing is None:
        server = LabServer(REPO, tmp_path_factory.mktemp("jupyterlab"), kernel_env())
        request.addfinalizer(server.stop)
        server.start()
        out = tmp_path_factory.mktemp("browser-runs")
        pool = ThreadPoolExecutor(max_workers=max(1, int(os.environ.get("NOTEBOOK_JOBS", "1"))))
        request.addfinalizer(lambda: pool.shutdown(wait=False, cancel_futures=True))
        runs: dict[Path, Future] = {}

        def start(path: Path) -> None:
            if path not in runs:
                runs[path] = pool.submit(server.run_all, path.name, out / f"{path.stem}.json")

        # Every notebook this session will judge, in test order.
        for item in request.session.items:
            if getattr(item, "originalname", None) == RUN_ALL_TEST:
                start(item.callspec.params["path"])

        def in_browser(path: Path):
            start(path)
            notebook, info = runs[path].result()
            return notebook, {"runner": "browser", **info}

        return in_browser
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1 but the browser run is impossible: {missing}")
    _notices.append(
        f"notebooks ran with nbclient, not in a browser: {missing}. Same checks, but "
        "JupyterLab's own Run All was not tried."
    )

    def with_nbclient(path: Path):
        return run_with_nbclient(path, kernel_env()), {"runner": "nbclient"}

    return with_nbclient


def pytest_terminal_summary(terminalreporter) -> None:
    for notice in _notices:
        terminalreporter.write_sep("!", "NOTICE", yellow=True, bold=True)
        terminalreporter.write_line(notice, yellow=True, bold=True)
