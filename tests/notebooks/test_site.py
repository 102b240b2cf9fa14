"""The course as a static site (tools/build_site.py, `make site`).

Built once per module from the notebooks' stored outputs (nothing runs), then read as
HTML, and opened page by page in headless Chromium (_check_site_in_browser.py): every
page loads without a console error, every image shows, every link inside the site
lands on a page and an anchor that exist, nothing is fetched from the network.
Without Chromium or Playwright the browser test is skipped and says why; under
``REQUIRE_BROWSER=1`` (CI) that is a failure, as for the notebooks.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from _runners import browser_missing, find_chromium

REPO = Path(__file__).resolve().parents[2]
CHECKER = Path(__file__).resolve().parent / "_check_site_in_browser.py"
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
BROWSER_TIMEOUT_S = 180  # a hang guard for the whole browser run, not a speed check

_spec = importlib.util.spec_from_file_location("build_site", REPO / "tools" / "build_site.py")
build_site = sys.modules["build_site"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build_site)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "site"
    assert build_site.main(["--out", str(out)]) == 0
    return out


class _Resources(HTMLParser):
    """Every http(s) URL a page would fetch by itself (not the links a reader may click)."""

    URL_IN_CSS = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])(https?://[^'")\s]+)""", re.I)

    def __init__(self) -> None:
        super().__init__()
        self.fetched: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs) -> None:
        self._in = tag if tag in ("style", "script") else None
        for name, value in attrs:
            value = (value or "").strip()
            if name == "style":
                self.fetched += self.URL_IN_CSS.findall(value)
            elif name in ("src", "srcset", "data", "poster", "background") or (
                name == "href" and tag not in ("a", "area")
            ):
                self.fetched += re.findall(r"https?://\S+", value, re.I)

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "style":
            self.fetched += self.URL_IN_CSS.findall(data)
        elif self._in == "script":
            self.fetched += re.findall(r"https?://[^'\"\s)]+", data)


def network_resources(page_html: str) -> list[str]:
    parser = _Resources()
    parser.feed(page_html)
    return parser.fetched


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_every_notebook_has_a_page_and_the_index_lists_it_with_its_time(site: Path):
    index = _read(site / "index.html")
    chapters = {c.notebook: c for c in build_site.chapter_table(_read(REPO / "README.md"))}
    for notebook in NOTEBOOKS:
        page = site / "notebooks" / f"{notebook.stem}.html"
        assert page.is_file(), f"no page for {notebook.name}"
        assert f'href="notebooks/{notebook.stem}.html"' in index
        title = re.search(r"^# (.+)$", nbformat.read(notebook, 4).cells[0].source, re.M)[1]
        assert title in index  # "Chapter 1 · The task lifecycle"
        row = chapters[f"notebooks/{notebook.name}"]
        assert f"<td>{row.time}</td>" in index, f"{notebook.name}: {row.time!r} not in the index"
    assert 'href="README.html"' in index and (site / "README.html").is_file()
    assert 'href="docs/WORKSHOP.html"' in index
    # The plans' links to the chapters lead to their pages.
    assert 'href="../notebooks/01_task_lifecycle.html"' in _read(site / "docs" / "WORKSHOP.html")


def test_links_between_chapters_lead_to_the_chapters_pages(site: Path):
    for notebook in NOTEBOOKS:
        page = _read(site / "notebooks" / f"{notebook.stem}.html")
        for cell in nbformat.read(notebook, 4).cells:
            if cell.cell_type != "markdown":
                continue
            for target in re.findall(r"\]\((\d\d_\w+)\.ipynb\)", cell.source):
                assert f'href="{target}.html"' in page, f"{notebook.name}: link to {target}"
    for page in site.rglob("*.html"):
        assert not re.search(r'href="[^"]*\.ipynb', _read(page)), f"{page}: a link to a .ipynb"


