"""course_lib.distributed.job: the JSON envelope, its validation, statuses, the task registry."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.distributed import (
    MAX_JOB_BYTES,
    InvalidJob,
    Job,
    JobFailed,
    JobStatus,
    QueueKeys,
    TaskRegistry,
)
from course_lib.distributed.job import to_json
from course_lib.distributed.keys import check_queue_name

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12,
)  # fmt: skip

# Garbage may hold what JSON can spell but UTF-8 cannot: lone surrogates ("\ud800").
odd_text = st.text(st.sampled_from("a\u00e9\u4e2d\ud800\udfff\x00"), max_size=6)
garbage_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | odd_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(odd_text, inner, max_size=4),
    max_leaves=12,
)

jobs = st.builds(
    Job,
    task=st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,30}", fullmatch=True),
    args=st.lists(json_values, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
    id=st.from_regex(r"[!-~]{1,40}", fullmatch=True),
    attempt=st.just(1) | st.integers(1, 3),
    max_attempts=st.integers(3, 10),
    enqueued_at=st.floats(0, 4e9),
    timeout_s=st.none() | st.floats(0.001, 1e6),
    deadline=st.none() | st.floats(0, 4e9),
)

FIELDS = ["id", "task", "args", "kwargs", "attempt", "max_attempts", "enqueued_at",
          "timeout_s", "deadline"]


def _valid(**changes: object) -> dict[str, object]:
    base = {"id": "j1", "task": "resize", "args": [1], "kwargs": {"w": 2}, "attempt": 1,
            "max_attempts": 3, "enqueued_at": 1.5, "timeout_s": None, "deadline": None}
    return base | changes


def _problem(data: object) -> str:
    with pytest.raises(InvalidJob) as info:
        Job.decode(data if isinstance(data, (bytes, str)) else json.dumps(data))
    return info.value.problem


# --- the envelope -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(jobs)
def test_encode_decode_round_trip(job):
    assert Job.decode(job.encode()) == job
    assert Job.decode(job.encode().decode()) == job  # str works as well as bytes


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_garbage_bytes_raise_invalid_job_and_nothing_else(data):
    try:
        Job.decode(data)
    except InvalidJob:
        pass


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from([*FIELDS, "extra"]), garbage_values, max_size=11)
       | garbage_values)
def test_garbage_json_raises_invalid_job_and_nothing_else(obj):
    try:
        Job.decode(json.dumps(obj))  # NaN and Infinity come out as such: refused too
    except InvalidJob:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(FIELDS), garbage_values)
def test_any_field_with_any_value_decodes_or_raises_invalid_job(field, value):
    try:
        job = Job.decode(json.dumps(_valid(**{field: value})))
    except InvalidJob:
        return
    assert Job.decode(job.encode()) == job  # whatever decodes also encodes, the same


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"not json", "not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ('{"id": NaN}', "not JSON"),
        ("[1, 2]", "expected a JSON object, got a list"),
        ("null", "expected a JSON object, got null"),
        (_valid(attempt=True), "field 'attempt' must be an integer >= 1"),
        (_valid(attempt="2"), "field 'attempt' must be an integer >= 1"),
        (_valid(attempt=0), "field 'attempt' must be an integer >= 1"),
        (_valid(attempt=4), "attempt 4 is past max_attempts 3"),
        (_valid(args="abc"), "field 'args' must be a list"),
        (_valid(args={"a": 1}), "field 'args' must be a list"),
        (_valid(kwargs=[1]), "field 'kwargs' must be an object"),
        (_valid(task="rm -rf /"), "field 'task' must be a task name"),
        (_valid(task=7), "field 'task' must be a task name"),
        (_valid(id=""), "field 'id' must be 1-200 printable ASCII"),
        (_valid(id="a b"), "field 'id' must be 1-200 printable ASCII"),
        (_valid(enqueued_at="now"), "field 'enqueued_at' must be a finite number"),
        (_valid(timeout_s=0), "field 'timeout_s' must be a finite number > 0 or null"),
        (_valid(timeout_s=-1), "field 'timeout_s' must be a finite number > 0 or null"),
        (_valid(deadline="tomorrow"), "field 'deadline' must be a finite number >= 0 or null"),
        ({k: v for k, v in _valid().items() if k != "task"}, "missing field(s) 'task'"),
        (_valid(priority=5), "unknown field(s) 'priority'"),
        ("[" * 100_000, "not JSON: nested too deeply"),
        (_valid(args=["\ud800"]), "args[0] holds a lone surrogate"),
        (_valid(kwargs={"\udfff": 1}), "kwargs key holds a lone surrogate"),
    ],
)
def test_invalid_envelopes_name_the_problem(data, problem):
    assert problem in _problem(data)


def test_optional_fields_may_be_left_out():
    data = {k: v for k, v in _valid().items() if k not in ("timeout_s", "deadline")}
    job = Job.decode(json.dumps(data))
    assert job.timeout_s is None and job.deadline is None


def test_oversize_envelopes_are_refused_on_both_sides():
    big = "x" * MAX_JOB_BYTES
    with pytest.raises(InvalidJob, match=r"over the 524288 byte limit \(pass a reference"):
        Job("resize", [big]).encode()
    with pytest.raises(InvalidJob, match="over the 524288 byte limit"):
        Job.decode(json.dumps(_valid(args=[big])).encode())
    # Just under the limit passes.
    fits = Job("resize", ["x" * (MAX_JOB_BYTES - 300)], id="j")
    assert Job.decode(fits.encode()) == fits


def test_arguments_that_are_not_json_are_refused_with_their_path():
    with pytest.raises(InvalidJob, match=r"resize args\[1\]\['when'\] is object, not JSON"):
        Job("resize", [1, {"when": object()}])
    with pytest.raises(InvalidJob, match=r"resize kwargs\['ratio'\] is nan, which JSON"):
        Job("resize", kwargs={"ratio": math.nan})
    with pytest.raises(InvalidJob, match=r"has key 1 \(int\)"):
        Job("resize", [{1: "a"}])
    with pytest.raises(InvalidJob, match=r"the result is set, not JSON"):
        to_json({1, 2}, "the result")


def test_tuples_travel_as_lists():
    job = Job("resize", (1, (2, 3)), id="j")
    assert job.args == (1, (2, 3))
    assert Job.decode(job.encode()).args == (1, [2, 3])


def test_repr_names_the_job_but_never_shows_argument_values():
    job = Job("login", ["hunter2"], {"token": "s3cret"}, id="j-1", timeout_s=5)
    text = repr(job)
    assert text == "Job('login', id='j-1', attempt=1/3, args=1, kwargs=['token'], timeout_s=5)"
    assert "hunter2" not in text and "s3cret" not in text


def test_a_job_is_immutable_and_next_attempt_is_a_new_one():
    job = Job("resize", [1], id="j", max_attempts=2)
    with pytest.raises(AttributeError):
        job.attempt = 2  # type: ignore[misc]
    following = job.next_attempt()
    assert (following.attempt, following.id, following.args) == (2, "j", (1,))
    with pytest.raises(InvalidJob, match="attempt 3 is past max_attempts 2"):
        following.next_attempt()


def test_new_jobs_get_unique_ids_and_the_current_time():
    a, b = Job("t"), Job("t")
    assert a.id != b.id
    assert a.enqueued_at > 1.6e9


# --- statuses and errors ----------------------------------------------------------------


def test_final_statuses():
    assert {s for s in JobStatus if s.final} == {JobStatus.DONE, JobStatus.FAILED,
                                                 JobStatus.DEAD, JobStatus.CANCELLED}
    assert [s.value for s in JobStatus] == ["scheduled", "queued", "running", "retrying",
                                            "done", "failed", "dead", "cancelled"]


def test_job_failed_carries_the_remote_error():
    exc = JobFailed("j1", "resize", JobStatus.DEAD, "ValueError", "bad image",
                    "gave up after 3 attempt(s)")
    assert str(exc) == ("job j1 (resize) dead: gave up after 3 attempt(s); "
                        "last error ValueError: bad image")
    assert (exc.error_type, exc.error_message, exc.status) == ("ValueError", "bad image",
                                                               JobStatus.DEAD)


# --- the registry ----------------------------------------------------------------------


def test_registry_takes_both_decorator_forms_and_keeps_the_function():
    registry = TaskRegistry()

    @registry.task
    async def plain(x: int) -> int:
        return x

    @registry.task(name="images.resize", max_attempts=5, timeout_s=2.5, retry_on=OSError)
    async def resize() -> None:
        pass

    assert plain.__name__ == "plain"  # the decorator returns the function itself
    assert sorted(registry) == ["images.resize", "plain"] and len(registry) == 2
    task = registry["images.resize"]
    assert (task.fn, task.max_attempts, task.timeout_s, task.retry_on) == (
        resize, 5, 2.5, (OSError,))
    assert task.retries(ConnectionError()) and not task.retries(ValueError())
    assert registry["plain"].retries(ValueError())  # default: every Exception
    assert "plain" in registry and "resize" not in registry
    assert registry.get("nope") is None
    with pytest.raises(KeyError, match="no task 'nope' in <TaskRegistry"):
        registry["nope"]


def test_registry_refuses_what_it_cannot_run():
    registry = TaskRegistry()

    def sync(): ...

    async def coro(): ...

    with pytest.raises(TypeError, match="must be an async def function"):
        registry.task(sync)
    with pytest.raises(ValueError, match="not usable"):
        registry.task(name="has space")(coro)
    with pytest.raises(ValueError, match="max_attempts must be an integer >= 1"):
        registry.task(max_attempts=0)(coro)
    with pytest.raises(ValueError, match="timeout_s must be a number > 0"):
        registry.task(timeout_s=0)(coro)
    with pytest.raises(TypeError, match="retry_on must hold Exception subclasses"):
        registry.task(retry_on=(BaseException,))(coro)
    registry.task(coro)
    with pytest.raises(ValueError, match="'coro' is already registered"):
        registry.task(coro)


# --- keys ----------------------------------------------------------------------------------


def test_every_key_of_a_queue_shares_one_hash_tag():
    keys = QueueKeys("images")
    names = [keys.stream, keys.delayed, keys.dead, keys.job("42"), keys.done("42")]
    assert names == ["cq:{images}:stream", "cq:{images}:delayed", "cq:{images}:dead",
                     "cq:{images}:job:42", "cq:{images}:done:42"]
    assert keys.group == "workers"
    for bad in ("", "a:b", "{x}", "a b", "x" * 101):
        with pytest.raises(ValueError, match="is not usable"):
            check_queue_name(bad)
