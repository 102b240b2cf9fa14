"""`make bench-peers` without the peers: job modules on stub libraries, the rounds on a fake runner.

Nothing is installed or started here: arq, SAQ, Celery and RQ are stand-in modules,
the counter is a recording fake, and queue_peers.run_rounds() is driven by a
runner that makes up its numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import re
import sys
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
PEERS = BENCH / "peers"


PEER_MODULES = ("_jobs", "_drive", "_live", "_markdown", "arq_jobs", "saq_jobs", "celery_jobs",
                "rq_jobs", "course_jobs", "queue_peers")


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
    assert [f.__name__ for f in ws.functions] == ["noop", "io", "warm"] and ws.max_jobs == 100
    assert ws.redis_settings == "redis://127.0.0.1:1/0"
    assert [f.__name__ for f in saq_jobs.settings["functions"]] == ["noop", "io", "warm"]
    assert saq_jobs.settings["concurrency"] == 100
    assert sorted(celery_jobs.app.tasks) == ["io", "noop", "warm"]
    for task in ("'io'", "'noop'", "'warm'"):
        assert task in repr(course_jobs.registry)
    assert callable(rq_jobs.warm)
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


def test_warm_job_records_the_worker_slot_then_counts(peers_path: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = _fresh("_jobs")

    class Client(_Counter):
        def __init__(self) -> None:
            super().__init__()
            self.added: list[tuple[str, str]] = []

        def sadd(self, key: str, member: str) -> None:
            self.added.append((key, member))

    client = Client()
    monkeypatch.setenv("PEERS_WORKER_SLOT", "1")
    jobs.warm_sync(client)
    assert client.added == [(jobs.WARM, "1")] and client.incrs == [jobs.COUNTER]


def test_drive_warm_sends_jobs_until_every_process_did_one(
        peers_path: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three processes taking warm jobs in turn: three jobs, each sent once the last is done."""
    drive, jobs = _fresh("_drive"), _fresh("_jobs")
    store: dict[str, object] = {}

    class FakeRedis:
        @classmethod
        def from_url(cls, url: str) -> FakeRedis:
            return cls()

        def delete(self, *keys: str) -> None:
            for k in keys:
                store.pop(k, None)

        def get(self, key: str) -> object:
            return store.get(key)

        def scard(self, key: str) -> int:
            return len(store.get(key, set()))

        def close(self) -> None:
            pass

    sent: list[str] = []

    class Module:
        @staticmethod
        @contextlib.asynccontextmanager
        async def enqueuer() -> AsyncIterator[Callable[[str, int], Awaitable[None]]]:
            async def enqueue(task: str, n: int) -> None:
                assert (task, n) == ("warm", 1)
                assert int(store.get(jobs.COUNTER, 0)) == len(sent), "sent before the last done"
                sent.append(task)
                store.setdefault(jobs.WARM, set()).add(str(len(sent) % 3))  # round robin
                store[jobs.COUNTER] = len(sent)

            yield enqueue

    monkeypatch.setitem(sys.modules, "redis", types.SimpleNamespace(Redis=FakeRedis))
    monkeypatch.setitem(sys.modules, "fake_jobs", Module)
    out = asyncio.run(drive.warm("fake_jobs", 3, timeout_s=60))
    assert (out["warm_jobs"], out["workers_seen"], out["timed_out"]) == (3, 3, False)
    assert jobs.WARM not in store and jobs.COUNTER not in store  # left clean for the run


def test_arguments_default_quick_and_only(peers_path: None) -> None:
    qp = _fresh("queue_peers")
    full = qp.parse_args([])
    assert (full.jobs, full.io_jobs, full.rounds, full.quick) == (10_000, 1000, 4, False)
    assert full.procs == [1, 2]
    quick = qp.parse_args(["--quick", "--rounds", "3", "--procs", "2, 1,2"])
    assert (quick.jobs, quick.io_jobs, quick.rounds, quick.procs) == (1000, 200, 3, [1, 2])
    assert qp.parse_args(["--procs", "1"]).procs == [1]
    for bad in ("0", "one", ""):
        with pytest.raises(SystemExit):
            qp.parse_args(["--procs", bad])
    only = qp.parse_args(["--only", "course, rq"])
    assert [v["name"] for v in only.variants] == [
        "course worker c=10", "course worker c=100", "RQ (fork per job)"]
    with pytest.raises(SystemExit):
        qp.parse_args(["--only", "nothing-like-it"])


