"""Notebooks that use Redis run a second time, on a real redis-server.

The run is nbclient's, with ``REDIS_URL`` pointing at the real redis-server the tests
started, so a chapter that works on fakeredis only cannot pass. Outputs are not
compared: the committed ones come from fakeredis. The judge is the one the browser
run uses (_judge.py). A file of its own, so that pytest-xdist runs it on the other
worker while test_notebooks_run_clean.py drives the browser.
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
    # A notebook that talks to Redis gets its client from course_lib.redis (connect()).
    # The code, not the prose; and not course_lib.distributed alone: chapter 6 computes
    # key slots with it, and never connects.
    code = [c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    return any("course_lib.redis" in src for src in code)


REDIS_NOTEBOOKS = [p for p in NOTEBOOKS if _uses_redis(p)]


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
