"""Worker flags (``--max-dead-letters``, ``--idle-consumer-s``, ``--read-ahead``, ``--loop``)
reach the Worker, or exit 2.

The flags' values are checked before any Redis is needed (exit 2, one error line);
the values reach the Worker's keyword arguments; ``--loop uvloop`` really runs the
worker on uvloop's loop (a task reports the class of the loop it runs on), and a
crashed worker's consumer really goes after ``--idle-consumer-s`` (a real worker
process on the session's real server).
"""

from __future__ import annotations

import sys
import time
import uuid

import pytest
import redis as redis_sync
from _cli_support import APP, WorkerProcess

from course_lib.distributed import QueueKeys
from course_lib.distributed.cli import main
from course_lib.redis import serve_fake_tcp


@pytest.fixture
def queue() -> str:
    return f"flags-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _no_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)


def cli(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


class _Made(Exception):
    """Raised by the stand-in Worker once it has seen its arguments."""


@pytest.mark.parametrize(("flags", "expected"), [
    ([], {"max_dead_letters": 10_000, "idle_consumer_s": None, "read_ahead": None}),
    (["--read-ahead", "0"], {"read_ahead": 0}),
    (["--read-ahead", "25"], {"read_ahead": 25}),
    (["--max-dead-letters", "7", "--idle-consumer-s", "90"],
     {"max_dead_letters": 7, "idle_consumer_s": 90.0}),
    (["--max-dead-letters", "all", "--idle-consumer-s", "0.5"],
     {"max_dead_letters": None, "idle_consumer_s": 0.5}),
])  # fmt: skip
def test_worker_flags_reach_the_worker_as_its_keyword_arguments(capsys, monkeypatch, flags,
                                                                 expected):
    from course_lib.distributed import cli_worker  # where the CLI makes its Worker

    seen: dict[str, object] = {}

    def worker(*args: object, **kwargs: object) -> None:
        seen.update(kwargs)
        raise _Made

    monkeypatch.setattr(cli_worker, "Worker", worker)
    with serve_fake_tcp() as server, pytest.raises(_Made):
        cli(capsys, "--redis-url", server.url, "worker", "--app", APP, *flags)
    assert {name: seen[name] for name in expected} == expected


@pytest.mark.parametrize(("flags", "says"), [
    (["--max-dead-letters", "0"], "must be > 0 (or 'all'), not 0"),
    (["--max-dead-letters", "many"], "not a whole number nor 'all': 'many'"),
    (["--max-dead-letters", "2.5"], "not a whole number nor 'all'"),
    (["--idle-consumer-s", "0"], "must be > 0, not 0"),
    (["--idle-consumer-s", "nan"], "must be > 0, not nan"),
    (["--idle-consumer-s", "inf"], "--idle-consumer-s must be a finite number of seconds"),
    (["--loop", "trio"], "invalid choice: 'trio'"),
    (["--read-ahead", "-1"], "must be >= 0, not -1"),
    (["--read-ahead", "some"], "not a whole number: 'some'"),
])  # fmt: skip
def test_bad_worker_flags_exit_2_with_one_error_line(capsys, flags, says):
    url = "redis://127.0.0.1:1/0"  # never reached: the flags are checked first
    code, out, err = cli(capsys, "--redis-url", url, "worker", "--app", APP, *flags)
    assert (code, out) == (2, "")
    assert says in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if "error:" in line]) == 1, err


def test_loop_uvloop_without_uvloop_exits_2_with_a_hint(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop fails
    code, out, err = cli(capsys, "--redis-url", "redis://127.0.0.1:1/0", "worker",
                         "--app", APP, "--loop", "uvloop")
    assert (code, out) == (2, "")
    assert "--loop uvloop needs uvloop: pip install uvloop" in err
    assert len(err.splitlines()) == 1  # that line only: no traceback, no Redis tried


@pytest.mark.real_redis
@pytest.mark.parametrize(("loop", "runs_on"), [("uvloop", "uvloop."), ("asyncio", "asyncio.")])
def test_a_worker_runs_its_jobs_on_the_loop_it_is_told(capsys, redis_server, queue, loop,
                                                       runs_on):
    pytest.importorskip("uvloop", reason="uvloop not installed (the dev extra has it)")
    url = redis_server.url
    with WorkerProcess(url, queue, "--name", f"l-{loop}", "--loop", loop) as worker:
        worker.wait_for(f"worker l-{loop} ready")
        code, out, err = cli(capsys, "--redis-url", url, "--queue", queue,
                             "enqueue", "loop_class", "--job-id", "which", "--wait", "30")
        worker.proc.terminate()
        assert worker.exit_code() == 0
    assert code == 0, err
    assert out.splitlines()[0] == "which"
    assert out.splitlines()[1].strip('"').startswith(runs_on), out


@pytest.mark.real_redis
def test_idle_consumer_s_deletes_a_crashed_workers_consumer(redis_server, queue):
    """A consumer that holds nothing and is idle longer than --idle-consumer-s (a worker
    killed with SIGKILL leaves one) is deleted by a live worker's maintenance."""
    keys = QueueKeys(queue)
    client = redis_sync.Redis.from_url(redis_server.url)
    try:
        client.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
        client.xgroup_createconsumer(keys.stream, keys.group, "ghost")
        with WorkerProcess(redis_server.url, queue, "--name", "live",
                           "--idle-consumer-s", "0.5") as worker:
            worker.wait_for("worker live ready")
            names: set[str] = {"ghost"}
            deadline = time.monotonic() + 60  # a hang guard, not a measure
            while "ghost" in names and time.monotonic() < deadline:
                time.sleep(0.1)
                names = {c["name"].decode() for c in
                         client.xinfo_consumers(keys.stream, keys.group)}
            worker.proc.terminate()
            assert worker.exit_code() == 0
        assert "ghost" not in names, names
        assert any("consumer ghost left the group" in line for line in worker.lines), worker.lines
    finally:
        client.close()