def test_a_link_to_a_repository_file_leads_to_a_page_of_it(site: Path):
    # Each chapter's link to a file of the repository (../README.md, ../course_lib/x.py)
    # leads to a page of it at the same place; the README is a page whatever links it.
    for notebook in NOTEBOOKS:
        page = _read(site / "notebooks" / f"{notebook.stem}.html")
        for cell in nbformat.read(notebook, 4).cells:
            if cell.cell_type == "markdown":
                for target in re.findall(r"\]\((\.\./[^)#\s]+)", cell.source):
                    shown = target[:-3] + ".html" if target.endswith(".md") else target + ".html"
                    assert f'href="{shown}' in page, f"{notebook.name}: link to {target}"
                    assert (site / "notebooks" / shown).resolve().is_file(), shown
    readme = _read(site / "README.html")
    assert 'href="notebooks/00_start_here.html"' in readme  # README's own links, rewritten


def test_every_plot_is_embedded_in_its_page(site: Path):
    for notebook in NOTEBOOKS:
        plots = sum(
            "image/png" in output.get("data", {})
            for cell in nbformat.read(notebook, 4).cells
            for output in cell.get("outputs", [])
        )
        page = _read(site / "notebooks" / f"{notebook.stem}.html")
        embedded = re.findall(r'<img [^>]*src="data:image/png;base64,', page)
        assert len(embedded) == plots, notebook.name


def test_no_page_fetches_anything_from_the_network(site: Path):
    fetched = {
        str(page.relative_to(site)): found
        for page in site.rglob("*.html")
        if (found := network_resources(_read(page)))
    }
    assert not fetched
    # Outbound links in the prose stay, as links.
    assert 'href="https://docs.python.org/' in _read(site / "notebooks" / "01_task_lifecycle.html")


def test_nbconvert_stock_lab_template_would_fetch_from_cdns():
    # What the site's template is for: the stock one loads require.js and MathJax from
    # cdnjs, and the check above sees it.
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(NOTEBOOKS[0], 4))
    fetched = network_resources(body)
    assert any("require" in url for url in fetched) and any("mathjax" in url for url in fetched)


# A 1x1 PNG.
PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def _tiny_repo(root: Path, link: str) -> Path:
    (root / "notebooks").mkdir(parents=True)
    (root / "course_lib").mkdir()
    (root / "docs").mkdir()
    (root / "notebooks" / "near.png").write_bytes(PIXEL)
    (root / "docs" / "far.png").write_bytes(PIXEL)
    (root / "course_lib" / "x.py").write_text('"""A module."""\nX = 1\n')
    (root / "README.md").write_text(
        "# tiny\n\n**A tiny course.**\n\n## Chapters\n\n"
        "| # | notebook | what you learn | time | status |\n|---|---|---|---|---|\n"
        "| 0 | [`00_a`](notebooks/00_a.ipynb) | `a` things | 5 min | ready |\n"
        "| 1 | [`01_b`](notebooks/01_b.ipynb) | b things | 7 min | ready |\n\n"
        "Times are for the core path.\n\n## Layout\n\nnothing\n"
    )
    new = nbformat.v4
    nbformat.write(new.new_notebook(cells=[
        new.new_markdown_cell(f"# Chapter 0 · A\n\nSee {link}."),
        new.new_code_cell("1", outputs=[new.new_output("execute_result", {"text/plain": "1"},
                                                       execution_count=1)]),
    ]), root / "notebooks" / "00_a.ipynb")
    second = new.new_notebook(cells=[new.new_markdown_cell("# Chapter 1 · B\n\n## Part two")])
    nbformat.write(second, root / "notebooks" / "01_b.ipynb")
    return root


def test_links_to_other_chapters_anchors_and_repository_files_are_rewritten(tmp_path: Path):
    repo = _tiny_repo(tmp_path / "repo", "[x](../course_lib/x.py), [b](01_b.ipynb#Part-two), "
                      "![near](near.png), ![far](../docs/far.png)")
    pages = build_site.build(tmp_path / "site", repo)
    site = tmp_path / "site"
    # An image beside the notebook is embedded; one elsewhere in the repository is copied.
    assert 'src="data:image/png;base64,iVBOR' in _read(site / "notebooks" / "00_a.html")
    assert 'src="../docs/far.png"' in _read(site / "notebooks" / "00_a.html")
    assert (site / "docs" / "far.png").read_bytes() == PIXEL
    assert [p.relative_to(site).as_posix() for p in pages] == [
        "README.html", "course_lib/x.py.html", "index.html",
        "notebooks/00_a.html", "notebooks/01_b.html",
    ]
    page = _read(site / "notebooks" / "00_a.html")
    assert 'href="../course_lib/x.py.html"' in page and 'href="01_b.html#Part-two"' in page
    assert "X</span> <span" in _read(site / "course_lib" / "x.py.html")  # highlighted code
    assert 'id="Part-two"' in _read(site / "notebooks" / "01_b.html")


