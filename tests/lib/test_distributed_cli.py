"""python -m course_lib.distributed: every command, every exit code, a worker process.

The commands run in-process (``main([...])``) against the session's real server and
against a fakeredis served on a TCP port; the worker runs as a real subprocess,
stopped by SIGTERM and by SIGINT while a job runs. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis as redis_sync
from _cli_support import WorkerProcess

from course_lib.distributed import Job, JobStatus, QueueKeys
from course_lib.distributed.cli import main
from course_lib.redis import serve_fake_tcp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
APP = "_cli_app:registry"  # tests/lib/_cli_app.py; tests/lib is on sys.path under pytest


@pytest.fixture(params=[pytest.param("real", marks=pytest.mark.real_redis), "fake_tcp"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "real":
        return request.getfixturevalue("redis_server").url
    server = serve_fake_tcp()
    request.addfinalizer(server.stop)
    return server.url


@pytest.fixture
def queue() -> str:
    return f"cli-{uuid.uuid4().hex[:8]}"  # the real server is shared by the session


@pytest.fixture
def client(url: str):
    c = redis_sync.Redis.from_url(url)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _no_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed when the block ends: nothing listens


# --- the commands --------------------------------------------------------------------------


def test_enqueue_prints_the_job_id_and_queues_the_job(capsys, monkeypatch, url, queue, client):
    keys = QueueKeys(queue)
    code, out, err = cli(capsys, "--redis-url", url, "--queue", queue,
                         "enqueue", "add", "2", "x", '"3"', "--job-id", "a-1")
    assert (code, out) == (0, "a-1\n")
    [(_, fields)] = client.xrange(keys.stream)
    job = Job.decode(fields[b"job"])
    assert (job.task, job.args, job.max_attempts) == ("add", (2, "x", "3"), 3)
    assert client.hget(keys.job("a-1"), "status") == b"queued"
    # The same id again: enqueued once, said so; options may follow the command.
    code, out, err = cli(capsys, "enqueue", "add", "--args", "[1, 2]", "--job-id", "a-1",
                         "--redis-url", url, "--queue", queue)
    assert (code, out) == (0, "a-1\n") and "exists already (queued)" in err
    assert client.xlen(keys.stream) == 1
    # With --app, the task's own settings; --kwargs as JSON; REDIS_URL as the URL.
    monkeypatch.setenv("REDIS_URL", url)
    code, out, _ = cli(capsys, "--queue", queue, "enqueue", "boom", "--app", APP,
                       "--kwargs", '{"message": "hi"}')
    assert code == 0
    job = Job.decode(client.xrange(keys.stream)[-1][1][b"job"])
    assert (job.id, job.kwargs, job.max_attempts) == (out.strip(), {"message": "hi"}, 1)


def test_enqueue_wait_times_out_with_exit_4(capsys, url, queue):
    code, out, err = cli(capsys, "--redis-url", url, "--queue", queue,
                         "enqueue", "add", "1", "2", "--job-id", "w-1", "--wait", "0.2")
    assert (code, out) == (4, "w-1\n")
    assert "still queued" in err and "Traceback" not in err


def test_stats_counts_the_queue(capsys, url, queue):
    for n in range(3):
        cli(capsys, "--redis-url", url, "--queue", queue, "enqueue", "add", n, n)
    code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue, "stats", "--json")
    assert code == 0
    assert json.loads(out) == {"queue": queue, "stream": 3, "pending": 0, "lag": 3,
                               "delayed": 0, "dead": 0, "consumers": 0, "stale": 0}
    code, out, _ = cli(capsys, "stats", "--redis-url", url, "--queue", queue)
    assert code == 0 and "stream     3" in out.splitlines()


def test_stats_watch_prints_one_block_per_sample_with_rates(capsys, url, queue):
    for n in range(3):
        cli(capsys, "--redis-url", url, "--queue", queue, "enqueue", "add", n, n)
    code, out, err = cli(capsys, "--redis-url", url, "--queue", queue,
                         "stats", "--watch", "--count", "2", "--interval", "0.05")
    assert code == 0 and "Traceback" not in err
    assert "\x1b[" not in out  # not a terminal: plain blocks, no redrawing
    blocks = [block.splitlines() for block in out.strip().split("\n\n")]
    assert len(blocks) == 2
    for n, lines in enumerate(blocks, 1):
        assert f"sample {n}, every 0.05 s" in lines[0]
        assert f"queue      {queue}" in lines
        figures = {line.split()[0]: line.split()[1:] for line in lines[1:]}
        assert figures["stream"][0] == figures["lag"][0] == "3"
        assert figures["consumers"] == ["0"]  # a count, never a rate
    assert all(len(figures) == 1 for figures in _figures(blocks[0]).values())  # no rate yet
    assert _figures(blocks[1])["stream"] == ["3", "+0.0/s"]  # nothing changed in between
    # --json: one object per sample, one per line, the rates in it (none for the first).
    code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue,
                       "stats", "--watch", "--json", "--count", "2", "--interval", "0.05")
    first, second = (json.loads(line) for line in out.splitlines())
    assert (first["stream"], first["rates"]) == (3, None)
    assert second["stream"] == 3 and second["rates"]["stream"] == 0.0
    assert set(second["rates"]) == {"stream", "pending", "lag", "delayed", "dead"}


def test_stats_watch_shows_done_per_second_and_what_each_worker_holds(capsys, url, queue,
                                                                       client):
    """The dashboard's figures in a terminal: done/s, and in flight per worker with idle."""
    keys = QueueKeys(queue)
    for n in range(3):
        cli(capsys, "--redis-url", url, "--queue", queue, "enqueue", "add", n, n)
    client.xgroup_create(keys.stream, keys.group, id="0")
    [[_, [(held, _)]]] = client.xreadgroup(keys.group, "w1", {keys.stream: ">"}, count=1)
    client.xack(keys.stream, keys.group, held)  # one job settled, as a worker does
    client.xdel(keys.stream, held)
    client.xreadgroup(keys.group, "w1", {keys.stream: ">"}, count=1)  # one held by w1
    code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue,
                       "stats", "--watch", "--count", "2", "--interval", "0.05")
    first, second = ([line.split() for line in block.splitlines()]
                     for block in out.strip().split("\n\n"))
    assert code == 0
    assert ["done/s", "-"] in first  # no interval yet
    assert any(line[:2] == ["done/s", "0.0"] for line in second)
    assert any(line[:3] == ["in_flight", "w1", "1,"] for line in second)
    code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue,
                       "stats", "--watch", "--json", "--count", "2", "--interval", "0.05")
    first, second = (json.loads(line) for line in out.splitlines())
    assert (first["done"], first["done_per_s"]) == (None, None)
    assert second["done"] == 0 and second["done_per_s"] == 0.0
    assert second["in_flight"] == {"w1": 1} and set(second["idle_s"]) == {"w1"}
    assert (second["stream"], second["pending"], second["stale"]) == (2, 1, 0)