_STORED = {"when": "2026-12-03T10:00:00", "git": "abc1234", "server": {"redis_version": "7"},
           "machine": {"cpus": 2, "platform": "Linux", "python": "3.11.7"}}


def test_render_rewrites_the_md_from_stored_json(peers_path: None, tmp_path: Path) -> None:
    qp = _fresh("queue_peers")
    args = qp.parse_args(["--quick", "--only", "course,rq", "--jobs", "2000"])
    payload = qp.measure(args, _FakeRunner(), log=lambda line: None)
    stored = qp.json.loads(qp.json.dumps({**_STORED, **payload}))  # as read back: no aliases
    for rows in stored["by_procs"].values():  # as if stored before these ratios existed
        for row in rows.values():
            for w in ("noop", "io"):
                row.get(w, {}).pop("ratio_to_course_worker_c=10", None)
                row.get(w, {}).pop("ratio_to_1_proc", None)
    path = tmp_path / "queue_peers.json"
    path.write_text(qp.json.dumps(stored))
    notes = "\n## What this run says\n\nby hand\n"
    path.with_suffix(".md").write_text("old table" + qp.NOTES + notes)
    assert qp.main(["--render", "--json", str(path)]) == 0
    md = path.with_suffix(".md").read_text()
    # consumer | procs | c | jobs | no-op jobs/s | x 1 proc | x bare | x course c=10
    assert ("| course worker c=100 | 2 | 100 | 2,000 / 200 | 200,000 (200,000-200,000) | "
            "2.00 | 20.00 | 10.00 |") in md
    assert "| RQ (fork per job) | 1 | 1 | 1,000 / 200 (fewer) |" in md
    assert "RQ (fork per job): 1,000 no-op and 200 I/O jobs per run, fewer than" in md
    assert "with 1 and with 2 worker processes" in md and "`by_procs[\"1\"]`" in md
    assert md.endswith(qp.NOTES + notes), "--render keeps the notes written by hand"
    again = qp.json.loads(path.read_text())
    assert again["by_procs"]["2"]["course worker c=10"]["io"]["ratio_to_1_proc"]["median"] == 2
    assert again["consumers"] == again["by_procs"]["1"]
    assert "ratio_to_course_worker_c=10" in again["consumers"]["course worker c=100"]["noop"]


def test_render_reads_a_json_from_before_procs(peers_path: None, tmp_path: Path) -> None:
    """One process each, no by_procs: the table the notebook's older runs have."""
    qp = _fresh("queue_peers")
    payload = qp.measure(qp.parse_args(["--quick", "--only", "course", "--procs", "1"]),
                         _FakeRunner(), log=lambda line: None)
    for key in ("by_procs", "procs", "scaled"):
        payload.pop(key)
    for row in payload["consumers"].values():
        for w in ("noop", "io"):
            row.get(w, {}).pop("ratio_to_1_proc", None)
        row.pop("procs")
    path = tmp_path / "queue_peers.json"
    path.write_text(qp.json.dumps({**_STORED, **payload}))
    assert qp.main(["--render", "--json", str(path)]) == 0
    md = path.with_suffix(".md").read_text()
    assert "| course worker c=100 | 1 | 100 | 1,000 / 200 | 100,000 (100,000-100,000) | - |" in md


def test_worker_commands_are_filled_in(peers_path: None) -> None:
    qp = _fresh("queue_peers")
    for v in qp.VARIANTS:
        cmd = qp.worker_command(v, "redis://127.0.0.1:7/0")
        assert not any("{" in part for part in cmd), cmd
        assert str(v["concurrency"]) in cmd or v["peer"] in ("arq", "saq") or \
            v["concurrency"] == 1  # arq/SAQ read $PEERS_CONCURRENCY; solo and RQ run one
        if v["peer"] == "celery":  # two Celery workers with one node name clash
            assert "peers0@%h" in cmd and "peers1@%h" in qp.worker_command(v, "redis://x", 1)


