"""The course as a static HTML site, from the notebooks' stored outputs (nothing is run).

    python tools/build_site.py [--out site]        # `make site`

Writes ``index.html`` (the chapters: number, title, what you learn, time, from
README's chapter table), ``notebooks/NN_name.html`` for every notebook, with its
outputs and its plots embedded, ``README.html`` and ``docs/WORKSHOP.html``. The site
has the repository's layout, so a link keeps its meaning: ``01_task_lifecycle.ipynb``
becomes ``01_task_lifecycle.html``, ``../README.md`` becomes ``../README.html``, and
any other repository file a page links to (``../course_lib/x.py``) becomes a page of
its own beside it (``../course_lib/x.py.html``, highlighted); an image is embedded
when it sits beside its notebook, copied otherwise. A link to a file that does not
exist, to a folder, or out of the repository stops the build and names the page.

Nothing is fetched, ever: the pages inline their CSS and images, and the template
drops what nbconvert's ``lab`` template loads from CDNs (require.js, MathJax,
mermaid, the widget manager), so the site reads the same offline, from a USB stick.
The notebooks hold no math; without MathJax it would show as TeX source.

A repository tool, not part of ``course_lib``: learners never import it, and it
reads the checkout (README, notebooks/), not the installed package.
"""

from __future__ import annotations

import argparse
import html
import posixpath
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote

import nbformat
from jinja2 import DictLoader
from nbconvert import HTMLExporter

__all__ = ["BuildError", "Chapter", "build", "chapter_table", "main"]

REPO = Path(__file__).resolve().parents[1]
MARKER = ".course-site"  # marks a folder this script wrote, so a rebuild may replace it
NAV = "<!--site-nav-->"  # replaced after the links are rewritten: the nav is in site terms