def _figures(lines: list[str]) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in lines[2:]}  # past the time, queue


def test_stats_watch_redraws_in_place_on_a_terminal(capsys, monkeypatch, url, queue):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue,
                       "stats", "--watch", "--count", "3", "--interval", "0.05")
    assert code == 0
    clear = "\x1b[H\x1b[2J"
    assert out.startswith(clear) and out.count(clear) == 3
    assert all("stream     0" in block for block in out.split(clear)[1:])


class WatchProcess:
    """``stats --watch --json`` as a process; its stdout samples and stderr lines, queued."""

    def __init__(self, url: str, queue: str) -> None:
        import queue as queues
        env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}
        env.pop("REDIS_URL", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "course_lib.distributed", "--redis-url", url, "--queue",
             queue, "stats", "--watch", "--json", "--interval", "0.1"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
        )  # fmt: skip
        self.samples: queues.Queue[dict] = queues.Queue()
        self.errors: queues.Queue[str] = queues.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.samples, json.loads),
                             daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors, str.rstrip),
                             daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, into, parse) -> None:
        for line in stream:
            into.put(parse(line))

    def sample_where(self, check, timeout_s: float = 30.0) -> dict:
        """The first next sample for which ``check`` is true (a hang guard, not a bound)."""
        deadline = time.monotonic() + timeout_s
        while True:
            sample = self.samples.get(timeout=max(0.0, deadline - time.monotonic()))
            if check(sample):
                return sample

    def stderr_line(self, text: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.errors.get(timeout=max(0.0, deadline - time.monotonic()))
            assert "Traceback" not in line
            if text in line:
                return line

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        for reader in self._readers:
            reader.join(timeout=5)
        rest = []
        while not self.errors.empty():
            rest.append(self.errors.get())
        return code, "\n".join(rest)

    def __enter__(self) -> WatchProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.mark.parametrize(("sig", "code", "says"), [(signal.SIGTERM, 0, "stop requested"),
                                                   (signal.SIGINT, 130, "interrupted")],
                         ids=["SIGTERM", "SIGINT"])
def test_stats_watch_follows_changes_until_a_signal(capsys, sig, code, says, queue):
    with serve_fake_tcp() as server, WatchProcess(server.url, queue) as watch:
        watch.sample_where(lambda s: s["stream"] == 0)
        for n in range(2):
            cli(capsys, "--redis-url", server.url, "--queue", queue, "enqueue", "add", n, n)
        # The sample that first sees them says the stream grew since the one before.
        grown = watch.sample_where(lambda s: s["stream"] == 2)
        assert grown["rates"]["stream"] > 0 and grown["rates"]["dead"] == 0
        steady = watch.sample_where(lambda s: s["rates"]["stream"] == 0)
        assert steady["stream"] == 2
        exit_code, err = watch.stop(sig)
    assert exit_code == code and says in err and "Traceback" not in err


def test_stats_watch_keeps_trying_while_redis_is_gone(queue):
    server = serve_fake_tcp()
    try:
        with WatchProcess(server.url, queue) as watch:
            watch.sample_where(lambda s: s["stream"] == 0)
            server.stop()
            # One line per failed sample, the URL in it; no traceback, no exit.
            first = watch.stderr_line(f"Redis at {server.url}")
            watch.stderr_line(f"Redis at {server.url}")
            assert watch.proc.poll() is None
            exit_code, err = watch.stop(signal.SIGTERM)
        assert exit_code == 0 and "Traceback" not in err
        assert "Error" in first and len(first.splitlines()) == 1
    finally:
        server.stop()


def _bury(client, queue: str) -> tuple[str, str]:
    """Two dead letters as a worker writes them: a dead job, and an entry that was no job."""
    keys = QueueKeys(queue)
    job = Job("boom", ["secret-arg"], id="d-1", max_attempts=1)
    client.hset(keys.job("d-1"), mapping={"status": "dead", "task": "boom", "attempt": "1",
                                          "error": "boom", "error_type": "ValueError"})
    letter = {"reason": "gave up after 1 attempt(s)", "error_type": "ValueError",
              "error": "boom", "origin_id": "1-0", "worker": "w", "dead_at": repr(time.time())}
    dead = client.xadd(keys.dead, letter | {"job": job.encode()}).decode()
    junk = client.xadd(keys.dead, letter | {"reason": "invalid job: not JSON",
                                            "job": b"{oops"}).decode()
    return dead, junk


def test_dead_list_shows_each_letter_on_one_line_without_arguments(capsys, url, queue, client):
    code, out, err = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "list")
    assert (code, out) == (0, "") and "no dead letters" in err
    dead, junk = _bury(client, queue)
    code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "list")
    first, second = out.splitlines()
    assert code == 0
    assert first.startswith(dead) and "boom(id=d-1) 1/1" in first
    assert "gave up after 1 attempt(s); ValueError: boom" in first
    assert second.startswith(junk) and "(not a job)" in second
    assert "secret-arg" not in out
    code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "list", "--json",
                       "--count", 1)
    [letter] = json.loads(out)
    assert letter["entry_id"] == dead and Job.decode(letter["job"]).args == ("secret-arg",)


