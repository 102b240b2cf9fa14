"""queue_peers.py's .md: the run's facts, the table, what the JSON holds, what each peer buys.

Imported by benchmarks/queue_peers.py (which puts this folder on sys.path); never by
a worker.
"""

from __future__ import annotations


def markdown(payload: dict, table: str) -> str:
    m = payload["machine"]
    versions = "\n".join(f"- {peer}: " + ", ".join(f"{d} {v}" for d, v in vs.items())
                          for peer, vs in payload["versions"].items())
    procs = payload.get("procs", [1])
    counts = " and with ".join(map(str, procs))
    return f"""# The course worker against its peers ({payload['when'][:10]})

`make bench-peers` (`benchmarks/queue_peers.py`; `BENCH_PEERS_ARGS=--quick` for a short
run). {payload['jobs']:,} no-op jobs and {payload['io_jobs']:,} jobs of 10 ms I/O per run
(fewer where the table says so), {payload['rounds']} rounds in rotated order, each
consumer with {counts} worker process{"es" if procs != [1] else ""} back to back
(their children included), started from its own CLI in its own venv, on redis-server
{payload['server']['redis_version']} (loopback, no persistence). A run lasts from the first
enqueue (the library's own client) to the last job's `INCR peers:done`, once every worker
process has done a warm-up job. Machine: {m['cpus']} CPUs, {m['platform']}, CPython
{m['python']}; load average {payload['load_before']} before, {payload['load_after']}
after: a shared machine, so read the same-round ratios. The course at git
{payload['git']}; each venv has:

{versions}

{table}

"x 1 proc": jobs/s over the same consumer's with one worker process, in the same
round. "x bare": over the bare Streams loop's (queue_throughput.py) with as many
processes, in the same round; the bare loop reads jobs enqueued before it starts, so it
is a ceiling, not a peer. "x course c=10": over the course worker at its default
concurrency with as many processes, in the same round, timed like the peers. "of
ceiling": the I/O rate over what procs x c jobs at once of 10 ms can give at most.
Medians over rounds, min-max in brackets. CPU per job: the worker processes' groups
(forked children included) and redis-server, over the whole run. Every worker logs
warnings only.

## The JSON (benchmarks/results/queue_peers.json)

- `procs`: the process counts run, `[1, 2]`; `jobs`, `io_jobs`: the counts asked for;
  `scaled`: `{{consumer: {{"noop": n, "io": n, "why": text}}}}` for a consumer that ran
  fewer (each row's `noop.jobs` and `io.jobs` are what it ran).
- `by_procs["1"]`, `by_procs["2"]`: `{{consumer: row}}`, the bare loop first. A row:
  `peer`, `concurrency`, `procs`, and per workload `noop` and `io` (the bare loop has
  `noop` only): `jobs`, `jobs_per_s`, `ratio_to_bare`, `ratio_to_course_worker_c=10`,
  `ratio_to_1_proc`, `worker_cpu_us_per_job`, `redis_cpu_us_per_job`,
  `enqueue_jobs_per_s`, each `{{median, min, max, spread_pct, samples}}` (samples in
  round order; CPU may be null; `io.ratio_to_bare` is over the bare loop's no-op rate),
  `timed_out` (runs that did not finish), and for `io` `ceiling_jobs_per_s`.
- `consumers`: the rows of the first count (`by_procs["1"]`), in the shape a JSON
  from before `--procs` had (one worker process each).
- `versions`, `commands` (`{{i}}`: the process's slot), `load_before`, `load_after`,
  `seconds`, `rounds`, `git`, `server`, `machine`, `when`.

## What each one buys for its cost

- **course worker**: a Streams consumer group read with `XREADGROUP ... BLOCK` (a new
  job wakes it at once), `concurrency` entries per read, one START and one SETTLE Lua
  call per batch, JSON jobs, a job record and a result per job, heartbeats, reclaim
  of a dead worker's entries (`XAUTOCLAIM`), retries and a dead letter. It gives up
  sync functions, arbitrary Python arguments (JSON only) and process isolation.
- **SAQ**: a blocking dequeue too (no polling delay), JSON, a job hash updated at each
  status change, a sweep for stuck jobs, aborts, cron, a web UI; more round trips
  per job than a batched read.
- **arq**: polls a sorted set every `poll_delay` (0.5 s). A poll reads up to
  max(5 x max_jobs, 100) ids, but once `max_jobs` jobs are running it stops starting
  more until the next poll (arq 0.28, `Worker.start_jobs`), so jobs that outlast
  that loop run at most `max_jobs` per `poll_delay` and process: 20/s for 10 ms jobs
  with max_jobs=10, 40/s with two processes. For that it gets deferred jobs on one
  sorted set, pickled arguments and results (any Python object), an in-progress key claimed with
  WATCH/MULTI per job, results kept a day.
- **Celery**: kombu's Redis transport (a list and BRPOP, an "unacked" hash for
  redelivery), JSON messages, prefetch 4 per process. Prefork buys CPU parallelism
  and isolation from crashing or leaking jobs, at a pipe hop to a child per job;
  solo runs in the consumer process; threads give I/O overlap. Then routing,
  canvas (chains, chords), rate limits, beat.
- **RQ**: forks a "work horse" per job: a crash, a leak or a hard timeout (the
  horse is killed) stays in that job. Pickled jobs, a registry write per state.
  Its own notes measure `SimpleWorker` (no fork) about 6x faster on hello-world jobs;
  not measured here.
"""