def test_only_slow_consumers_run_fewer_jobs_and_say_why(peers_path: None) -> None:
    qp = _fresh("queue_peers")
    capped = {v["name"]: qp.job_counts(v, 10_000, 1000) for v in qp.VARIANTS}
    assert capped.pop("RQ (fork per job)") == {"noop": 1000, "io": 200}
    assert all(c == {"noop": 10_000, "io": 1000} for c in capped.values()), capped
    rq = next(v for v in qp.VARIANTS if v["peer"] == "rq")
    assert qp.job_counts(rq, 500, 100) == {"noop": 500, "io": 100}  # a cap, never more
    assert "fork" in rq["job_cap"]["why"]


class _FakeRunner:
    """Bare loop at 10,000 jobs/s; a consumer at 1,000 x its concurrency, halved for I/O."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def versions(self, peer: str) -> dict:
        return {peer: "1.0"}

    def run_bare(self, jobs: int, procs: int) -> dict:
        self.order.append("bare Streams loop" + "'" * (procs - 1))
        return {"seconds": jobs / 10_000, "jobs_per_s": 10_000.0, "enqueue_s": 0.1,
                "worker_cpu_s": 0.2, "server_cpu_s": 0.05, "done": jobs}

    def run_consumer(self, variant: dict, jobs: dict[str, int], procs: int) -> dict:
        self.order.append(variant["name"] + "'" * (procs - 1))
        rate = 1000.0 * variant["concurrency"] * procs
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

    def both(order: list[str], two_first: bool) -> list[str]:  # ' marks the 2-process run
        return [x for n in order for x in ([n + "'", n] if two_first else [n, n + "'"])]

    assert runner.order == (both(names, False) + both(names[1:] + names[:1], True)
                            + both(names[2:] + names[:2], False))
    assert set(payload) >= {"jobs", "io_jobs", "rounds", "versions", "commands", "load_before",
                            "load_after", "seconds", "consumers", "by_procs", "procs", "scaled"}
    assert payload["procs"] == [1, 2] and payload["scaled"] == {}
    assert payload["versions"] == {"course": {"course": "1.0"}, "saq": {"saq": "1.0"}}
    assert payload["consumers"] is payload["by_procs"]["1"]  # the old shape: one process
    rows = payload["consumers"]
    assert list(rows) == names
    c10 = rows["course worker c=10"]
    assert c10["procs"] == 1 and c10["noop"]["jobs_per_s"]["median"] == 10_000
    assert c10["noop"]["ratio_to_bare"]["samples"] == [1.0, 1.0, 1.0]
    assert c10["io"]["ratio_to_bare"]["median"] == 0.5
    assert c10["io"]["ceiling_jobs_per_s"] == 1000.0
    assert c10["noop"]["worker_cpu_us_per_job"]["median"] == 1e6 / 1000
    assert c10["io"]["worker_cpu_us_per_job"] is None  # not measurable: reported, not guessed
    assert c10["noop"]["ratio_to_1_proc"]["samples"] == [1.0] * 3
    assert rows["course worker c=100"]["io"]["ratio_to_course_worker_c=10"]["median"] == 10
    assert rows["SAQ c=10"]["noop"]["ratio_to_course_worker_c=10"]["samples"] == [1.0] * 3
    assert "io" not in rows[qp.BARE]
    # Two processes: over the same consumer with one, the bare loop with two, c=10 with two.
    two = payload["by_procs"]["2"]
    assert list(two) == names and two[qp.BARE]["procs"] == 2
    c10x2 = two["course worker c=10"]
    assert c10x2["noop"]["jobs_per_s"]["median"] == 20_000
    assert c10x2["noop"]["ratio_to_1_proc"]["samples"] == [2.0] * 3
    assert c10x2["noop"]["ratio_to_bare"]["median"] == 2.0
    assert c10x2["io"]["ceiling_jobs_per_s"] == 2000.0  # 2 processes x 10 at once / 10 ms
    assert two["SAQ c=10"]["noop"]["ratio_to_course_worker_c=10"]["median"] == 1.0
    table = qp.report(payload).splitlines()
    assert len(table) == 2 + 2 * len(names)
    assert table[4].startswith("| course worker c=10 | 1 | 10 | 1,000 / 200 | 10,000 ")
    assert table[5].startswith("| course worker c=10 | 2 | 10 | 1,000 / 200 | 20,000 ")