def test_dead_list_json_escapes_field_names_that_are_not_utf8(capsys, url, queue, client):
    """An entry's field name that is not UTF-8 is kept as bytes; --json prints it escaped."""
    keys = QueueKeys(queue)
    client.xadd(keys.dead, {"reason": "invalid job: no job field", "origin_id": "1-0",
                            "worker": "w", "dead_at": repr(time.time()), b"\xff\xfe": b"v1"})
    code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "list", "--json")
    [letter] = json.loads(out)
    assert code == 0 and letter["extra"] == {"\\xff\\xfe": "v1"}


def test_dead_requeue_puts_jobs_back_and_exits_1_for_refused_ones(capsys, url, queue, client):
    keys = QueueKeys(queue)
    dead, junk = _bury(client, queue)
    code, out, err = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "requeue", dead)
    assert (code, out) == (0, f"{dead} requeued: job d-1\n")
    assert client.hget(keys.job("d-1"), "status") == b"queued"
    assert Job.decode(client.xrange(keys.stream)[0][1][b"job"]).attempt == 1
    # Again: it is gone from the dead letters, so it is refused, and not queued twice.
    code, out, err = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "requeue", dead)
    assert code == 1 and "not in the dead-letter stream" in err and client.xlen(keys.stream) == 1
    code, out, err = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "requeue", "--all")
    assert (code, out) == (1, "") and f"{junk} refused: invalid job: not JSON" in err
    assert "requeued 0, refused 1" in err
    assert [e.decode() for e, _ in client.xrange(keys.dead)] == [junk]  # still there
    code, _, err = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "requeue")
    assert code == 2 and "ENTRY_IDs or --all" in err