# nbconvert's lab template, minus every <script src> it would fetch: require.js (only
# widgets need it), MathJax, mermaid, the widget manager. A data: favicon, so that the
# browser does not ask the server for /favicon.ico (a 404 in the console).
TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}<link rel="icon" href="data:,">{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style type="text/css">
nav.site-nav { font-family: var(--jp-ui-font-family); font-size: 14px; padding: 8px 16px;
  display: flex; gap: 1.5em; border-bottom: 1px solid var(--jp-border-color2); }
nav.site-nav.bottom { border-bottom: none; border-top: 1px solid var(--jp-border-color2); }
nav.site-nav a { color: var(--jp-content-link-color); text-decoration: none; }
</style>
{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}
""" + NAV + """
{%- endblock body_header -%}
{%- block body_footer -%}
""" + NAV.replace("nav", "nav-bottom") + """
{{ super() }}
{%- endblock body_footer -%}
"""

_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# Every href/src in the page. Attribute values that nbconvert writes are double-quoted;
# code and text outputs are escaped (&quot;), so this never matches inside them.
_LINK = re.compile(r'\b(href|src)="([^"]*)"')


class BuildError(Exception):
    """The site cannot be built as asked: a broken link, a bad table, a bad --out."""


@dataclass(frozen=True)
class Chapter:
    """One row of README's chapter table."""

    number: str
    notebook: str | None  # repository path, "notebooks/01_task_lifecycle.ipynb"; None: planned
    name: str  # the notebook column's text, "01_task_lifecycle"
    learn: str  # markdown
    time: str
    status: str


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def chapter_table(readme: str) -> list[Chapter]:
    """The rows of the table under README's "## Chapters" heading."""
    section = readme.partition("\n## Chapters\n")[2].partition("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    if len(rows) < 3:
        raise BuildError("README.md: no table under '## Chapters'")
    header = _cells(rows[0])
    wanted = ("#", "notebook", "what you learn", "time", "status")
    if missing := [w for w in wanted if w not in header]:
        raise BuildError(f"README.md: the chapter table has no column {missing}: {header}")
    chapters = []
    for row in rows[2:]:
        cells = _cells(row)
        if len(cells) != len(header):
            raise BuildError(f"README.md: {len(cells)} cells, not {len(header)}, in {row!r}")
        cell = dict(zip(header, cells, strict=True))
        link = re.search(r"\]\(([^)]+\.ipynb)\)", cell["notebook"])
        chapters.append(Chapter(
            number=cell["#"], notebook=link.group(1) if link else None,
            name=cell["notebook"].partition("]")[0].strip("[`") if link
            else cell["notebook"].strip("`"),
            learn=cell["what you learn"], time=cell["time"], status=cell["status"],
        ))
    return chapters


def _site_path(source: str) -> str:
    """Where a repository file's page goes in the site (paths relative to both roots)."""
    path = PurePosixPath(source)
    if path.suffix in (".ipynb", ".md"):
        return str(path.with_suffix(".html"))
    return source + ".html"


def _is_text(path: Path) -> bool:
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _title(nb: nbformat.NotebookNode, fallback: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            if heading := re.search(r"^# (.+)$", cell.source, re.MULTILINE):
                return heading.group(1).strip()
            break
    return nb.metadata.get("title") or fallback


def _markdown_notebook(text: str, title: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell(text)], metadata={"title": title}
    )


def _file_notebook(path: Path, source: str) -> nbformat.NotebookNode:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".md":
        return _markdown_notebook(text, source)
    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    language = {".py": "python", ".toml": "toml", ".yml": "yaml", ".yaml": "yaml",
                ".json": "json", ".cfg": "ini", ".sh": "bash"}.get(path.suffix, "")
    return _markdown_notebook(f"# `{source}`\n\n{fence}{language}\n{text}\n{fence}\n", source)


class _Site:
    def __init__(self, repo: Path, out: Path) -> None:
        self.repo, self.out = repo, out
        self.exporter = HTMLExporter(
            template_name="lab",
            extra_loaders=[DictLoader({"course_site.html.j2": TEMPLATE})],
            template_file="course_site.html.j2",
            embed_images=True,  # markdown ![](x.png) as data: URIs, like the outputs' PNGs
        )
        self.pending: list[str] = []  # repository files linked to, not written yet
        self.written: set[str] = set()

    def link(self, source: str, value: str) -> str:
        """``value``, an href or src in ``source``'s page, as it must read in the site."""
        if not value or value.startswith(("#", "/")) or _SCHEME.match(value):
            return value
        target, hash_, fragment = value.partition("#")
        target = target.partition("?")[0]
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), unquote(target)))
        if resolved == ".." or resolved.startswith("../"):
            raise BuildError(f"{source}: the link {value!r} leaves the repository")
        path = self.repo / resolved
        if not path.exists():
            raise BuildError(
                f"{source}: the link {value!r} points to {resolved}, which does not exist"
            )
        if path.is_dir():
            raise BuildError(f"{source}: the link {value!r} points to a folder; link a file")
        page = _site_path(resolved) if _is_text(path) else resolved
        if resolved not in self.written and resolved not in self.pending:
            self.pending.append(resolved)
        relative = posixpath.relpath(page, posixpath.dirname(_site_path(source)) or ".")
        return quote(relative) + hash_ + fragment

    def write_page(self, source: str, nb: nbformat.NotebookNode, nav: str = "") -> None:
        """Render ``nb`` as the page of repository file ``source`` (which may not exist: index)."""
        folder = str((self.repo / source).parent)  # where ![](pic.png) is found and embedded
        body, _ = self.exporter.from_notebook_node(
            nb, resources={"metadata": {"name": PurePosixPath(source).stem, "path": folder}}
        )
        def rewrite(m: re.Match) -> str:
            value = html.unescape(m[2])
            new = self.link(source, value)
            return m[0] if new == value else f'{m[1]}="{html.escape(new)}"'

        body = _LINK.sub(rewrite, body)
        body = body.replace(NAV, nav).replace(NAV.replace("nav", "nav-bottom"),
                                              nav.replace('class="site-nav"',
                                                          'class="site-nav bottom"'))
        target = self.out / _site_path(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body, encoding="utf-8")
        self.written.add(source)

    def write_linked_files(self) -> None:
        """Every repository file the pages link to, as a page (text) or a copy (binary)."""
        while self.pending:
            source = self.pending.pop(0)
            if source in self.written:
                continue
            path = self.repo / source
            if source.endswith(".ipynb"):
                raise BuildError(f"a page links to {source}, not a chapter under notebooks/")
            if _is_text(path):
                home = posixpath.relpath("index.html", posixpath.dirname(_site_path(source)) or ".")
                self.write_page(source, _file_notebook(path, source),
                                f'<nav class="site-nav"><a href="{home}">Contents</a></nav>')
            else:
                (self.out / source).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, self.out / source)
                self.written.add(source)


