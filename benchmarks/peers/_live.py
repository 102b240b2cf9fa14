"""queue_peers.py's live runner: worker processes from each peer's CLI, its venv, the server.

Imported by benchmarks/queue_peers.py (which puts this folder and benchmarks/ on
sys.path); never by a worker. ``LiveRunner`` is what ``queue_peers.Runner``
describes: tests drive the rounds with a fake one instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from queue_throughput import _one_run, _Processes

from course_lib.redis import connect

PEERS_DIR = Path(__file__).resolve().parent
ROOT = PEERS_DIR.parent.parent
PEERS_VENV = ROOT / ".venv-peers"
WARMUP_TIMEOUT_S = 90.0  # a cold Celery with mingle on a loaded machine takes seconds
RUN_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 20.0
# What each peer's venv is asked for its versions.
DISTS = {"course": ["redis", "hiredis"], "arq": ["arq", "redis", "hiredis"],
         "saq": ["saq", "redis", "hiredis", "typing_extensions"],
         "celery": ["celery", "kombu", "redis", "hiredis"], "rq": ["rq", "redis", "hiredis"]}


def _python(peer: str) -> Path:
    return Path(sys.executable) if peer == "course" else PEERS_VENV / peer / "bin" / "python"


def missing_venvs(variants: list[dict]) -> list[str]:
    return sorted({v["peer"] for v in variants if not _python(v["peer"]).exists()})


def worker_command(variant: dict, url: str, slot: int = 0) -> list[str]:
    py = _python(variant["peer"])
    fill = {"py": str(py), "bin": str(py.parent), "url": url, "c": str(variant["concurrency"]),
            "peers": str(PEERS_DIR), "i": str(slot)}
    return [part.format(**fill) for part in variant["cmd"]]


def _group_cpu_s(pgid: int) -> float | None:
    """CPU seconds of every process in the group, reaped children included (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[2]) == pgid:  # fields from "state": pgrp is the 3rd
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / tick


def _groups_cpu_s(pgids: list[int]) -> float | None:
    xs = [_group_cpu_s(p) for p in pgids]
    return None if any(x is None for x in xs) else sum(xs)


class LiveRunner:
    """Starts workers and drivers as subprocesses against one redis-server of ours."""

    def __init__(self, url: str, logdir: Path, max_procs: int = 1) -> None:
        self.url, self.logdir, self.max_procs = url, logdir, max_procs
        self.env = {**os.environ, "PEERS_REDIS_URL": url,
                    # the worktree's course_lib first, then the job modules
                    "PYTHONPATH": os.pathsep.join([str(ROOT), str(PEERS_DIR)])}
        self._bare_procs: _Processes | None = None

    def close(self) -> None:
        if self._bare_procs is not None:
            self._bare_procs.close()

    def versions(self, peer: str) -> dict[str, str | None]:
        code = ("import importlib.metadata as m, json, sys\n"
                "def v(d):\n    try: return m.version(d)\n    except m.PackageNotFoundError: "
                "return None\nprint(json.dumps({d: v(d) for d in sys.argv[1:]}))")
        out = subprocess.run([str(_python(peer)), "-c", code, *DISTS[peer]], env=self.env,
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)

    def redis(self, *command: str) -> Any:
        async def call() -> Any:
            r = await connect(self.url)
            try:
                return await r.execute_command(*command)
            finally:
                await r.aclose()

        return asyncio.run(call())

    def _server_cpu_s(self) -> float:
        info = self.redis("INFO", "cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def run_bare(self, jobs: int, procs: int = 1) -> dict:
        if self._bare_procs is None:  # spawned once, as many as the most a run asks for
            self._bare_procs = _Processes(max(self.max_procs, procs))

        async def one() -> dict:
            r = await connect(self.url)
            try:
                return await _one_run(r, self.url, self._bare_procs,
                                      {"kind": "bare", "procs": procs}, jobs)
            finally:
                await r.aclose()

        run = asyncio.run(one())
        return {"seconds": run["seconds"], "jobs_per_s": run["jobs_per_s"],
                "enqueue_s": run["enqueue_s"], "worker_cpu_s": run["client_cpu_s"],
                "server_cpu_s": run["server_cpu_s"], "done": jobs}

    def _drive(self, variant: dict, task: str, n: int, timeout_s: float) -> dict:
        cmd = [str(_python(variant["peer"])), str(PEERS_DIR / "_drive.py"), variant["module"],
               task, str(n), "--timeout", str(timeout_s)]
        out = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True,
                             timeout=timeout_s + 60)
        if out.returncode != 0:
            raise RuntimeError(f"{variant['name']}: _drive.py failed:\n{out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])

    def run_consumer(self, variant: dict, jobs: dict[str, int], procs: int = 1
                     ) -> dict[str, dict]:
        self.redis("FLUSHALL")
        log = self.logdir / (variant["name"].replace(" ", "_").replace("/", "_") + ".log")
        started: list[subprocess.Popen] = []
        try:
            with open(log, "ab") as logfile:
                for slot in range(procs):
                    env = {**self.env, "PEERS_CONCURRENCY": str(variant["concurrency"]),
                           "PEERS_WORKER_SLOT": str(slot)}
                    # A session of its own: the whole group (prefork children, RQ's horses
                    # once reaped) is measured and, if it hangs at stop, killed by its id.
                    started.append(subprocess.Popen(
                        worker_command(variant, self.url, slot), env=env, cwd=PEERS_DIR,
                        stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True))
            warm = self._drive(variant, "warm", procs, WARMUP_TIMEOUT_S)
            if warm["timed_out"]:
                raise RuntimeError(f"{variant['name']}: {warm['workers_seen']} of {procs} "
                                   f"worker processes did a job within {WARMUP_TIMEOUT_S:g} s "
                                   f"of their start; log {log}")
            pgids = [p.pid for p in started]
            out = {}
            for task, n in jobs.items():
                cpu0, srv0 = _groups_cpu_s(pgids), self._server_cpu_s()
                run = self._drive(variant, task, n, RUN_TIMEOUT_S)
                cpu1, srv1 = _groups_cpu_s(pgids), self._server_cpu_s()
                run["worker_cpu_s"] = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
                run["server_cpu_s"] = srv1 - srv0
                run["jobs_per_s"] = run["done"] / run["seconds"]
                out[task] = run
            return out
        finally:
            for proc in started:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in started:
                self._stop(proc)
            self.redis("FLUSHALL")

    def _stop(self, proc: subprocess.Popen) -> None:
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever is left of the group we started, by its id
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
