"""Each notebook runs once, as a learner runs it, and that one run is judged by every check.

The run is JupyterLab's own Run → Run All Cells, clicked in headless Chromium
(conftest.py, _runners.py): what a learner sees. Chapter 0 once stopped at its
deliberate ``asyncio.run()`` error and left 15 cells unrun, though nbval and
nbclient both passed it; only Run All in JupyterLab shows that. Without Chromium
or Playwright the same run is made with nbclient, the same way (stop at the first
error outside a ``raises-exception`` cell), with a notice at the end of the run;
``REQUIRE_BROWSER=1`` (CI) makes that a failure.

The judge (_judge.py) applies, to that single execution, every check the two
former passes did (nbval, then a second execution with nbclient):
- every code cell executed;
- errors only in, and always in, cells tagged ``raises-exception`` (nbval allows
  an error there without requiring one);
- no traceback, ExceptionGroup or asyncio "never retrieved" / "destroyed but
  pending" / "never awaited" report on stderr outside ``expect-stderr`` cells (a
  failing TaskGroup is printed to stderr, not raised: nbval passes it);
- ``nbval-check-output`` cells: outputs equal to the committed ones after the
  sanitizers of tests/nbval_sanitize.cfg, compared as nbval compares them.

Why nbval is no longer run by ``make test``: it executed every notebook a second
time to check a subset of what the judge checks, and the notebooks were the
slowest part of the suite. The tags stay nbval's, so ``make nbval`` (``pytest
--nbval-lax notebooks``) still works for whoever wants it.

Notebooks that use Redis run a second time on a real redis-server:
test_notebooks_real_redis.py (a file of its own, so that the second pytest worker
runs it while this one drives the browser).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from _judge import problems

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


@pytest.mark.timeout(1800)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_run_all_cells_runs_every_cell_cleanly(path: Path, run_all):
    committed = nbformat.read(path, as_version=4)
    executed, how = run_all(path)
    found = problems(committed, executed)
    if how.get("stuck"):
        found.insert(0, how["stuck"])
    found += [f"a dialog opened: {text!r}" for text in how.get("dialogs", ())]
    assert not found, f"Run All of {path.name} ({how['runner']}):\n" + "\n".join(found)