def test_dead_requeue_all_pages_through_many_letters(capsys, url, queue, client):
    keys = QueueKeys(queue)
    with client.pipeline(transaction=False) as pipe:
        for n in range(620):  # over one page of ids (500) and several of requeues (100)
            job = Job("add", [n, n], id=f"m-{n}")
            pipe.xadd(keys.dead, {"reason": "test", "job": job.encode()})
        pipe.execute()
    code, out, err = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "requeue", "--all")
    assert code == 0 and "requeued 620, refused 0" in err and len(out.splitlines()) == 620
    assert (client.xlen(keys.stream), client.xlen(keys.dead)) == (620, 0)


# --- usage errors: exit 2, one line, no traceback --------------------------------------------


def test_help_lists_the_exit_codes(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "exit codes:" in out and "3    Redis unreachable" in out
    code, out, _ = cli(capsys, "worker", "--help")
    assert code == 0 and "exit codes:" in out and "--app MODULE:ATTR" in out


def _broken_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "_cli_broken_app.py").write_text("registry = 1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "_cli_broken_app:registry"


@pytest.mark.parametrize(("app", "says"), [
    ("_cli_app", "must be MODULE:ATTR"),
    ("_cli_app:", "must be MODULE:ATTR"),
    ("no_such_module_here:registry", "no module named 'no_such_module_here'"),
    ("_cli_app:missing", "has no attribute 'missing'"),
    ("_cli_app:not_a_registry", "is dict, not a TaskRegistry"),
    ("_cli_app:empty", "registers no task"),
    ("broken", "importing '_cli_broken_app' failed: ZeroDivisionError: division by zero"),
])  # fmt: skip
def test_a_bad_app_exits_2_with_one_line(capsys, tmp_path, monkeypatch, app, says):
    if app == "broken":
        app = _broken_module(tmp_path, monkeypatch)
    url = f"redis://127.0.0.1:{closed_port()}/0"  # never reached: the app is checked first
    code, out, err = cli(capsys, "--redis-url", url, "worker", "--app", app)
    assert (code, out) == (2, "")
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(("argv", "says"), [
    (["stats"], "no Redis URL: pass --redis-url or set REDIS_URL"),
    (["--redis-url", "redis://127.0.0.1:1/0", "--queue", "a:b", "stats"], "queue name"),
    (["--redis-url", "redis://user:s3cret@host:port/0", "stats"], "malformed Redis URL"),
    (["--redis-url", "redis://127.0.0.1:1/0", "enqueue", "9bad"], "field 'task'"),
    (["--redis-url", "redis://127.0.0.1:1/0", "enqueue", "add", "1", "--args", "[1]"],
     "not both"),
    (["--redis-url", "redis://127.0.0.1:1/0", "enqueue", "add", "--kwargs", "[1]"],
     "must be a JSON object"),
    (["--redis-url", "redis://127.0.0.1:1/0", "enqueue", "nope", "--app", APP],
     "no task 'nope'"),
    (["--redis-url", "redis://127.0.0.1:1/0", "worker", "--app", APP, "--block", "5",
      "--visibility-timeout", "5"], "--block (5.0) must be below"),
    (["--redis-url", "redis://127.0.0.1:1/0", "worker", "--app", APP, "--concurrency", "0"],
     "must be > 0"),
    (["--redis-url", "redis://127.0.0.1:1/0"], "required"),
    (["--redis-url", "redis://127.0.0.1:1/0", "stats", "--count", "2"],
     "--interval and --count go with --watch"),
    (["--redis-url", "redis://127.0.0.1:1/0", "stats", "--watch", "--interval", "0"],
     "must be > 0"),
    (["--redis-url", "redis://127.0.0.1:1/0", "worker", "--app", APP, "--metrics-port",
      "70000"], "must be 0 to 65535"),
])  # fmt: skip
def test_usage_errors_exit_2(capsys, argv, says):
    code, out, err = cli(capsys, *argv)
    assert (code, out) == (2, "")
    assert says in err and "Traceback" not in err and "s3cret" not in err


# --- Redis unreachable: exit 3, the URL masked -----------------------------------------------


@pytest.mark.parametrize("command", [
    ["stats"],
    ["enqueue", "add", "1", "2", "--wait"],
    ["dead", "list"],
    ["dead", "requeue", "--all"],
    ["worker", "--app", APP],
])  # fmt: skip
def test_unreachable_redis_exits_3_and_never_shows_the_password(capsys, command):
    port = closed_port()
    code, out, err = cli(capsys, "--redis-url", f"redis://user:s3cret@127.0.0.1:{port}/0",
                         "-v", *command)
    assert code == 3
    assert f"redis://user:***@127.0.0.1:{port}/0" in err
    assert "s3cret" not in out + err and "Traceback" not in err


# --- the worker, as a process ------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_worker_process_runs_jobs_and_stops_gracefully(capsys, redis_server, queue, sig):
    url = redis_server.url
    with WorkerProcess(url, queue, "--name", "w1", "--concurrency", "2") as worker:
        worker.wait_for("worker w1 ready")
        code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue,
                           "enqueue", "add", "2", "3", "--job-id", "sum", "--wait", "20")
        assert (code, out) == (0, "sum\n5\n")
        code, out, err = cli(capsys, "--redis-url", url, "--queue", queue, "enqueue", "boom",
                             "oh no", "--app", APP, "--job-id", "b", "--wait", "20")
        assert code == 1 and "job b (boom) dead" in err and "ValueError: oh no" in err
        code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue,
                           "enqueue", "slow", "1.5", "--job-id", "long")
        assert code == 0
        running = worker.wait_for("→ slow(id=long) 1/3")
        worker.proc.send_signal(sig)
        assert worker.exit_code() == 0
    lines = worker.lines
    stop = worker.wait_for(f"stop requested ({sig.name})")
    finished = worker.wait_for("← slow(id=long) ok")
    assert running < stop < finished  # stopped while the job ran, which then finished
    assert worker.wait_for("worker w1 stopped") > finished
    assert not any("handed back" in line or "Traceback" in line for line in lines)
    assert worker.wait_for("← add(id=sum) ok") < stop
    client = redis_sync.Redis.from_url(url)
    try:
        record = client.hgetall(QueueKeys(queue).job("long"))
        assert record[b"status"] == JobStatus.DONE.value.encode()
        assert json.loads(record[b"result"]) == "slept 1.5"
    finally:
        client.close()


