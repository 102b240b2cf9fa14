"""Attaching from outside to a running process: aiomonitor's ps/where/cancel, py-spy dump.

    mon = AioMonitor("http://127.0.0.1:20102")     # the process runs aiomonitor (its web UI)
    print(mon.ps_text())                           # every task of its loop
    row = mon.find("wait_for_signal")[0]           # by name, coroutine or stack line
    print(mon.where(row.task_id))                  # the awaits it is suspended in
    mon.cancel(row.task_id)                        # 'Worker._run_entry()'
    print(py_spy_dump(pid))                        # every thread's Python stack, or why not

Two tools, two views. aiomonitor is code *inside* the process (``start_monitor``, or
the worker's ``--aiomonitor-port``): it sees the loop's tasks, suspended coroutines
included, and can cancel one; it runs its servers on a thread of its own, so it still
answers while the loop is blocked (``ps`` and ``where`` do; ``cancel`` is run by the
blocked loop, so it waits for it). py-spy attaches to *any* Python process from outside
with ptrace and reads its threads' stacks: a suspended coroutine is on no stack, so it
sees the loop thread waiting in its selector, unless a task blocks the loop, and then
it names the blocking line.

aiomonitor is driven through its web UI's JSON API (``POST /api/live-tasks``, ``DELETE
/api/task``) and its trace page (``GET /trace-running``), not its telnet prompt: that
one is a prompt_toolkit terminal application, which answers only a client that plays
a VT100 terminal (terminal type, cursor position reports) and paints with escape codes.
Every connection and every read here is bounded by ``timeout_s``.
"""

from __future__ import annotations

__all__ = ["AioMonitor", "AttachError", "SpyDump", "SpyThread", "TaskRow", "monitor_url",
           "py_spy_dump"]

import dataclasses
import html.parser
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_MAX_BYTES = 4 << 20  # a reply larger than this is not aiomonitor's
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_URL_LINE = re.compile(r"aiomonitor on telnet://\S+ and (http://\S+)")


class AttachError(Exception):
    """The other process could not be reached or did not answer: one line says why."""


def monitor_url(lines: Iterable[str]) -> str:
    """The web UI's URL from a worker's stderr (``worker NAME aiomonitor on ... http://...``)."""
    for line in lines:
        if found := _URL_LINE.search(line):
            return found.group(1)
    raise AttachError("no 'aiomonitor on ...' line: was the worker started with "
                      "--aiomonitor-port?")


# --- aiomonitor --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskRow:
    """One task as aiomonitor's ``ps`` lists it (``since``: age, with its task factory)."""

    task_id: str
    state: str
    name: str
    coro: str
    created: str
    since: str