@pytest.mark.parametrize(("link", "says"), [
    ("[gone](../course_lib/gone.py)", "course_lib/gone.py, which does not exist"),
    ("[out](../../elsewhere.txt)", "leaves the repository"),
    ("[folder](../course_lib)", "points to a folder"),
])
def test_a_broken_link_stops_the_build_and_names_the_page(tmp_path: Path, link: str, says: str):
    repo = _tiny_repo(tmp_path / "repo", link)
    with pytest.raises(build_site.BuildError, match=re.escape(says)) as raised:
        build_site.build(tmp_path / "site", repo)
    assert "notebooks/00_a.ipynb" in str(raised.value)
    assert not (tmp_path / "site").exists()  # nothing half-built left behind


def test_a_rebuild_replaces_the_site_but_never_a_folder_it_did_not_write(tmp_path: Path):
    repo = _tiny_repo(tmp_path / "repo", "[b](01_b.ipynb)")
    site = tmp_path / "site"
    build_site.build(site, repo)
    (site / "stale.html").write_text("from an older build")
    build_site.build(site, repo)
    assert not (site / "stale.html").exists() and (site / "index.html").is_file()

    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "mine.txt").write_text("keep me")
    with pytest.raises(build_site.BuildError, match="not overwriting"):
        build_site.build(precious, repo)
    assert (precious / "mine.txt").read_text() == "keep me"


def _check_in_browser(site: Path, tmp_path: Path) -> dict:
    if (missing := browser_missing()) is not None:
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but the browser check is impossible: {missing}")
        pytest.skip(f"the site is not checked in a browser: {missing}")
    out = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, str(CHECKER), str(site), "--chromium", find_chromium(), "--out", str(out)],
        capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_page_loads_in_chromium_with_its_images_and_links_intact(site: Path, tmp_path: Path):
    report = _check_in_browser(site, tmp_path)
    assert report["problems"] == []
    # The chapters, the index, the README, the workshop plans.
    assert len(report["pages"]) == len(NOTEBOOKS) + 3


def test_the_browser_check_reports_every_kind_of_breakage(tmp_path: Path):
    site = tmp_path / "broken"
    site.mkdir()
    (site / "index.html").write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,">'
        '<script src="https://cdn.example.invalid/lib.js"></script></head><body>'
        '<h1 id="top">x</h1><a href="#top">ok</a><a href="missing.html">gone</a>'
        '<a href="#nowhere">no anchor</a><img src="nothing.png">'
        '<a href="https://docs.python.org/3/">outbound, fine</a></body></html>'
    )
    (site / "orphan.html").write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,">'
                                      "</head><body>alone</body></html>")
    problems = "\n".join(_check_in_browser(site, tmp_path)["problems"])
    for expected in (
        "index.html: fetches https://cdn.example.invalid/lib.js",
        "index.html: broken link missing.html",
        "index.html: broken anchor index.html#nowhere",
        "index.html: image not loaded: nothing.png",
        "index.html: HTTP 404",
        "orphan.html: no link from index.html leads here",
    ):
        assert expected in problems
    assert "docs.python.org" not in problems and "#top" not in problems


def test_without_chromium_the_browser_check_skips_and_says_why_unless_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-such-chromium"))
    monkeypatch.delenv("REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-chromium is not an executable"):
        _check_in_browser(tmp_path, tmp_path)
    monkeypatch.setenv("REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="REQUIRE_BROWSER=1"):
        _check_in_browser(tmp_path, tmp_path)
