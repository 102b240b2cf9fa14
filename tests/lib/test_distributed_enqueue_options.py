"""Enqueue options that never collide with a task's own keyword arguments.

``queue.enqueue(task, *args, **kwargs)`` passes every keyword to the task (``job_id``
aside, as before); the options go in an ``EnqueueOptions``, positional-only, through
``queue.enqueue_with(options, task, *args, **kwargs)``: a delay or a time (``delay_s``,
``at``: the job waits in the delayed set that retries use), ``max_attempts``,
``timeout_s``, ``deadline``, ``job_id``. And from the CLI: ``enqueue --delay S``,
``--at ISO8601``.

Every library test takes the ``redis`` fixture (fakeredis and a real server); the CLI
tests run against the real server and a fakeredis served over TCP.
"""

from __future__ import annotations

import datetime
import time
import uuid

import pytest
import redis as redis_sync
from _worker_support import fast_worker

from course_lib.distributed import (
    EnqueueOptions,
    InvalidJob,
    Job,
    JobStatus,
    Queue,
    QueueKeys,
    TaskRegistry,
)
from course_lib.distributed.cli import main
from course_lib.redis import serve_fake_tcp

# Names a task may well take, and an enqueue API could have claimed for itself.
OPTION_NAMES = {"delay_s": 1, "at": 2, "max_attempts": 3, "timeout_s": 4, "deadline": 5,
                "options": 6, "task": 7}


async def _entries(redis, queue: Queue) -> list[Job]:
    return [Job.decode(fields[b"job"]) for _, fields in await redis.xrange(queue.keys.stream)]


@pytest.mark.asyncio
async def test_keywords_named_like_options_go_to_the_task(redis):
    queue = Queue(redis)
    handle = await queue.enqueue("report", 1, **OPTION_NAMES)
    [job] = await _entries(redis, queue)
    assert job.kwargs == OPTION_NAMES and job.args == (1,)
    assert (job.max_attempts, job.timeout_s, job.deadline) == (3, None, None)
    assert await handle.status() is JobStatus.QUEUED


@pytest.mark.asyncio
async def test_enqueue_with_sets_the_options_and_passes_every_keyword_to_the_task(redis):
    queue = Queue(redis)
    deadline = time.time() + 3600
    options = EnqueueOptions(job_id="report-1", max_attempts=7, timeout_s=2.5,
                             deadline=deadline)
    handle = await queue.enqueue_with(options, "report", 1, job_id="mine", **OPTION_NAMES)
    [job] = await _entries(redis, queue)
    assert handle.id == job.id == "report-1" and handle.enqueued
    assert job.kwargs == OPTION_NAMES | {"job_id": "mine"}
    assert (job.max_attempts, job.timeout_s, job.deadline) == (7, 2.5, deadline)
    assert repr(options) == ("EnqueueOptions(job_id='report-1', max_attempts=7, "
                             f"timeout_s=2.5, deadline={deadline!r})")
    # An aware datetime is a deadline too; the same id again is enqueued once.
    again = await queue.enqueue_with(
        EnqueueOptions(job_id="report-1",
                       deadline=datetime.datetime.fromtimestamp(deadline, datetime.UTC)),
        "report")
    assert again.enqueued is False and await redis.xlen(queue.keys.stream) == 1


@pytest.mark.asyncio
async def test_a_delayed_job_waits_in_the_delayed_set_not_the_stream(redis):
    queue = Queue(redis)
    before = time.time()
    handle = await queue.enqueue_with(EnqueueOptions(delay_s=60, job_id="later"), "report", 1)
    assert handle.enqueued and await redis.xlen(queue.keys.stream) == 0
    [(member, due)] = await redis.zrange(queue.keys.delayed, 0, -1, withscores=True)
    assert Job.decode(member).id == "later" and before + 60 <= due <= time.time() + 60
    assert await handle.status() is JobStatus.SCHEDULED
    info = await handle.info()
    assert float(info["next_at"]) == due and "entry" not in info
    # Idempotent as an immediate job: the same id, delayed or not, is added once.
    assert not (await queue.enqueue_with(EnqueueOptions(job_id="later"), "report")).enqueued
    assert not (await queue.enqueue("report", job_id="later")).enqueued
    assert await redis.zcard(queue.keys.delayed) == 1
    # Not due yet: not moved. Due: moved to the stream, queued, its entry recorded.
    assert await queue.move_due(now_s=due - 1) == 0
    assert await queue.move_due(now_s=due) == 1
    [(entry_id, _)] = await redis.xrange(queue.keys.stream)
    assert await handle.status() is JobStatus.QUEUED
    assert (await handle.info())["entry"] == entry_id.decode()


