"""Open every page of a built site in headless Chromium and say what is wrong with it.

    python _check_site_in_browser.py SITE_DIR --chromium /usr/bin/chromium --out report.json

Serves SITE_DIR on a free loopback port (http.server, in a thread of this process) and
opens each of its .html pages. A problem is: a console error or an uncaught page error;
a request that failed or got an error status; a request for anything not on this
server (it is aborted: the site must work offline); an <img> that did not load
(naturalWidth 0); a link to a local page that does not exist or to an anchor that page
does not have; a page that no link from index.html leads to. Writes
``{"pages": [...], "problems": [...]}``; judging is the caller's job
(tests/notebooks/test_site.py).

Run in a subprocess of its own, as _run_all_in_browser.py is.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlsplit

from _run_all_in_browser import CHROMIUM_ARGS
from playwright.sync_api import sync_playwright

LOAD_TIMEOUT_MS = 60_000

PAGE_FACTS = """() => ({
    images: [...document.images].map(i => ({
        src: i.getAttribute('src').slice(0, 60), ok: i.complete && i.naturalWidth > 0})),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id)
        .concat([...document.querySelectorAll('a[name]')].map(a => a.name)),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
})"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:
        pass


def check(site: Path, chromium: str) -> dict:
    site = site.resolve()
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(site)))
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html"))
    problems: list[str] = []
    ids: dict[str, set[str]] = {}
    links: dict[str, list[str]] = {}
    current = [""]

    def outside(route) -> None:
        if route.request.url.startswith(base):
            route.continue_()
        else:
            problems.append(f"{current[0]}: fetches {route.request.url[:100]} (not offline)")
            route.abort()

    try:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, \
                sync_playwright() as p:
            context = p.chromium.launch_persistent_context(
                profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            )
            try:
                context.route("**/*", outside)
                page = context.new_page()
                page.on("console", lambda m: m.type == "error" and problems.append(
                    f"{current[0]}: console error: {m.text[:200]}"))
                page.on("pageerror", lambda e: problems.append(f"{current[0]}: page error: {e}"))
                page.on("requestfailed", lambda r: r.url.startswith(base) and problems.append(
                    f"{current[0]}: request failed: {r.url} ({r.failure})"))
                page.on("response", lambda r: r.status >= 400 and problems.append(
                    f"{current[0]}: HTTP {r.status} for {r.url}"))
                for name in pages:
                    current[0] = name
                    page.goto(base + name, wait_until="load", timeout=LOAD_TIMEOUT_MS)
                    facts = page.evaluate(PAGE_FACTS)
                    problems += [f"{name}: image not loaded: {i['src']}"
                                 for i in facts["images"] if not i["ok"]]
                    ids[name] = set(facts["ids"])
                    links[name] = facts["links"]
            finally:
                context.close()
    finally:
        server.shutdown()
        server.server_close()
        serving.join(timeout=10)

    reached, todo = set(), ["index.html"]
    for name in pages:
        for href in links[name]:
            if not href.startswith(base):
                continue  # an outbound link in the prose: never followed
            url, fragment = urldefrag(href)
            path = unquote(urlsplit(url).path).removeprefix("/") or "index.html"
            if path.endswith("/"):
                path += "index.html"
            if not (site / path).is_file():
                problems.append(f"{name}: broken link {href[len(base):]} (no {path})")
            # As the browser looks: the fragment as written, then percent-decoded
            # (nbconvert writes ids percent-encoded: "Chapter-1-%C2%B7-The-task-lifecycle").
            elif fragment and path in ids and not {fragment, unquote(fragment)} & ids[path]:
                problems.append(f"{name}: broken anchor {href[len(base):]}")
    while todo:
        name = todo.pop()
        if name in reached or name not in links:
            continue
        reached.add(name)
        for href in links[name]:
            if href.startswith(base):
                todo.append(unquote(urlsplit(urldefrag(href)[0]).path).removeprefix("/"))
    problems += [f"{name}: no link from index.html leads here" for name in pages
                 if name not in reached]
    return {"pages": pages, "problems": problems}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("site", type=Path)
    parser.add_argument("--chromium", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.write_text(json.dumps(check(args.site, args.chromium)))


if __name__ == "__main__":
    main()