def test_ctrl_c_while_waiting_for_a_result_exits_130(redis_server, queue):
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}
    env.pop("REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "course_lib.distributed", "--redis-url", redis_server.url,
         "--queue", queue, "enqueue", "add", "1", "2", "--job-id", "never", "--wait"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        # The id comes first, once the job is enqueued: the wait has begun (no worker runs).
        ids: list[str] = []
        reader = threading.Thread(target=lambda: ids.append(proc.stdout.readline()))
        reader.start()
        reader.join(timeout=30)
        assert ids == ["never\n"]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err


# --- worker --aiomonitor-port ------------------------------------------------------------------


TTYPE_SEND = b"\xff\xfa\x18\x01\xff\xf0"  # telnet: IAC SB TERMINAL-TYPE SEND IAC SE


def _read_until(sock: socket.socket, end: bytes) -> bytes:
    """What ``sock`` sends until it has sent ``end`` (``b"(closed)"``: until it closes)."""
    said = b""
    while end not in said and len(said) < 65536:
        said += sock.recv(65536) or b"(closed)"
        if said.endswith(b"(closed)"):
            break
    return said


def test_a_worker_with_aiomonitor_port_says_where_it_listens_and_closes_it(queue):
    pytest.importorskip("aiomonitor", reason="aiomonitor not installed (optional)")
    import urllib.request

    with serve_fake_tcp() as server, WorkerProcess(server.url, queue, "--name", "m1",
                                                   "--aiomonitor-port", "0") as worker:
        said = worker.lines[worker.wait_for("worker m1 aiomonitor on telnet://127.0.0.1:")]
        assert worker.wait_for("worker m1 ready") > worker.wait_for("aiomonitor on")
        telnet_port, web_url = re.search(r"telnet://127\.0\.0\.1:(\d+) and (http://\S+)",
                                         said).groups()
        with urllib.request.urlopen(web_url + "/api/version", timeout=10) as reply:
            assert "value" in json.load(reply)  # aiomonitor's web UI answers
        with socket.create_connection(("127.0.0.1", int(telnet_port)), timeout=10) as telnet:
            # Its terminal UI: it asks for our terminal type, prompts, and ends on "exit".
            # (A client that leaves mid-negotiation makes prompt_toolkit print a traceback.)
            said = _read_until(telnet, TTYPE_SEND)
            telnet.sendall(b"\xff\xfa\x18\x00VT100\xff\xf0")  # IAC SB TTYPE IS VT100 IAC SE
            said += _read_until(telnet, b"monitor >>> ")
            assert b"Asyncio Monitor: " in said and b"tasks running" in said, said
            telnet.sendall(b"exit\r")
            _read_until(telnet, b"(closed)")
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.exit_code() == 0
    for port in (int(telnet_port), int(web_url.rsplit(":", 1)[1])):
        with pytest.raises(ConnectionRefusedError), socket.socket() as sock:
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))  # closed with the worker
    assert not any("Traceback" in line for line in worker.lines), "\n".join(worker.lines)