@pytest.mark.asyncio
async def test_at_takes_an_aware_datetime_or_epoch_seconds(redis):
    queue = Queue(redis)
    when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    await queue.enqueue_with(EnqueueOptions(at=when, job_id="a"), "report")
    await queue.enqueue_with(EnqueueOptions(at=when.timestamp() + 1, job_id="b"), "report")
    scores = dict(await redis.zrange(queue.keys.delayed, 0, -1, withscores=True))
    assert sorted(scores.values()) == [when.timestamp(), when.timestamp() + 1]
    # A time already past is no delay: the job goes to the stream at once.
    await queue.enqueue_with(EnqueueOptions(at=time.time() - 10, job_id="c"), "report")
    assert [job.id for job in await _entries(redis, queue)] == ["c"]
    assert await Queue(redis).handle("c").status() is JobStatus.QUEUED


@pytest.mark.parametrize(("options", "says"), [
    (dict(at=datetime.datetime(2030, 1, 1)), "timezone"),  # naive: local? UTC? refused
    (dict(delay_s=5, at=time.time() + 5), "not both"),
    (dict(delay_s=-1), "delay_s"),
    (dict(delay_s=float("inf")), "delay_s"),
    (dict(delay_s=True), "delay_s"),
    (dict(at="tomorrow"), "at"),
    (dict(deadline="soon"), "deadline"),
    (dict(max_attempts=0), "max_attempts"),
    (dict(timeout_s=0), "timeout_s"),
    (dict(job_id=""), "job_id"),
])
def test_bad_options_are_refused_when_made(options, says):
    with pytest.raises((ValueError, TypeError), match=says):
        EnqueueOptions(**options)


@pytest.mark.asyncio
async def test_a_delay_past_the_deadline_is_refused_before_anything_is_written(redis):
    queue = Queue(redis)
    with pytest.raises(InvalidJob, match="deadline"):
        await queue.enqueue_with(EnqueueOptions(delay_s=60, deadline=time.time() + 30),
                                 "report")
    assert await redis.zcard(queue.keys.delayed) == 0 and await redis.dbsize() == 0


@pytest.mark.asyncio
async def test_a_registrys_defaults_fill_in_what_the_options_leave_out(redis):
    registry = TaskRegistry()

    @registry.task(max_attempts=9, timeout_s=12)
    async def report(n: int = 0) -> int:
        return n

    queue = Queue(redis, registry=registry)
    await queue.enqueue_with(EnqueueOptions(max_attempts=2), "report", 1)
    await queue.enqueue_with(EnqueueOptions(timeout_s=1), "report", 2)
    first, second = await _entries(redis, queue)
    assert (first.max_attempts, first.timeout_s) == (2, 12)
    assert (second.max_attempts, second.timeout_s) == (9, 1)
    with pytest.raises(InvalidJob, match="no task 'nope'"):
        await queue.enqueue_with(EnqueueOptions(delay_s=1), "nope")


@pytest.mark.asyncio
async def test_a_worker_runs_a_delayed_job_once_it_is_due(redis):
    registry = TaskRegistry()
    started: list[float] = []

    @registry.task
    async def stamp() -> str:
        started.append(time.time())
        return "ran"

    queue = Queue(redis)
    handle = await queue.enqueue_with(EnqueueOptions(delay_s=0.3), "stamp")
    due = float((await handle.info())["next_at"])
    async with fast_worker(redis, registry):
        assert await handle.result(timeout_s=10) == "ran"
    assert len(started) == 1 and started[0] >= due
    assert float((await handle.info())["started_at"]) >= due


# --- the CLI ------------------------------------------------------------------------------


@pytest.fixture(params=[pytest.param("real", marks=pytest.mark.real_redis), "fake_tcp"])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "real":
        return request.getfixturevalue("redis_server").url
    server = serve_fake_tcp()
    request.addfinalizer(server.stop)
    return server.url


@pytest.fixture
def client(url: str):
    c = redis_sync.Redis.from_url(url)
    yield c
    c.close()


def cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_enqueue_delay_and_at_put_the_job_in_the_delayed_set(capsys, monkeypatch, url,
                                                                 client):
    monkeypatch.delenv("REDIS_URL", raising=False)
    queue = f"cli-{uuid.uuid4().hex[:8]}"
    keys = QueueKeys(queue)
    before = time.time()
    code, out, err = cli(capsys, "--redis-url", url, "--queue", queue,
                         "enqueue", "add", "1", "2", "--job-id", "d-1", "--delay", "90")
    assert (code, out) == (0, "d-1\n"), err
    [(member, due)] = client.zrange(keys.delayed, 0, -1, withscores=True)
    assert Job.decode(member).args == (1, 2) and before + 90 <= due <= time.time() + 90
    assert client.hget(keys.job("d-1"), "status") == b"scheduled"
    code, out, err = cli(capsys, "--redis-url", url, "--queue", queue,
                         "enqueue", "add", "--job-id", "d-2", "--at", "2099-01-01T00:00:00Z")
    assert code == 0, err
    assert client.zscore(keys.delayed, client.zrange(keys.delayed, -1, -1)[0]) == (
        datetime.datetime(2099, 1, 1, tzinfo=datetime.UTC).timestamp())
    assert client.xlen(keys.stream) == 0


