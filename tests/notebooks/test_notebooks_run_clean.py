"""Execute every notebook with nbclient and read its outputs, cell by cell.

nbval alone is not enough (see DESIGN.md, "Pitfalls"): a failing TaskGroup in
a cell is printed to stderr, not raised, so nbval passes it; and
the ``raises-exception`` tag allows an error without requiring one. Here:
- a cell tagged ``raises-exception`` must really raise;
- no other cell may raise, or print a traceback, an ExceptionGroup, or one of
  asyncio's "never retrieved" / "destroyed but pending" / "never awaited"
  reports to stderr, unless it is tagged ``expect-stderr`` (a deliberate
  demonstration, explained in the prose next to it).

The markers are cell tags, never comments in the learner's code.

Notebooks that use Redis run twice: on the in-process fakeredis (their default) and
with ``REDIS_URL`` pointing at the real redis-server the tests started, so a chapter
that works on fakeredis only cannot pass.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import redis as redis_sync
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
BAD_STDERR = (
    "Traceback (most recent call last)",
    "ExceptionGroup",
    "was never retrieved",
    "Task was destroyed but it is pending",
    "was never awaited",
)


def _problems(cell, index: int) -> list[str]:
    source = cell.source
    tags = set(cell.metadata.get("tags", ()))
    raises = "raises-exception" in tags
    errors = [o for o in cell.outputs if o.output_type == "error"]
    stderr = "".join(
        o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"
    )
    where = f"cell {index} ({source.strip().splitlines()[0][:60] if source.strip() else ''!r})"
    found = []
    if raises and not errors:
        found.append(f"{where} is tagged raises-exception but did not raise")
    if errors and not raises:
        found.append(f"{where} raised {errors[0].ename}: {errors[0].evalue}")
    if "expect-stderr" not in tags:
        found += [f"{where} printed {text!r} to stderr" for text in BAD_STDERR if text in stderr]
    return found


def _uses_redis(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    return "course_lib.redis" in text or "course_lib.distributed" in text


REDIS_NOTEBOOKS = [p for p in NOTEBOOKS if _uses_redis(p)]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom_without_hidden_errors(path: Path, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    _run_and_judge(path)


@pytest.mark.real_redis
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", REDIS_NOTEBOOKS, ids=[p.stem for p in REDIS_NOTEBOOKS])
def test_redis_notebook_runs_on_a_real_server(path: Path, redis_server, monkeypatch):
    # The kernel inherits this process's environment, so the notebook's connect()
    # calls (and any worker processes it starts) use the real server.
    with redis_sync.Redis.from_url(redis_server.url) as client:
        client.flushall()
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    _run_and_judge(path)


def _run_and_judge(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        allow_errors=True,  # collected and judged below, cell by cell
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    code_cells = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    problems = [p for i, cell in code_cells for p in _problems(cell, i)]
    assert not problems, "\n".join(problems)