class AioMonitor:
    """aiomonitor's ``ps``, ``where`` and ``cancel`` on another process, from a script.

        mon = AioMonitor(monitor_url(worker_lines), timeout_s=5)
        [row.name for row in mon.ps()]   # ['w1 read', 'w1 maintain', ..., 'Task-1']
    """

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"not aiomonitor's web UI address: {url!r} (http://HOST:PORT)")
        self.url = f"http://{parts.hostname}:{parts.port}"
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"<AioMonitor {self.url}>"

    def ps(self, filter: str = "") -> list[TaskRow]:
        """Every task of the process's loop (``filter``: in the name or coroutine)."""
        reply = self._json("POST", "/api/live-tasks", {"filter": filter}, what="ps")
        return [TaskRow(t["task_id"], t["state"], t["name"], t["coro"], t["created_location"],
                        t["since"]) for t in reply["tasks"]]

    def ps_text(self, filter: str = "") -> str:
        """``ps`` as the terminal UI prints it: a count, then one line per task."""
        rows = self.ps(filter)
        table = [("Task ID", "State", "Name", "Coroutine", "Created at", "Since")]
        table += [dataclasses.astuple(row) for row in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                 for line in table]
        return f"{len(rows)} tasks\n" + "\n".join(lines)

    def where(self, task_id: str | int, *, chain: bool = True) -> str:
        """The task's stack (its chain of awaits), after the chain of tasks that created it.

        ``chain=False``: the task's own stack only (the last section).
        """
        status, body = self._request("GET", "/trace-running?" + urllib.parse.urlencode(
            {"task_id": str(task_id)}), what="where")
        if status != 200:
            raise AttachError(f"where {task_id}: {self._reason(status, body)}")
        sections = _TracePage.sections(body.decode("utf-8", "replace"))
        if not chain:
            sections = sections[-2:]
        out = []
        for kind, text in sections:
            out.append(text.strip() if kind == "h2" else _indent(text))
        return "\n".join(out)

    def cancel(self, task_id: str | int) -> str:
        """Cancel the task and wait until it has ended; its coroutine's name.

        The cancel is run by the process's loop: while that loop is blocked, this waits,
        then raises AttachError after ``timeout_s``, and the cancel still happens later.
        """
        query = urllib.parse.urlencode({"task_id": str(task_id)})
        status, body = self._request("DELETE", f"/api/task?{query}", what="cancel")
        if status != 200:
            raise AttachError(f"cancel {task_id}: {self._reason(status, body)}")
        return str(json.loads(body).get("detail", ""))

    def find(self, text: str, *, stacks: bool = True) -> list[TaskRow]:
        """The tasks whose name or coroutine holds ``text``, or (``stacks``) their stack."""
        found = []
        for row in self.ps():
            if text in row.name or text in row.coro:
                found.append(row)
            elif stacks:
                try:
                    stack = self.where(row.task_id)
                except AttachError:  # it ended between ps and where
                    continue
                if text in stack.split("(most recent call last)")[-1]:  # its own stack
                    found.append(row)
        return found

    # --- HTTP, bounded ----------------------------------------------------------------------

    def _json(self, method: str, path: str, form: dict[str, str], *, what: str) -> Any:
        status, body = self._request(method, path, what=what,
                                     form=urllib.parse.urlencode(form).encode())
        if status != 200:
            raise AttachError(f"{what}: {self._reason(status, body)}")
        try:
            return json.loads(body)
        except ValueError:
            raise AttachError(f"{what}: {self.url} did not answer JSON: is it aiomonitor's "
                              "web UI (the telnet port is the other one)?") from None

    def _request(self, method: str, path: str, *, what: str,
                 form: bytes | None = None) -> tuple[int, bytes]:
        deadline = time.monotonic() + self.timeout_s
        parts = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port,
                                          timeout=self.timeout_s)
        headers = {"Connection": "close"}
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            conn.request(method, path, body=form, headers=headers)
            reply = conn.getresponse()
            chunks, size = [], 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                if conn.sock is not None:
                    conn.sock.settimeout(left)
                chunk = reply.read1(65536)
                if not chunk:
                    return reply.status, b"".join(chunks)
                chunks.append(chunk)
                size += len(chunk)
                if size > _MAX_BYTES:
                    raise AttachError(f"{what}: {self.url} sent over {_MAX_BYTES} bytes")
        except TimeoutError:
            raise AttachError(f"{what}: aiomonitor at {self.url} did not answer within "
                              f"{self.timeout_s:g} s") from None
        except ConnectionRefusedError:
            raise AttachError(f"{what}: nothing listens at {self.url} (is the process "
                              "running, with aiomonitor?)") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AttachError(f"{what}: {self.url}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()

    @staticmethod
    def _reason(status: int, body: bytes) -> str:
        try:
            reply = json.loads(body)
            text = f"{reply.get('msg', '')} {reply.get('detail', '')}".strip()
        except ValueError:
            text = body.decode("utf-8", "replace").strip().splitlines()[0][:200] if body else ""
        if "MissingTask" in text or status == 404:
            return "no such task in that process (it has ended, or the id is wrong)"
        return f"HTTP {status}: {text}"


class _TracePage(html.parser.HTMLParser):
    """The headers (h2) and stacks (pre) of aiomonitor's trace page, in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[list[str]] = []
        self._open: str | None = None
        self._templates = 0  # <template> holds the page's JavaScript notifications

    @classmethod
    def sections(cls, page: str) -> list[tuple[str, str]]:
        parser = cls()
        parser.feed(page)
        parser.close()
        return [(kind, text) for kind, text in parser.found]

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "template":
            self._templates += 1
        elif tag in ("h2", "pre") and not self._templates:
            self._open = tag
            self.found.append([tag, ""])

    def handle_endtag(self, tag: str) -> None:
        if tag == "template":
            self._templates -= 1
        elif tag == self._open:
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open:
            self.found[-1][1] += data


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.strip("\n").splitlines())


# --- py-spy ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpyThread:
    """One thread of a py-spy dump: its id, name, idle/active, frames innermost first."""

    tid: int
    name: str
    state: str
    frames: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SpyDump:
    """What ``py-spy dump`` printed, or the one-line reason there is no dump."""

    pid: int
    text: str = ""
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def __str__(self) -> str:
        return self.text if self.ok else f"no py-spy dump of pid {self.pid}: {self.problem}"

    def threads(self) -> list[SpyThread]:
        """The dump's threads, in its order."""
        found: list[SpyThread] = []
        head = re.compile(r'^Thread (0x[0-9a-fA-F]+|\d+) \((\w+)\)(?:: "(.*)")?$')
        current: tuple[int, str, str] | None = None
        frames: list[str] = []
        for line in [*self.text.splitlines(), "Thread 0 (end): \"\""]:
            if match := head.match(line):
                if current is not None:
                    found.append(SpyThread(*current, tuple(frames)))
                tid = match.group(1)
                current = (int(tid, 16 if tid.startswith("0x") else 10),
                           match.group(3) or "", match.group(2))  # a thread may have no name
                frames = []
            elif current is not None and line.startswith(" "):
                frames.append(line.strip())
        return found

    def thread(self, name: str) -> SpyThread:
        """The thread called ``name`` (``"MainThread"``: the loop of a worker process)."""
        for one in self.threads():
            if one.name == name:
                return one
        raise LookupError(f"no thread {name!r} in the dump of pid {self.pid}")


_PTRACE = ("py-spy may not read another process here (ptrace): run it as root (sudo; "
           "always on macOS), give a container CAP_SYS_PTRACE (docker run --cap-add "
           "SYS_PTRACE); on Linux, kernel.yama.ptrace_scope 1 or more forbids it to users")


def py_spy_dump(pid: int, *, timeout_s: float = 10.0, nonblocking: bool = False,
                py_spy: str | None = None) -> SpyDump:
    """``py-spy dump --pid PID``: its output, or why not in one line (never raises for that).

    py-spy stops the process for the moment it reads it; ``nonblocking`` reads it running
    (no pause, a stack can come out torn). ``py_spy``: the program (default: the one
    beside this Python, else on PATH).
    """
    program = py_spy or _find_py_spy()
    if program is None:
        return SpyDump(pid, problem="py-spy is not installed (pip install py-spy)")
    command = [program, "dump", "--pid", str(pid)] + (["--nonblocking"] if nonblocking else [])
    # Jupyter asks child processes for colours (FORCE_COLOR, CLICOLOR_FORCE): plain text here.
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace",
                              timeout=timeout_s, stdin=subprocess.DEVNULL,
                              env=env | {"NO_COLOR": "1"})
    except subprocess.TimeoutExpired:  # run() has killed and reaped it
        return SpyDump(pid, problem=f"py-spy did not finish within {timeout_s:g} s")
    except OSError as exc:
        return SpyDump(pid, problem=f"cannot run {program}: {exc.strerror or exc}")
    out, err = _ANSI.sub("", done.stdout), _ANSI.sub("", done.stderr)  # colours, if any left
    if done.returncode == 0 and out.strip():
        return SpyDump(pid, text=out)
    return SpyDump(pid, problem=_spy_problem(pid, out + err))


def _find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")  # a venv's bin/, often not on PATH
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _spy_problem(pid: int, said: str) -> str:
    lowered = said.lower()
    if "permission denied" in lowered or "operation not permitted" in lowered \
            or "requires root" in lowered:
        return _PTRACE
    if "failed to get process executable name" in lowered or "no such process" in lowered:
        return f"no process {pid} (has it ended?)"
    if "failed to find python version" in lowered or "failed to find a python" in lowered:
        return f"process {pid} does not look like Python to py-spy"
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    return lines[0] if lines else "py-spy failed and said nothing"