@pytest.mark.parametrize(("argv", "says"), [
    (["--delay", "5", "--at", "2099-01-01T00:00:00Z"], "not allowed with"),
    (["--at", "2099-01-01T00:00:00"], "UTC offset"),
    (["--at", "next tuesday"], "ISO 8601"),
    (["--delay", "-3"], "--delay"),
])
def test_cli_bad_delay_or_at_exits_2_in_one_line(capsys, monkeypatch, argv, says):
    monkeypatch.delenv("REDIS_URL", raising=False)
    code, _, err = cli(capsys, "--redis-url", "redis://127.0.0.1:1/0", "enqueue", "add",
                         *argv)
    assert code == 2 and says in err and "Traceback" not in err



# --- enqueue_many: options per job, beside the arguments --------------------------------------


@pytest.mark.asyncio
async def test_enqueue_many_takes_options_per_job_beside_the_arguments(redis):
    queue = Queue(redis)
    deadline = time.time() + 3600
    handles = await queue.enqueue_many([
        ("report", [1], OPTION_NAMES, EnqueueOptions(job_id="r-1", max_attempts=7)),
        ("report", [2], EnqueueOptions(delay_s=60, job_id="r-2")),
        ("report", [3], {"x": 1}, EnqueueOptions(timeout_s=2.5, deadline=deadline)),
        ("report", [4], {"x": 2}, None),  # no options of its own
        ("report", [5]),
    ])  # fmt: skip
    assert [h.id for h in handles[:2]] == ["r-1", "r-2"] and all(h.enqueued for h in handles)
    now = {job.args[0]: job for job in await _entries(redis, queue)}
    assert sorted(now) == [1, 3, 4, 5]  # r-2 waits in the delayed set
    assert now[1].kwargs == OPTION_NAMES and now[1].max_attempts == 7  # never mixed
    assert (now[3].kwargs, now[3].timeout_s, now[3].deadline) == ({"x": 1}, 2.5, deadline)
    assert (now[4].max_attempts, now[4].timeout_s, now[4].deadline) == (3, None, None)
    [(member, due)] = await redis.zrange(queue.keys.delayed, 0, -1, withscores=True)
    assert Job.decode(member).id == "r-2" and due >= time.time() + 59
    assert await handles[1].status() is JobStatus.SCHEDULED


@pytest.mark.asyncio
async def test_enqueue_many_options_apply_to_every_job_without_its_own(redis):
    queue = Queue(redis)
    shared = EnqueueOptions(max_attempts=1, delay_s=60)
    handles = await queue.enqueue_many(
        [("report", [1]), ("report", [2], {}, EnqueueOptions(job_id="own")),
         queue.job("report", [3], job_id="prepared")], options=shared)
    assert [h.id for h in handles][1:] == ["own", "prepared"]
    assert [job.id for job in await _entries(redis, queue)] == ["own"]  # its own: no delay
    delayed = {Job.decode(m).args[0]: Job.decode(m)
               for m in await redis.zrange(queue.keys.delayed, 0, -1)}
    assert sorted(delayed) == [1, 3]  # a prepared Job takes the options' time only
    assert (delayed[1].max_attempts, delayed[3].max_attempts) == (1, 3)
    with pytest.raises(ValueError, match="job_id shared by every job"):
        await queue.enqueue_many([("report", [4])], options=EnqueueOptions(job_id="same"))


@pytest.mark.asyncio
@pytest.mark.parametrize(("item", "error", "says"), [
    (("report", [1], EnqueueOptions(), {"x": 1}), InvalidJob, r"not a Job or \(task, args"),
    (("report", [1], {}, "options"), InvalidJob, r"not a Job or \(task, args"),
    (("report",), InvalidJob, r"not a Job or \(task, args"),
    (("report", [1], EnqueueOptions(delay_s=60, deadline=time.time() + 30)), InvalidJob,
     "at or after its deadline"),
])  # fmt: skip
async def test_enqueue_many_with_one_bad_item_adds_none(redis, item, error, says):
    queue = Queue(redis)
    with pytest.raises(error, match=says):
        await queue.enqueue_many([("report", [0]), item])
    assert await redis.xlen(queue.keys.stream) == 0 and await redis.zcard(queue.keys.delayed) == 0
