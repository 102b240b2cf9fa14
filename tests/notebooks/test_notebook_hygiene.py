"""House rules every notebook keeps, read from the file (nothing is executed).

One test per notebook; each lists every breach with its cell number:
- no test-harness comments in learners' code (``# NBVAL_...``, ``# EXPECT_STDERR``):
  the markers are cell tags;
- no code line over 100 characters (it wraps or scrolls in JupyterLab);
- every markdown link to a notebook points to a file that exists, and a "Next" line
  is such a link (not a chapter named in words);
- the first code cell is synchronous: ipykernel hangs when a fresh kernel's
  first cell is async and raises an ExceptionGroup (DESIGN.md, "Pitfalls");
- every stored error output is in a cell tagged ``raises-exception``, or Run All
  stops there;
- no ``asyncio.run()`` call in code the kernel runs, outside chapter 0 (which shows
  it failing on purpose): the course's way is top-level ``await`` or
  ``course_lib.runtime.run``. Script texts in strings and ``%%`` cells don't count.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
MAX_LINE = 100
MARKER_COMMENT = re.compile(r"#\s*(NBVAL_\w*|EXPECT_STDERR)")
# [text](target.ipynb), <a href="target.ipynb">, and reference links [id]: target.ipynb
NOTEBOOK_LINK = re.compile(
    r"""(?:\]\(\s*<?|href\s*=\s*["']|^\s*\[[^\]]+\]:\s*)([^)"'>\s]+\.ipynb)""", re.MULTILINE
)

NEXT_LINE = re.compile(r"^\W*Next\b.*$", re.MULTILINE)


def _where(index: int, cell) -> str:
    first = next((line for line in cell.source.splitlines() if line.strip()), "")
    return f"cell {index} ({first[:50]!r})"


def _python(source: str) -> str | None:
    """The cell's Python for the kernel: IPython's % and ! lines neutralised; None for %% cells."""
    if source.lstrip().startswith("%%"):
        return None
    lines = []
    for line in source.splitlines():
        stripped = line.lstrip()
        if stripped.startswith(("%", "!")):
            line = line[: len(line) - len(stripped)] + "pass"
        lines.append(line)
    return "\n".join(lines)


def _is_async(code: str) -> bool:
    compiled = compile(code, "<cell>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    return bool(compiled.co_flags & inspect.CO_COROUTINE)


def _asyncio_run_calls(tree: ast.AST) -> list[int]:
    """Line numbers of calls to asyncio.run (also as ``from asyncio import run [as x]``)."""
    names = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "asyncio"
        for alias in node.names
        if alias.name == "run"
    }
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "run"
            and isinstance(func.value, ast.Name)
            and func.value.id == "asyncio"
        ) or (isinstance(func, ast.Name) and func.id in names):
            lines.append(node.lineno)
    return lines


def hygiene_problems(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    found: list[str] = []
    first_code = True
    for index, cell in enumerate(nb.cells):
        where = _where(index, cell)
        if cell.cell_type == "markdown":
            for target in NOTEBOOK_LINK.findall(cell.source):
                if urlparse(target).scheme:
                    continue  # a link to another site
                if not (path.parent / unquote(target)).is_file():
                    found.append(f"{where} links to {target}, which does not exist")
            found += [
                f"{where}: {line.strip()[:60]!r} names the next notebook without a link to it"
                for line in NEXT_LINE.findall(cell.source)
                if not NOTEBOOK_LINK.search(line)
            ]
            continue
        if cell.cell_type != "code":
            continue
        tags = set(cell.metadata.get("tags", ()))
        for number, line in enumerate(cell.source.splitlines(), 1):
            if MARKER_COMMENT.search(line):
                found.append(f"{where} line {number}: harness comment {line.strip()!r}; use a tag")
            if len(line) > MAX_LINE:
                found.append(f"{where} line {number} is {len(line)} characters (max {MAX_LINE})")
        if any(o.output_type == "error" for o in cell.get("outputs", ())) and (
            "raises-exception" not in tags
        ):
            found.append(f"{where} shows an error but is not tagged raises-exception")
        code = _python(cell.source)
        if code is None:
            first_code = False
            continue
        try:
            tree = ast.parse(code)
            is_async = _is_async(code)
        except SyntaxError as error:
            if "raises-exception" not in tags:
                found.append(f"{where} is not valid Python: {error.msg} (line {error.lineno})")
            first_code = False
            continue
        if first_code and is_async:
            found.append(f"{where}: the first code cell must be synchronous (the imports)")
        first_code = False
        if not path.name.startswith("00_"):
            found += [
                f"{where} line {line} calls asyncio.run() in the kernel; use top-level await "
                "or course_lib.runtime.run"
                for line in _asyncio_run_calls(tree)
            ]
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_keeps_the_house_rules(path: Path):
    found = hygiene_problems(path)
    assert not found, f"{path.name}:\n" + "\n".join(found)
