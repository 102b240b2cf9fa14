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

Notebooks that use Redis run a second time, with nbclient, with ``REDIS_URL``
pointing at the real redis-server the tests started, so a chapter that works on
fakeredis only cannot pass. Outputs are not compared there: the committed ones
come from fakeredis.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import redis as redis_sync
from _judge import problems
from _runners import kernel_env, run_with_nbclient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def _uses_redis(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    return "course_lib.redis" in text or "course_lib.distributed" in text


REDIS_NOTEBOOKS = [p for p in NOTEBOOKS if _uses_redis(p)]


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


@pytest.mark.real_redis
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("path", REDIS_NOTEBOOKS, ids=[p.stem for p in REDIS_NOTEBOOKS])
def test_redis_notebook_runs_on_a_real_server(path: Path, redis_server):
    with redis_sync.Redis.from_url(redis_server.url) as client:
        client.flushall()
    # The kernel gets this environment, so the notebook's connect() calls (and any
    # worker processes it starts) use the real server.
    executed = run_with_nbclient(path, {**kernel_env(), "REDIS_URL": redis_server.url})
    found = problems(nbformat.read(path, as_version=4), executed, compare=False)
    assert not found, f"{path.name} on a real redis-server:\n" + "\n".join(found)
