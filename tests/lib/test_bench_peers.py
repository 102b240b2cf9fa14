"""`make bench-peers` without the peers: job modules on stub libraries, the rounds on a fake runner.

Nothing is installed or started here: arq, SAQ, Celery and RQ are stand-in modules,
the counter is a recording fake, and queue_peers.run_rounds() is driven by a
runner that makes up its numbers.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
PEERS = BENCH / "peers"


PEER_MODULES = ("_jobs", "_drive", "arq_jobs", "saq_jobs", "celery_jobs", "rq_jobs",
                "course_jobs", "queue_peers")


@pytest.fixture
def peers_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.syspath_prepend(str(PEERS))
    monkeypatch.setenv("PEERS_REDIS_URL", "redis://127.0.0.1:1/0")
    yield
    for name in PEER_MODULES:  # some were imported against stub libraries: forget them
        sys.modules.pop(name, None)


class _Counter:
    """Stands in for a redis client: records INCRs, sync or async."""

    def __init__(self) -> None:
        self.incrs: list[str] = []

    def incr(self, key: str) -> int:
        self.incrs.append(key)
        return len(self.incrs)


class _AsyncCounter(_Counter):
    async def incr(self, key: str) -> int:  # type: ignore[override]
        return super().incr(key)


def _fresh(name: str) -> types.ModuleType:
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_sync_jobs_count_once_and_io_blocks_for_10ms(peers_path: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = _fresh("_jobs")
    slept: list[float] = []
    monkeypatch.setattr(jobs.time, "sleep", slept.append)
    client = _Counter()
    jobs.noop_sync(client)
    jobs.io_sync(client)
    assert client.incrs == [jobs.COUNTER, jobs.COUNTER]
    assert slept == [0.01]


def test_async_io_job_awaits_asyncio_sleep_not_time_sleep(peers_path: None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = _fresh("_jobs")
    awaited: list[float] = []

    async def fake_sleep(s: float) -> None:
        awaited.append(s)

    monkeypatch.setattr(jobs.asyncio, "sleep", fake_sleep)
    monkeypatch.setattr(jobs.time, "sleep", lambda s: pytest.fail("time.sleep in an async job"))
    client = _AsyncCounter()

    async def both() -> None:
        await jobs.noop_async(client)
        await jobs.io_async(client)

    asyncio.run(both())
    assert client.incrs == [jobs.COUNTER, jobs.COUNTER] and awaited == [0.01]


def test_redis_url_says_who_sets_it(peers_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEERS_REDIS_URL")
    with pytest.raises(RuntimeError, match=r"queue_peers\.py sets it"):
        _fresh("_jobs").redis_url()


def _stub_libraries(monkeypatch: pytest.MonkeyPatch) -> None:
    """arq, saq, celery and rq, as much of each as the job modules touch at import."""

    class RedisSettings:
        @classmethod
        def from_dsn(cls, dsn: str) -> str:
            return dsn

    class SaqQueue:
        @classmethod
        def from_url(cls, url: str, **kw: object) -> tuple:
            return (url, kw)

    class Celery:
        def __init__(self, main: str, broker: str) -> None:
            self.broker, self.tasks, self.conf = broker, {}, types.SimpleNamespace(
                update=lambda **kw: None)

        def task(self, name: str):
            def register(fn):
                self.tasks[name] = fn
                return fn
            return register

    mods = {"arq": {"create_pool": None}, "arq.connections": {"RedisSettings": RedisSettings},
            "saq": {"Queue": SaqQueue}, "celery": {"Celery": Celery},
            "rq": {"get_current_job": lambda: None}}
    for name, attrs in mods.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, module)


def test_peer_job_modules_expose_what_each_cli_loads(peers_path: None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _stub_libraries(monkeypatch)
    monkeypatch.setenv("PEERS_CONCURRENCY", "100")
    arq_jobs, saq_jobs = _fresh("arq_jobs"), _fresh("saq_jobs")
    celery_jobs, rq_jobs, course_jobs = _fresh("celery_jobs"), _fresh("rq_jobs"), \
        _fresh("course_jobs")

    ws = arq_jobs.WorkerSettings
    assert [f.__name__ for f in ws.functions] == ["noop", "io"] and ws.max_jobs == 100
    assert ws.redis_settings == "redis://127.0.0.1:1/0"
    assert [f.__name__ for f in saq_jobs.settings["functions"]] == ["noop", "io"]
    assert saq_jobs.settings["concurrency"] == 100
    assert sorted(celery_jobs.app.tasks) == ["io", "noop"]
    assert "'io'" in repr(course_jobs.registry) and "'noop'" in repr(course_jobs.registry)
    for module in (arq_jobs, saq_jobs, celery_jobs, rq_jobs, course_jobs):
        assert callable(module.enqueuer), module.__name__


def test_rq_job_counts_on_the_fallback_client_outside_a_worker(
        peers_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _stub_libraries(monkeypatch)
    rq_jobs = _fresh("rq_jobs")
    client = _Counter()
    monkeypatch.setattr(rq_jobs._jobs, "sync_client", lambda: client)
    rq_jobs.noop()
    assert client.incrs == [rq_jobs._jobs.COUNTER]


def test_every_peer_is_pinned_and_listed_in_the_makefile() -> None:
    peers = re.search(r"^PEERS\s*:=\s*(.+)$", (ROOT / "Makefile").read_text(), re.M)[1].split()
    assert sorted(peers) == sorted(p.stem.removeprefix("requirements-")
                                   for p in PEERS.glob("requirements-*.txt"))
    for peer in peers:
        lines = [x.strip() for x in (PEERS / f"requirements-{peer}.txt").read_text().splitlines()
                 if x.strip() and not x.startswith("#")]
        assert lines and all(re.fullmatch(r"[\w.\[\]-]+==[\w.]+", x) for x in lines), lines


# --- queue_peers.py: arguments, commands, rounds and the result's shape ------------------


def test_arguments_default_quick_and_only(peers_path: None) -> None:
    qp = _fresh("queue_peers")
    full = qp.parse_args([])
    assert (full.jobs, full.io_jobs, full.rounds, full.quick) == (10_000, 1000, 4, False)
    quick = qp.parse_args(["--quick", "--rounds", "3"])
    assert (quick.jobs, quick.io_jobs, quick.rounds) == (1000, 200, 3)
    only = qp.parse_args(["--only", "course, rq"])
    assert [v["name"] for v in only.variants] == [
        "course worker c=10", "course worker c=100", "RQ (fork per job)"]
    with pytest.raises(SystemExit):
        qp.parse_args(["--only", "nothing-like-it"])


def test_render_rewrites_the_md_from_stored_json(peers_path: None, tmp_path: Path) -> None:
    qp = _fresh("queue_peers")
    args = qp.parse_args(["--quick", "--only", "course"])
    payload = qp.measure(args, _FakeRunner(), log=lambda line: None)
    for row in payload["consumers"].values():  # as a JSON from before the ratio existed
        for w in ("noop", "io"):
            row.get(w, {}).pop("ratio_to_course_worker_c=10", None)
    stored = {"when": "2026-12-03T10:00:00", "git": "abc1234", "server": {"redis_version": "7"},
              "machine": {"cpus": 2, "platform": "Linux", "python": "3.11.7"}, **payload}
    path = tmp_path / "queue_peers.json"
    path.write_text(qp.json.dumps(stored))
    assert qp.main(["--render", "--json", str(path)]) == 0
    md = path.with_suffix(".md").read_text()
    assert "| course worker c=100 | 100 | 100,000 (100,000-100,000) | 10.00 | 10.00 |" in md
    assert "ratio_to_course_worker_c=10" in path.read_text()


def test_worker_commands_are_filled_in(peers_path: None) -> None:
    qp = _fresh("queue_peers")
    for v in qp.VARIANTS:
        cmd = qp.worker_command(v, "redis://127.0.0.1:7/0")
        assert not any("{" in part for part in cmd), cmd
        assert str(v["concurrency"]) in cmd or v["peer"] in ("arq", "saq") or \
            v["concurrency"] == 1  # arq/SAQ read $PEERS_CONCURRENCY; solo and RQ run one


class _FakeRunner:
    """Bare loop at 10,000 jobs/s; a consumer at 1,000 x its concurrency, halved for I/O."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def versions(self, peer: str) -> dict:
        return {peer: "1.0"}

    def run_bare(self, jobs: int) -> dict:
        self.order.append("bare Streams loop")
        return {"seconds": jobs / 10_000, "jobs_per_s": 10_000.0, "enqueue_s": 0.1,
                "worker_cpu_s": 0.2, "server_cpu_s": 0.05, "done": jobs}

    def run_consumer(self, variant: dict, jobs: dict[str, int]) -> dict:
        self.order.append(variant["name"])
        rate = 1000.0 * variant["concurrency"]
        return {w: {"seconds": n / (rate if w == "noop" else rate / 2),
                    "jobs_per_s": rate if w == "noop" else rate / 2, "enqueue_s": 0.5,
                    "enqueue_cpu_s": 0.1, "worker_cpu_s": None if w == "io" else 1.0,
                    "server_cpu_s": 0.1, "done": n, "timed_out": False}
                for w, n in jobs.items()}