@pytest.mark.parametrize("case", ["taken", "65535", "not installed"])
def test_aiomonitor_port_usage_errors_exit_2_in_one_line(capsys, monkeypatch, case):
    if case == "not installed":
        monkeypatch.setitem(sys.modules, "aiomonitor", None)  # import aiomonitor fails
    else:
        pytest.importorskip("aiomonitor", reason="aiomonitor not installed (optional)")
    with serve_fake_tcp() as server, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = {"taken": taken.getsockname()[1], "65535": 65535}.get(case, 0)
        code, out, err = cli(capsys, "--redis-url", server.url, "worker", "--app", APP,
                             "--aiomonitor-port", port)
    assert (code, out) == (2, "")
    says = {"taken": f"--aiomonitor-port {port}: cannot listen on 127.0.0.1:{port}",
            "65535": "the web UI needs PORT+1",
            "not installed": "--aiomonitor-port needs aiomonitor: pip install aiomonitor"}
    assert says[case] in err
    assert len(err.splitlines()) == 1  # that line only: no traceback, the worker never started


# --- edges: options and URLs that cannot work, exit 2 ----------------------------------------


@pytest.mark.parametrize(("argv", "says"), [
    (["worker", "--app", APP, "--visibility-timeout", "inf"],
     "--visibility-timeout must be a finite number"),
    (["worker", "--app", APP, "--block", "inf", "--visibility-timeout", "inf"],
     "--visibility-timeout must be a finite number"),
    (["enqueue", "add", "1", "2", "--job-id", ""], "field 'id' must be 1-200"),
    (["dead", "requeue", "--all", "--app", "nope:registry"], "no module named 'nope'"),
])  # fmt: skip
def test_options_that_cannot_work_exit_2_in_one_line(capsys, url, argv, says):
    code, out, err = cli(capsys, "--redis-url", url, *argv)
    assert (code, out) == (2, "")
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(("redis_url", "says"), [
    ("redis://:pa#ss@127.0.0.1:6379/0", "must be percent-encoded"),
    ("redis://user:pa?ss@127.0.0.1:6379/0", "must be percent-encoded"),
    ("redis://127.0.0.1:6379/0?protocol=9", "protocol must be 2 or 3"),
])  # fmt: skip
def test_urls_that_cannot_work_exit_2_with_what_to_change(capsys, redis_url, says):
    code, out, err = cli(capsys, "--redis-url", redis_url, "stats")
    assert (code, out) == (2, "")
    assert says in err and "pa#ss" not in err and "pa?ss" not in err
    assert "port must be a number" not in err and "Traceback" not in err