def _nav(home: str, prev: tuple[str, str] | None, nxt: tuple[str, str] | None) -> str:
    links = [f'<a href="{home}">Contents</a>']
    if prev:
        links.append(f'<a href="{prev[0]}">← {html.escape(prev[1])}</a>')
    if nxt:
        links.append(f'<a href="{nxt[0]}">{html.escape(nxt[1])} →</a>')
    return f'<nav class="site-nav">{"".join(links)}</nav>'


def _index_markdown(readme: str, chapters: list[Chapter], titles: dict[str, str],
                    teaching: bool) -> str:
    tagline = next((line for line in readme.splitlines() if line.startswith("**")), "")
    after_table = readme.partition("\n## Chapters\n")[2].partition("\n## ")[0]
    after_table = "\n".join(line for line in after_table.splitlines()
                            if not line.startswith("|")).strip()
    rows = ["| # | chapter | what you learn | time |", "|---|---|---|---|"]
    listed = set()
    for chapter in chapters:
        if chapter.notebook in titles:
            listed.add(chapter.notebook)
            title = f"[{titles[chapter.notebook]}]({chapter.notebook})"
        else:
            title = f"`{chapter.name}` ({chapter.status})"
        rows.append(f"| {chapter.number} | {title} | {chapter.learn} | {chapter.time} |")
    for notebook, title in titles.items():  # a notebook README's table does not list yet
        if notebook not in listed:
            rows.append(f"| | [{title}]({notebook}) | | |")
    return "\n\n".join([
        "# asyncio-course", tagline, "\n".join(rows), after_table,
        "How exercises work, a real Redis, troubleshooting: [the README](README.md). "
        "These pages show each chapter as it last ran, outputs included; to run it, "
        "`make lab`.",
        "Teaching it: [a one-day and a two-day workshop plan](docs/WORKSHOP.md)." if teaching
        else "",
    ]).strip()


def build(out: Path, repo: Path = REPO) -> list[Path]:
    """Write the site into ``out`` (replaced if it holds a site already); its pages."""
    out = out.resolve()
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise BuildError(f"{out} is not empty and holds no site built here: not overwriting it")
    readme = (repo / "README.md").read_text(encoding="utf-8")
    chapters = chapter_table(readme)
    notebooks = sorted(p.relative_to(repo).as_posix() for p in (repo / "notebooks").glob("*.ipynb"))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        site = _Site(repo, staging)
        books = {nb: nbformat.read(repo / nb, as_version=4) for nb in notebooks}
        titles = {nb: _title(book, PurePosixPath(nb).stem) for nb, book in books.items()}
        site.write_page("index", _markdown_notebook(
            _index_markdown(readme, chapters, titles, (repo / "docs" / "WORKSHOP.md").is_file()),
            "asyncio-course"))
        for i, nb in enumerate(notebooks):
            def near(j: int) -> tuple[str, str] | None:
                if 0 <= j < len(notebooks):
                    return PurePosixPath(_site_path(notebooks[j])).name, titles[notebooks[j]]
                return None
            site.write_page(nb, books[nb], _nav("../index.html", near(i - 1), near(i + 1)))
        site.pending.append("README.md")
        site.write_linked_files()
        (staging / MARKER).write_text("built by tools/build_site.py; `make site` replaces it\n")
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(p for p in out.rglob("*.html"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "site",
                        help="the folder to write (default: site/ in the repository)")
    args = parser.parse_args(argv)
    try:
        pages = build(args.out)
    except BuildError as exc:
        print(f"build_site: {exc}", file=sys.stderr)
        return 1
    print(f"{len(pages)} pages in {args.out}; open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
