"""Judge one execution of a notebook against the committed file: every notebook check.

``problems(committed, executed)`` lists what is wrong, cell by cell, in words a
chapter author can act on. ``executed`` is the same notebook after one Run All
(in JupyterLab, or by nbclient when no browser is available). The checks:

- every code cell executed (has an execution count): Run All ran all;
- an error output in, and only in, cells tagged ``raises-exception``;
- no traceback, ExceptionGroup or asyncio "never retrieved" / "destroyed but
  pending" / "never awaited" report on stderr, except in ``expect-stderr`` cells
  (IPython prints a failing TaskGroup to stderr: it raises no error output);
- cells tagged ``nbval-check-output``: outputs equal to the committed ones, after
  the sanitizers of tests/nbval_sanitize.cfg, compared exactly as
  ``pytest --nbval-lax`` compares them (streams merged per name, each MIME type
  of ``data`` compared, images, metadata and tracebacks skipped).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from nbformat import NotebookNode
from nbval.plugin import coalesce_streams, get_sanitize_patterns

SANITIZE_FILE = Path(__file__).resolve().parents[1] / "nbval_sanitize.cfg"
BAD_STDERR = (
    "Traceback (most recent call last)",
    "ExceptionGroup",
    "was never retrieved",
    "Task was destroyed but it is pending",
    "was never awaited",
)
# What nbval leaves out of the comparison (nbval.plugin.IPyNbFile.skip_compare, no --nbdime).
SKIP_COMPARE = frozenset({
    "metadata", "traceback", "prompt_number", "output_type", "name", "execution_count",
    "application/vnd.jupyter.widget-view+json", "image/png", "image/jpeg",
})
_PATTERNS = get_sanitize_patterns(SANITIZE_FILE.read_text(encoding="utf-8"))


def sanitize(value):
    if not isinstance(value, str):
        return value
    for regex, replace in _PATTERNS:
        value = re.sub(regex, replace, value)
    return value


def _comparable(outputs: list) -> dict[str, list]:
    """nbval's view of a cell's outputs: {stream name or MIME type or key: [values]}."""
    flat: dict[str, list] = defaultdict(list)
    for output in coalesce_streams([NotebookNode(o) for o in outputs]):
        if output.output_type == "stream":
            flat[output.name].append(sanitize(output.text))
            continue
        for key, value in output.items():
            if key in SKIP_COMPARE:
                continue
            if key == "data":
                for mime, data in value.items():
                    if mime not in SKIP_COMPARE:
                        flat[mime].append(sanitize(data))
            else:
                flat[key].append(sanitize(value))
    return dict(flat)


def output_difference(committed: list, executed: list) -> str | None:
    """None when nbval would find the outputs equal, else what differs."""
    want, got = _comparable(committed), _comparable(executed)
    if set(want) != set(got):
        return f"output kinds {sorted(got)} instead of the committed {sorted(want)}"
    for key, values in want.items():
        if values != got[key]:
            return f"{key} differs:\n--- committed\n{_show(values)}\n--- now\n{_show(got[key])}"
    return None


def _show(values: list) -> str:
    return "\n".join(str(v)[:1500] for v in values)


def _where(index: int, cell) -> str:
    first = next((line for line in cell.source.splitlines() if line.strip()), "")
    return f"cell {index} ({first[:60]!r})"


def problems(committed: NotebookNode, executed: NotebookNode, *, compare: bool = True) -> list[str]:
    """Everything wrong with ``executed``; ``compare=False`` skips the output comparison."""
    if len(committed.cells) != len(executed.cells):
        return [f"{len(executed.cells)} cells came back, the file has {len(committed.cells)}"]
    found: list[str] = []
    not_run: list[int] = []
    for index, (ref, cell) in enumerate(zip(committed.cells, executed.cells, strict=True)):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            not_run.append(index)
            continue
        tags = set(ref.metadata.get("tags", ()))
        where = _where(index, ref)
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if "raises-exception" in tags and not errors:
            found.append(f"{where} is tagged raises-exception but did not raise")
        if errors and "raises-exception" not in tags:
            found.append(
                f"{where} raised {errors[0].ename}: {errors[0].evalue}"
                " (a deliberate error needs the raises-exception tag)"
            )
        stderr = "".join(
            o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stderr"
        )
        if "expect-stderr" not in tags:
            found += [f"{where} printed {bad!r} to stderr" for bad in BAD_STDERR if bad in stderr]
        if compare and "nbval-check-output" in tags and ref.get("execution_count") is not None:
            difference = output_difference(ref.outputs, cell.outputs)
            if difference:
                found.append(f"{where} (nbval-check-output): {difference}")
    if not_run:
        listed = ", ".join(map(str, not_run[:10])) + (" ..." if len(not_run) > 10 else "")
        found.insert(0, f"{len(not_run)} code cell(s) never executed (Run All stopped?): {listed}")
    return found