# --- what Redis holds, printed safely --------------------------------------------------------


def test_dead_list_escapes_control_characters(capsys, url, queue, client):
    """A dead letter holds what was enqueued or raised: an escape sequence in it must not
    reach the terminal (it could recolour, retitle or rewrite the screen)."""
    keys = QueueKeys(queue)
    job = Job("boom", [], id="esc-1", max_attempts=1)
    client.xadd(keys.dead, {"reason": "gave up\x1b]0;pwned\x07", "error_type": "ValueError",
                            "error": "\x1b[2J\x1b[31mred\u202egnp.exe", "origin_id": "1-0",
                            "worker": "w", "dead_at": repr(time.time()), "job": job.encode()})
    code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "list")
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "gave up\\x1b]0;pwned\\x07" in out and "\\x1b[31mred\\u202egnp.exe" in out
    code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "list", "--json")
    [letter] = json.loads(out)
    assert letter["error"] == "\x1b[2J\x1b[31mred\u202egnp.exe"  # data, as it was


def test_stats_counts_stale_consumers_apart(capsys, url, queue, client):
    """A consumer idle longer than --stale-after (a killed worker's) is counted apart."""
    keys = QueueKeys(queue)
    client.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    client.xgroup_createconsumer(keys.stream, keys.group, "killed")
    time.sleep(0.3)  # idle 300 ms, over the 0.2 s asked for below
    client.xgroup_createconsumer(keys.stream, keys.group, "alive")
    code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue, "stats", "--json",
                       "--stale-after", "0.2")
    counts = json.loads(out)
    assert code == 0 and (counts["consumers"], counts["stale"]) == (2, 1)
    code, out, _ = cli(capsys, "--redis-url", url, "--queue", queue, "stats")
    assert code == 0 and "stale      0" in out.splitlines()  # default: idle over 30 s


# --- dead requeue: with --app, refused as the library refuses --------------------------------


def test_dead_requeue_with_app_refuses_tasks_it_does_not_register(capsys, url, queue, client):
    keys = QueueKeys(queue)
    known = Job("add", [1, 2], id="k-1")
    unknown = Job("gone_task", [], id="u-1")
    for job in (known, unknown):
        client.xadd(keys.dead, {"reason": "test", "job": job.encode()})
    code, out, err = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "requeue",
                         "--all", "--app", APP)
    assert code == 1
    assert out.endswith("requeued: job k-1\n") and len(out.splitlines()) == 1
    assert "unknown task 'gone_task'" in err and "requeued 1, refused 1" in err
    assert [Job.decode(f[b"job"]).id for _, f in client.xrange(keys.stream)] == ["k-1"]
    assert client.xlen(keys.dead) == 1  # still there, for a worker that knows it
    # Without --app it cannot check, and says so.
    code, out, err = cli(capsys, "--redis-url", url, "--queue", queue, "dead", "requeue",
                         "--all")
    assert code == 0 and "requeued: job u-1" in out and "no --app" in err
