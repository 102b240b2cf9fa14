"""Run All Cells in a real JupyterLab page, as a person would, and save what it did.

    python _run_all_in_browser.py --url URL --token T --path notebooks/X.ipynb \
        --chromium /usr/bin/chromium --out result.json

Opens the notebook in headless Chromium (a fresh profile), waits for its kernel,
clicks the menu Run, then Run All Cells, and waits until no code cell is queued or
running and the kernel is idle. Writes ``{"notebook": <the notebook model's JSON,
outputs included>, "seconds": {...}, "dialogs": [...], "stuck": ...}`` and shuts
the kernel down. Judging is the caller's job (tests/notebooks/_judge.py).

Run by tests/notebooks/_runners.py in a subprocess of its own.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
OPEN_TIMEOUT_MS = 180_000
CELL_TIMEOUT_S = 300.0  # one cell running longer than this is a hang
START_TIMEOUT_S = 60.0  # Run All clicked, nothing queued after this: the click missed
POLL_S = 0.25
SETTLED_POLLS = 4  # this many polls in a row with nothing queued, running, or busy

READY = """(path) => {
    const app = window.jupyterapp;
    const panel = app && app.shell.currentWidget;
    if (!panel || !panel.context || panel.context.path !== path) return false;
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    return panel.context.isReady && panel.sessionContext.isReady && panel.content.isVisible
        && !!kernel && kernel.status === 'idle' && panel.content.widgets.length > 0;
}"""
STATE = """() => {
    const panel = window.jupyterapp.shell.currentWidget;
    const cells = panel.content.model.cells;
    const running = [];
    let executed = 0;
    for (let i = 0; i < cells.length; i++) {
        const cell = cells.get(i);
        if (cell.type !== 'code') continue;
        if (cell.executionState === 'running') running.push(i);
        if (cell.executionCount !== null) executed += 1;
    }
    const kernel = panel.sessionContext.session && panel.sessionContext.session.kernel;
    const dialogs = [...document.querySelectorAll('.jp-Dialog')].map(d => d.innerText);
    return {running, executed, kernel: kernel ? kernel.status : 'none', dialogs};
}"""
MODEL = "() => window.jupyterapp.shell.currentWidget.context.model.toJSON()"
SHUTDOWN = "async () => { await window.jupyterapp.shell.currentWidget.sessionContext.shutdown(); }"
INTERRUPT = """async () => {
    const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
    await kernel.interrupt();
}"""


def run_all(page, path: str) -> dict:
    seconds = {}
    started = time.monotonic()
    page.wait_for_function(READY, arg=path, timeout=OPEN_TIMEOUT_MS, polling=250)
    seconds["open"] = time.monotonic() - started

    clicked = time.monotonic()
    page.get_by_role("menuitem", name=re.compile(r"^Run$")).click()
    page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()

    dialogs: list[str] = []
    stuck = None
    seen_work = False
    settled = 0
    current, since = None, time.monotonic()
    while True:
        state = page.evaluate(STATE)
        dialogs += [d for d in state["dialogs"] if d not in dialogs]
        busy = bool(state["running"]) or state["kernel"] != "idle"
        seen_work = seen_work or busy or state["executed"] > 0
        settled = settled + 1 if seen_work and not busy else 0
        if settled >= SETTLED_POLLS:
            break
        if not seen_work and time.monotonic() - clicked > START_TIMEOUT_S:
            stuck = f"Run All Cells started nothing in {START_TIMEOUT_S:.0f} s"
            break
        first = state["running"][0] if state["running"] else None
        if first != current:
            current, since = first, time.monotonic()
        elif first is not None and time.monotonic() - since > CELL_TIMEOUT_S:
            stuck = f"cell {first} still running after {CELL_TIMEOUT_S:.0f} s: interrupted"
            page.evaluate(INTERRUPT)
            time.sleep(5)
            break
        time.sleep(POLL_S)
    seconds["run_all"] = time.monotonic() - clicked
    notebook = page.evaluate(MODEL)
    ended = time.monotonic()
    page.evaluate(SHUTDOWN)
    seconds["shutdown"] = time.monotonic() - ended
    return {"notebook": notebook, "seconds": seconds, "dialogs": dialogs, "stuck": stuck}


def main() -> None:
    parser = argparse.ArgumentParser()
    for option in ("--url", "--token", "--path", "--chromium", "--out"):
        parser.add_argument(option, required=True)
    args = parser.parse_args()
    # A workspace of its own: JupyterLab opens this notebook and nothing else.
    workspace = re.sub(r"\W", "-", Path(args.path).stem)
    address = f"{args.url}/lab/workspaces/{workspace}/tree/{args.path}?reset&token={args.token}"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        launched = time.monotonic()
        try:
            page = context.new_page()
            page.goto(address, timeout=OPEN_TIMEOUT_MS)
            loaded = time.monotonic()
            result = run_all(page, args.path)
        finally:
            context.close()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)  # Playwright's driver and Chromium
    result["seconds"].update(
        launch=launched - started,
        load=loaded - launched,
        total=time.monotonic() - started,
        browser_cpu=used.ru_utime + used.ru_stime,
    )
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
