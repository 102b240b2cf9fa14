"""The two ways to run a notebook once, as Run All does: in JupyterLab in Chromium, or nbclient.

``run_with_nbclient(path, env)``: nbclient, stopping where Run All stops (the first
error outside a ``raises-exception`` cell); the cells after it stay unrun.

A JupyterLab server of the tests' own, and a headless Chromium that clicks Run All in it:

``LabServer(repo, tmp)`` serves a temporary copy of ``notebooks/`` (the repository's
other folders are symlinked next to it, so ``../benchmarks`` and the exercises
resolve, and nothing in the checkout is overwritten) on a free loopback port, with
a token, autosave off, its own settings, workspaces, config and runtime folders, and
``expose_app_in_browser`` so the page's ``window.jupyterapp`` can be read.

``LabServer.run_all(name, out)`` runs _run_all_in_browser.py in a
subprocess (Playwright's sync API and its event loop stay out of the pytest process,
its asyncio checks and its warning filters) and returns the executed notebook.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "_run_all_in_browser.py"
START_TIMEOUT_S = 120.0
CELL_TIMEOUT_S = 300  # nbclient's bound on one cell; the browser run has its own
# Not linked into the served folder: the checkout's environments, caches and history.
NOT_LINKED = {"notebooks", ".git", ".pytest_cache", ".ruff_cache", ".hypothesis"}
SETTINGS = {
    # A Run All must not write the notebook (it is a copy anyway).
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    # Each cell's start and end in its metadata ("execution"): where a slow run spends its time.
    "@jupyterlab/notebook-extension/tracker": {"recordTiming": True},
    # No "get Jupyter news?" or update toast over the page.
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def kernel_env() -> dict[str, str]:
    """This process's environment for a kernel, minus REDIS_URL and pytest's own."""
    return {
        k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "PYTEST_CURRENT_TEST"}
    }


def run_with_nbclient(path: Path, env: dict[str, str]) -> nbformat.NotebookNode:
    """Execute ``path`` top to bottom as Run All does; cells after a stop stay unrun.

    The kernel gets ``env`` as its whole environment.
    """
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.execution_count, cell.outputs = None, []
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        allow_errors=False,  # like Run All: only raises-exception cells may raise and go on
        resources={"metadata": {"path": str(path.parent)}},
    )
    try:
        client.execute(env=env)
    except CellExecutionError:
        pass  # the judge reports the error and every cell left unrun
    return nb


def find_chromium() -> str | None:
    """``$CHROMIUM``, else Debian's /usr/bin/chromium, else a chromium or chrome on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"] if os.access(os.environ["CHROMIUM"], os.X_OK) else None
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if found := shutil.which(name):
            return found
    return None


def browser_missing() -> str | None:
    """Why the browser run is impossible here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if os.environ.get("CHROMIUM") and find_chromium() is None:
        return f"CHROMIUM={os.environ['CHROMIUM']} is not an executable"
    if find_chromium() is None:
        return "no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/chrome)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabServer:
    def __init__(self, repo: Path, tmp: Path, env: dict[str, str]) -> None:
        self.repo, self.tmp = repo, tmp
        self.root = tmp / "root"
        self.port = _free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        # Browser runs start from a pool thread while this xdist worker goes on with other
        # tests, some of which monkeypatch.setenv: putenv may move the C environ under a
        # fork+exec that reads it (EFAULT, "Bad address", seen once in CI). So every
        # Popen here gets its own copy, taken now, on the main thread.
        self.runner_env = os.environ.copy()
        self.log = tmp / "jupyterlab.log"
        self.process: subprocess.Popen | None = None
        self.runs: set[subprocess.Popen] = set()  # browser runs under way

    def start(self) -> LabServer:
        self.root.mkdir()
        shutil.copytree(self.repo / "notebooks", self.root / "notebooks")
        for entry in self.repo.iterdir():
            if entry.name not in NOT_LINKED and not entry.name.startswith(".venv"):
                (self.root / entry.name).symlink_to(entry)
        settings = self.tmp / "settings"
        for plugin, values in SETTINGS.items():
            file = settings / f"{plugin}.jupyterlab-settings"
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(json.dumps(values))
        env = {
            **self.env,
            "JUPYTER_CONFIG_DIR": str(self.tmp / "config"),
            "JUPYTER_RUNTIME_DIR": str(self.tmp / "runtime"),
        }
        args = [
            sys.executable, "-m", "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={self.tmp / 'workspaces'}",
            "--LabApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]
        if os.geteuid() == 0:
            args.append("--allow-root")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                args, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"JupyterLab exited at start:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(
                    f"{self.url}/api/status?token={self.token}", timeout=5
                ) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer in {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def stop(self) -> None:
        for run in list(self.runs):
            run.kill()
        if self.process and self.process.poll() is None:
            self.process.terminate()  # Jupyter shuts its kernels down on SIGTERM
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def run_all(self, name: str, out: Path) -> tuple[nbformat.NotebookNode, dict]:
        """Open notebooks/``name`` in Chromium, click Run → Run All Cells, wait until done."""
        args = [
            sys.executable, str(SCRIPT),
            "--url", self.url, "--token", self.token, "--path", f"notebooks/{name}",
            "--chromium", find_chromium() or "", "--out", str(out),
        ]
        with subprocess.Popen(
            args, env=self.runner_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        ) as run:
            self.runs.add(run)
            try:
                said, _ = run.communicate()
            finally:
                run.kill()
                self.runs.discard(run)
        if run.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"the browser run of {name} failed (exit {run.returncode}):\n{said[-4000:]}\n"
                f"JupyterLab's log:\n{self.log_tail()}"
            )
        result = json.loads(out.read_text())
        model = result.pop("notebook")
        for cell in model["cells"]:  # JupyterLab writes "attachments": null; nbformat wants none
            if cell.get("attachments", {}) is None:
                del cell["attachments"]
        notebook = nbformat.reads(json.dumps(model), as_version=4)
        return notebook, result
