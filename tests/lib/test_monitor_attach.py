"""Attaching from outside to a worker process: aiomonitor's ps/where/cancel, py-spy dump.

Each test runs a real ``python -m course_lib.distributed worker --aiomonitor-port 0``
process (``queue_lab.Fleet``, which reaps it) running ``examples.ch05_stuck_service``,
on a fakeredis served over TCP and, where marked, on a real redis-server. Every wait
is bounded; none of them is a claim about speed. py-spy tests skip, saying why, where
py-spy may not attach (ptrace).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_sync

from course_lib.distributed import JobStatus, QueueKeys
from course_lib.distributed.cli import main
from course_lib.examples.queue_lab import Fleet
from course_lib.monitor.attach import (
    AioMonitor,
    AttachError,
    SpyDump,
    TaskRow,
    monitor_url,
    py_spy_dump,
)
from course_lib.redis import serve_fake_tcp

pytest.importorskip("aiomonitor", reason="aiomonitor not installed (optional dependency)")

APP = "course_lib.examples.ch05_stuck_service:registry"
WAIT_S = 60.0  # a bound on every wait, never a claim about speed


@pytest.fixture(params=[pytest.param("real", marks=pytest.mark.real_redis), "fake_tcp"])
def server_url(request: pytest.FixtureRequest) -> str:
    if request.param == "real":
        return request.getfixturevalue("redis_server").url
    server = serve_fake_tcp()
    request.addfinalizer(server.stop)
    return server.url


@pytest.fixture
def fake_url() -> Iterator[str]:
    with serve_fake_tcp() as server:
        yield server.url


class Stuck:
    """One worker process with aiomonitor, its queue, and ways to feed and watch it."""

    def __init__(self, fleet: Fleet, url: str, queue: str, release: Path) -> None:
        self.fleet, self.url, self.queue, self.release = fleet, url, queue, release
        self.mon = AioMonitor(monitor_url(fleet.log("w1")), timeout_s=WAIT_S)
        self.pid = fleet.pid("w1")

    def enqueue(self, task: str, *args: object, job_id: str, wait: bool = False) -> int:
        return main(["--redis-url", self.url, "--queue", self.queue, "-q", "enqueue", "--app",
                     APP, task, *map(str, args), "--job-id", job_id,
                     *(["--wait", str(WAIT_S)] if wait else [])])

    def log_has(self, text: str, count: int = 1) -> list[str]:
        """Wait until ``count`` lines of the worker's log hold ``text``; those lines."""
        deadline = time.monotonic() + WAIT_S
        while True:
            found = [line for line in self.fleet.log("w1") if text in line]
            if len(found) >= count:
                return found
            assert time.monotonic() < deadline, (f"no {text!r} in the worker's log:\n"
                                                 + "\n".join(self.fleet.log("w1")))
            time.sleep(0.02)

    def task(self, text: str, *, other_than: frozenset[str] = frozenset()) -> TaskRow:
        """The one task whose name, coroutine or stack holds ``text`` (waits for it)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            found = [row for row in self.mon.find(text) if row.task_id not in other_than]
            if found:
                assert len(found) == 1, found
                return found[0]
            assert time.monotonic() < deadline, f"no task shows {text!r}:\n{self.mon.ps_text()}"
            time.sleep(0.02)

    def record(self, job_id: str, *, until_not: str | None = "running") -> dict[str, str]:
        """The job's record, once its status is not ``until_not`` (the worker logs an
        outcome just before its settle, batched, reaches Redis)."""
        client = redis_sync.Redis.from_url(self.url, decode_responses=True)
        deadline = time.monotonic() + WAIT_S
        try:
            while True:
                record = client.hgetall(QueueKeys(self.queue).job(job_id))
                if record.get("status") != until_not or time.monotonic() > deadline:
                    return record
                time.sleep(0.02)
        finally:
            client.close()


# Ask for the server before stuck_factory: fixtures end in reverse order, so the worker
# stops while its Redis still answers (else its stop waits for Redis, then is killed).
@pytest.fixture
def stuck_factory(tmp_path: Path) -> Iterator[Callable[[str], Stuck]]:
    made: list[Stuck] = []

    def make(url: str) -> Stuck:
        queue = f"attach-{uuid.uuid4().hex[:8]}"
        fleet = Fleet(url, queue, app=APP, concurrency=4, grace_s=0.5, block_s=0.2)
        fleet.options["--aiomonitor-port"] = 0
        release = tmp_path / f"release-{queue}"
        try:
            fleet.start("w1", timeout_s=WAIT_S)
        except BaseException:
            fleet.stop()
            raise
        made.append(stuck := Stuck(fleet, url, queue, release))
        return stuck

    yield make
    for stuck in made:
        stuck.release.touch()  # a loop held by block_until goes on, and hears SIGTERM
        stuck.fleet.stop()  # SIGTERM; SIGKILL after grace + 5 s: no process outlives the test


def _dump_or_skip(pid: int) -> SpyDump:
    dump = py_spy_dump(pid, timeout_s=WAIT_S)
    if not dump.ok:
        pytest.skip(f"py-spy cannot dump pid {pid} here: {dump.problem}")
    return dump


# --- aiomonitor: ps, where, cancel ---------------------------------------------------------


def test_ps_lists_the_workers_tasks_and_where_shows_the_stuck_await(server_url, stuck_factory):
    stuck = stuck_factory(server_url)
    assert stuck.enqueue("wait_for_signal", "go", job_id="j1") == 0
    stuck.log_has("→ wait_for_signal(id=j1) 1/1")
    row = stuck.task("wait_for_signal")
    assert row.name.startswith("w1 ") and row.coro == "_Running._run_entry()"
    assert row.state == "PENDING" and "course_lib/lifecycle.py:" in row.created  # spawn()
    names = {r.name for r in stuck.mon.ps()}
    assert {"w1 read", "w1 maintain", "w1 heartbeat"} <= names
    assert "w1 read" in stuck.mon.ps_text() and " tasks\n" in stuck.mon.ps_text()
    own = stuck.mon.where(row.task_id, chain=False)
    assert f"Stack of <Task name={row.name} " in own
    assert "in wait_for_signal\n    await never.wait()" in own  # the line it is suspended at
    assert own.rstrip().endswith("await fut")  # Event.wait, inside asyncio
    full = stuck.mon.where(row.task_id)
    assert full.endswith(own) and "Stack of <Task name=w1 read" in full  # who created it


def test_cancelling_the_awaited_helper_fails_the_job_and_the_worker_goes_on(server_url,
                                                                             stuck_factory):
    stuck = stuck_factory(server_url)
    assert stuck.enqueue("wait_for_reply", "r", job_id="r1") == 0
    helper = stuck.task("reply r")
    assert "in _reply\n    await never.wait()" in stuck.mon.where(helper.task_id, chain=False)
    assert stuck.mon.cancel(helper.task_id) == "_reply()"
    stuck.log_has("✗ wait_for_reply(id=r1) dead: gave up after 1 attempt(s)")
    record = stuck.record("r1")
    assert record["status"] == JobStatus.DEAD.value
    assert record["error_type"] == "RuntimeError"
    assert "raised CancelledError without being cancelled" in record["error"]
    assert not stuck.mon.find("reply r")
    assert stuck.enqueue("add", 2, 3, job_id="after", wait=True) == 0  # it goes on
    assert stuck.record("after")["status"] == JobStatus.DONE.value


def test_cancelling_the_jobs_own_task_fails_its_attempt_and_it_is_not_run_again(
        fake_url, stuck_factory):
    stuck = stuck_factory(fake_url)
    assert stuck.enqueue("wait_for_signal", "go", job_id="j1") == 0
    first = stuck.task("wait_for_signal")
    assert stuck.mon.cancel(first.task_id) == "_Running._run_entry()"
    # Not a stop: the attempt failed. Its one attempt used, the job is dead-lettered,
    # not handed back to be read again and hang again.
    stuck.log_has("✗ wait_for_signal(id=j1) dead: gave up after 1 attempt(s), cancelled "
                  "from outside the worker")
    assert stuck.enqueue("add", 2, 3, job_id="after", wait=True) == 0  # it goes on
    record = stuck.record("j1")
    assert record["status"] == JobStatus.DEAD.value
    assert record["error"] == "wait_for_signal was cancelled from outside the worker"
    log = stuck.fleet.log("w1")
    assert sum("→ wait_for_signal(id=j1)" in line for line in log) == 1, log
    assert not any("handed back" in line for line in log), log
    assert not stuck.mon.find("wait_for_signal")
    with pytest.raises(AttachError, match="no such task"):
        stuck.mon.where(first.task_id)


def test_aiomonitor_errors_are_one_line(fake_url, stuck_factory):
    stuck = stuck_factory(fake_url)
    for call in (stuck.mon.where, stuck.mon.cancel):
        with pytest.raises(AttachError, match="no such task in that process") as caught:
            call(12345)
        assert "\n" not in str(caught.value)
    with pytest.raises(AttachError, match=re.escape("nothing listens at http://127.0.0.1:1 ")):
        AioMonitor("http://127.0.0.1:1", timeout_s=WAIT_S).ps()
    with pytest.raises(ValueError, match="not aiomonitor's web UI address"):
        AioMonitor("telnet://127.0.0.1:20101")
    with pytest.raises(AttachError, match="--aiomonitor-port"):
        monitor_url(["worker w1 ready"])


# --- py-spy, and a blocked loop ------------------------------------------------------------


def test_py_spy_sees_the_loop_in_its_selector_not_the_suspended_job(server_url, stuck_factory):
    stuck = stuck_factory(server_url)
    assert stuck.enqueue("wait_for_signal", "go", job_id="j1") == 0
    stuck.task("wait_for_signal")  # suspended, as aiomonitor shows
    dump = _dump_or_skip(stuck.pid)
    loop_thread = dump.thread("MainThread")
    assert "Selector.select (selectors.py:" in loop_thread.frames[0]  # Epoll-, Kqueue-...
    assert "wait_for_signal" not in dump.text  # a suspended coroutine is on no stack
    assert any("Monitor._ui_main" in " ".join(t.frames) for t in dump.threads())  # its thread


def test_with_the_loop_blocked_py_spy_names_the_line_and_aiomonitor_still_lists_tasks(
        server_url, stuck_factory):
    stuck = stuck_factory(server_url)
    before = {row.task_id for row in stuck.mon.ps()}
    assert stuck.enqueue("block_until", str(stuck.release), job_id="b1") == 0
    stuck.log_has("→ block_until(id=b1) 1/1")  # the next thing its loop does is block
    # aiomonitor serves from a thread of its own: ps answers while the loop is blocked.
    blocker = next(row for row in stuck.mon.ps("_run_entry") if row.task_id not in before)
    # where: a running coroutine has no chain of awaits (cr_await is None while it runs),
    # so aiomonitor shows its outermost frame only, not the blocking line.
    assert "block_until" not in stuck.mon.where(blocker.task_id, chain=False)
    # cancel is run by the monitored loop: it waits for it, and our bound ends the wait.
    with pytest.raises(AttachError, match=r"cancel: aiomonitor at \S+ did not answer within"):
        AioMonitor(stuck.mon.url, timeout_s=0.5).cancel(blocker.task_id)
    deadline = time.monotonic() + WAIT_S
    while True:  # py-spy reads the loop thread's real stack: the blocking line
        dump = _dump_or_skip(stuck.pid)
        top = dump.thread("MainThread").frames[0]
        if top.startswith("block_until ("):
            break
        assert time.monotonic() < deadline, dump.text
    assert "ch05_stuck_service.py:" in top
    stuck.release.touch()
    stuck.log_has("← block_until(id=b1) ok")  # the late cancel found it finished
    assert stuck.record("b1")["status"] == JobStatus.DONE.value
    assert stuck.enqueue("add", 2, 3, job_id="after", wait=True) == 0


# --- py-spy's reasons, one line each -------------------------------------------------------


def _program(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-py-spy"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize(("said", "reason"), [
    ("Permission Denied: Try running again with elevated permissions by going 'sudo env "
     "\"PATH=$PATH\" !!'", "ptrace"),
    ("Error: Failed to get process executable name. Check that the process is running.",
     "no process 4242 (has it ended?)"),
    ("This program requires root on OSX.", "ptrace"),
    ("Error: something new", "Error: something new"),
])  # fmt: skip
def test_py_spy_failures_are_one_line_reasons(tmp_path, said, reason):
    dump = py_spy_dump(4242, py_spy=_program(tmp_path, f"echo '{said}' >&2\nexit 1"))
    assert not dump.ok and dump.text == ""
    assert reason in dump.problem and "\n" not in dump.problem
    assert str(dump) == f"no py-spy dump of pid 4242: {dump.problem}"


def test_py_spy_that_hangs_or_is_missing_is_a_reason_too(tmp_path):
    dump = py_spy_dump(4242, py_spy=_program(tmp_path, "exec sleep 60"), timeout_s=0.5)
    assert dump.problem == "py-spy did not finish within 0.5 s"
    missing = py_spy_dump(4242, py_spy=str(tmp_path / "nowhere"))
    assert missing.problem.startswith("cannot run ") and "No such file" in missing.problem


def test_py_spy_of_an_ended_process_says_so():
    if py_spy_dump(os.getpid(), timeout_s=WAIT_S).problem is not None:
        pytest.skip("py-spy cannot attach here, so it cannot tell an ended process either")
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait(timeout=WAIT_S)
    assert py_spy_dump(ended.pid, timeout_s=WAIT_S).problem == \
        f"no process {ended.pid} (has it ended?)"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0
                    or shutil.which("runuser") is None,
                    reason="needs root and runuser, to run py-spy as an unprivileged user")
def test_py_spy_without_ptrace_permission_says_what_to_do(tmp_path):
    real = py_spy_dump.__globals__["_find_py_spy"]()
    if real is None:
        pytest.skip("py-spy not installed")
    as_nobody = _program(tmp_path, f'exec runuser -u nobody -- {real} "$@"')
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dump = py_spy_dump(target.pid, py_spy=as_nobody, timeout_s=WAIT_S)
    finally:
        target.kill()
        target.wait(timeout=WAIT_S)
    assert not dump.ok and "\n" not in dump.problem
    assert "ptrace" in dump.problem and "CAP_SYS_PTRACE" in dump.problem


def test_py_spy_output_comes_without_colours(tmp_path, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")  # as a Jupyter kernel sets for its children
    colour = _program(tmp_path, 'test -n "$FORCE_COLOR" && printf "\\033[33m"\n'
                      'printf \'Thread 5 (idle): "MainThread"\\033[0m\\n    f (x.py:1)\\n\'')
    dump = py_spy_dump(5, py_spy=colour)
    assert dump.text == 'Thread 5 (idle): "MainThread"\n    f (x.py:1)\n'
    assert dump.thread("MainThread").frames == ("f (x.py:1)",)


def test_spy_dump_threads_are_parsed_innermost_first():
    text = ('Process 7: python -m x\nPython v3.11.7 (/usr/bin/python3.11)\n\n'
            'Thread 7 (idle): "MainThread"\n    EpollSelector.select (selectors.py:468)\n'
            '    run (asyncio/runners.py:190)\nThread 0x7F01 (active): "Thread-1 (_ui_main)"\n'
            '    Monitor._ui_main (aiomonitor/monitor.py:546)\nThread 9 (idle)\n'
            '    <module> (<string>:1)\n')  # a thread with no name (python -c)
    dump = SpyDump(7, text=text)
    main_thread, ui, unnamed = dump.threads()
    assert (main_thread.tid, main_thread.state, main_thread.frames[0]) == \
        (7, "idle", "EpollSelector.select (selectors.py:468)")
    assert (ui.tid, ui.name, ui.state, len(ui.frames)) == (0x7F01, "Thread-1 (_ui_main)",
                                                           "active", 1)
    assert (unnamed.tid, unnamed.name, unnamed.frames) == (9, "", ("<module> (<string>:1)",))
    with pytest.raises(LookupError, match="no thread 'nope' in the dump of pid 7"):
        dump.thread("nope")