def test_rounds_rotate_and_ratios_come_from_the_same_round(peers_path: None) -> None:
    qp = _fresh("queue_peers")
    args = qp.parse_args(["--quick", "--rounds", "3", "--only", "course,SAQ"])
    runner = _FakeRunner()
    payload = qp.measure(args, runner, log=lambda line: None)
    names = [qp.BARE, "course worker c=10", "course worker c=100", "SAQ c=10"]
    assert runner.order == names + names[1:] + names[:1] + names[2:] + names[:2]
    assert set(payload) >= {"jobs", "io_jobs", "rounds", "versions", "commands", "load_before",
                            "load_after", "seconds", "consumers"}
    assert payload["versions"] == {"course": {"course": "1.0"}, "saq": {"saq": "1.0"}}
    rows = payload["consumers"]
    assert list(rows) == names
    c10 = rows["course worker c=10"]
    assert c10["noop"]["jobs_per_s"]["median"] == 10_000
    assert c10["noop"]["ratio_to_bare"]["samples"] == [1.0, 1.0, 1.0]
    assert c10["io"]["ratio_to_bare"]["median"] == 0.5
    assert c10["io"]["ceiling_jobs_per_s"] == 1000.0
    assert c10["noop"]["worker_cpu_us_per_job"]["median"] == 1e6 / 1000
    assert c10["io"]["worker_cpu_us_per_job"] is None  # not measurable: reported, not guessed
    assert rows["course worker c=100"]["io"]["ratio_to_course_worker_c=10"]["median"] == 10
    assert rows["SAQ c=10"]["noop"]["ratio_to_course_worker_c=10"]["samples"] == [1.0] * 3
    assert "io" not in rows[qp.BARE]
    table = qp.report(payload).splitlines()
    assert len(table) == 2 + len(names) and table[3].startswith("| course worker c=10 | 10 |")
