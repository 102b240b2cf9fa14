"""Every Lua script of the job queue, with why each one must run as one atomic step.

    settle = redis.register_script(scripts.SETTLE)
    await settle(keys=[...], args=[...])

Redis runs a script with nothing in between: no other client's command lands
between two of its calls. That is what a Lua script buys over a MULTI: a
MULTI is atomic too, but it cannot look at one reply and decide what to write
next (ack only if the entry is still ours, add the job only if its id is free).
Every key a script touches is passed in ``KEYS`` and shares the queue's hash
tag (see ``keys``), so the scripts stay legal on Redis Cluster.

Out of memory (``maxmemory`` reached, ``noeviction``), Redis refuses a script's
first write that may grow memory, and none after it; a script declared with
``allow-oom`` (Redis 7's ``#!lua flags=`` line, see ``Script``) runs whole. Only
SETTLE is: it ends jobs and deletes their entries, so workers drain under pressure,
while ENQUEUE (refused: the client gets ``QueueFull``) and START (the worker holds its
read and backs off) wait for memory.

Who runs which: ``Queue`` runs ENQUEUE, MOVE_DUE, REQUEUE_DEAD and CANCEL; ``Worker``
runs START, HEARTBEAT and SETTLE, each on a batch: one call marks all the
jobs of a read running, beats all the entries it runs, or settles all the
deliveries that ended together (each one still gated by its own pending check);
and FORGET_CONSUMERS, now and then, for the consumers crashed workers left.
"""

from __future__ import annotations

__all__ = ["CANCEL", "ENQUEUE", "FORGET_CONSUMERS", "HEARTBEAT", "MOVE_DUE", "REQUEUE_DEAD",
           "SETTLE", "SETTLE_FLAGS", "START", "Script"]

from typing import Any

import redis.asyncio
import redis.exceptions

# A NOSCRIPT right after loading means a SCRIPT FLUSH landed in between: load again,
# this many times in all, before giving up (the caller then retries with backoff).
_LOADS = 3

# Atomic because the id check and the add must not be split: two clients sending
# the same job_id at once (a retry after a timeout) would both see it free, and the
# job would run twice.
ENQUEUE = """
-- KEYS[1] job record, KEYS[2] stream, KEYS[3] done list, KEYS[4] delayed zset
-- ARGV[1] envelope, ARGV[2] task, ARGV[3] attempt, ARGV[4] max_attempts, ARGV[5] enqueued_at,
-- ARGV[6] (optional) when it is due, epoch s: it waits in the delayed set till then.
-- The id is taken while its record exists: check and add in one atomic step.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
if ARGV[6] then
  -- ZADD first, as XADD below: the first write is the one refused out of memory.
  redis.call('ZADD', KEYS[4], ARGV[6], ARGV[1])
  redis.call('DEL', KEYS[3])
  redis.call('HSET', KEYS[1], 'status', 'scheduled', 'task', ARGV[2], 'attempt', ARGV[3],
             'max_attempts', ARGV[4], 'enqueued_at', ARGV[5], 'next_at', ARGV[6])
  return 'delayed'
end
-- XADD is the first write, on purpose: Redis out of memory refuses a script's first
-- write that may grow memory, and then none after it (it cannot stop half-way). A
-- DEL first (it frees) let every enqueue through, far past maxmemory.
local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
-- A token left by an earlier job with this id (expiring just after its record)
-- would wake this job's waiters before it ends.
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[1], 'status', 'queued', 'task', ARGV[2], 'attempt', ARGV[3],
           'max_attempts', ARGV[4], 'enqueued_at', ARGV[5], 'entry', entry)
return entry
"""

# Atomic because the check, XADD and ZREM must run with nothing in between: two
# workers moving at once both read the same due jobs (retries, and jobs enqueued with
# a delay) (the client reads them, to name
# their records in KEYS), and each job must be moved once: the one that finds it still
# in the set moves it, the other skips it. The record names its new entry, in the same
# step, so ``entry`` is never a deleted one.
MOVE_DUE = """
-- KEYS[1] delayed zset, KEYS[2] stream, then per job: its record (the stream again when
--   the member is no job: no record to update)
-- ARGV: the due members, read by the client (ZRANGEBYSCORE), in KEYS[3..] order
local moved = 0
for i, job in ipairs(ARGV) do
  -- XADD before ZREM: out of memory, Redis refuses a script's first write that may
  -- grow memory (and none after it): a ZREM first would let the XADD through.
  if redis.call('ZSCORE', KEYS[1], job) then
    local entry = redis.call('XADD', KEYS[2], '*', 'job', job)
    redis.call('ZREM', KEYS[1], job)
    local record = KEYS[i + 2]
    if record ~= KEYS[2] and redis.call('EXISTS', record) == 1 then
      redis.call('HSET', record, 'entry', entry)
      -- A job enqueued with a delay is queued now; a retry stays 'retrying' till it starts.
      if redis.call('HGET', record, 'status') == 'scheduled' then
        redis.call('HSET', record, 'status', 'queued')
        redis.call('HDEL', record, 'next_at')
      end
    end
    moved = moved + 1
  end
end
return moved
"""

# Atomic because a record must not change between reading its status and marking
# it running: a duplicate entry of a job that has just ended (or been cancelled) would
# otherwise turn its final status back into "running", and the job would run. One
# call marks every job of a read batch.
START = """
-- KEYS: the job records of the jobs just read, one each
-- ARGV[1] worker, ARGV[2] started_at, then one per job, in KEYS order:
--   '<attempt> <max_attempts> <task> <enqueued_at>' (one argument: a quarter of the
--   cost of four, to send and to receive; a task name holds no space)
-- Returns one string per job: its status when it already ended (a duplicate entry, or
-- cancelled before it started: nothing written), 'cancel' when a cancel was asked for
-- while an earlier delivery ran (its worker died, or handed it back: the worker ends it
-- cancelled, unrun; nothing written here), else '' (marked running).
local out = {}
for i, key in ipairs(KEYS) do
  local got = redis.call('HMGET', key, 'status', 'cancel')
  local status = got[1]
  if status == 'done' or status == 'failed' or status == 'dead' or status == 'cancelled' then
    out[i] = status
  elseif got[2] then
    out[i] = 'cancel'
  else
    local attempt, most, task, at = string.match(ARGV[i + 2], '^(%S+) (%S+) (%S+) (%S+)$')
    redis.call('HSET', key, 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[2],
               'attempt', attempt, 'max_attempts', most, 'task', task, 'enqueued_at', at)
    if status == 'retrying' then redis.call('HDEL', key, 'next_at') end
    out[i] = ''
  end
end
return out
"""

# Atomic because the dead letter must leave only as the job enters the stream: a
# crash between an XADD and an XDEL from the client would leave the job in both
# (requeued twice by the next try) or, the other way round, in neither. Checking
# that the letter is still there, in the same step, makes a second requeue of the
# same entry (a retry, or two operators at once) put it back zero times, not twice.
REQUEUE_DEAD = """
-- KEYS[1] dead-letter stream, KEYS[2] stream, KEYS[3] job record, KEYS[4] done list
-- ARGV[1] dead-letter entry id, ARGV[2] the fresh envelope (attempt 1), ARGV[3] task,
-- ARGV[4] max_attempts, ARGV[5] enqueued_at, then the original entry's other fields
-- as field/value pairs. Returns {1, new entry id}, or {0, why}: nothing was written.
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return {0, 'not in the dead-letter stream (requeued already?)'}
end
local status = redis.call('HGET', KEYS[3], 'status')
-- Only a dead record (or none: expired) is replaced: a job with this id that is
-- queued, running or ended otherwise is another run's, not this letter's.
if status and status ~= 'dead' then
  return {0, 'its job id is ' .. status .. ' now, not dead'}
end
local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[2], unpack(ARGV, 6, #ARGV))
-- The old token would wake result() at once with the dead outcome.
redis.call('DEL', KEYS[4])
redis.call('HDEL', KEYS[3], 'worker', 'started_at', 'finished_at', 'next_at', 'result',
           'error_type', 'error', 'traceback', 'reason', 'cancel')
redis.call('HSET', KEYS[3], 'status', 'queued', 'task', ARGV[3], 'attempt', '1',
           'max_attempts', ARGV[4], 'enqueued_at', ARGV[5], 'entry', entry)
redis.call('PERSIST', KEYS[3])  -- a queued record does not expire, as after enqueue
redis.call('XDEL', KEYS[1], ARGV[1])
return {1, entry}
"""

# Atomic because "is it still mine?" and "reset its idle time" must not be split:
# a worker that reclaimed the entry in between would lose it back to us. One call
# beats every entry a worker runs, and reads their cancel flags: a cancel asked for
# while a job runs reaches its worker within one heartbeat, at no extra round trip.
HEARTBEAT = """
-- KEYS[1] stream, then the job record of each entry (the stream again: no job);
-- ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids, in KEYS[2..] order
-- Reset each entry's idle time, but only while it is still ours: a bare XCLAIM would
-- take it back from a worker that reclaimed it meanwhile. Returns {the ids not ours,
-- the ids whose job has a cancel asked for (Queue.cancel): the worker cancels them}.
local lost, cancel = {}, {}
for i = 3, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2]) == 0 then
    lost[#lost + 1] = ARGV[i]
  else
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    local record = KEYS[i - 1]
    if record ~= KEYS[1] and redis.call('HEXISTS', record, 'cancel') == 1 then
      cancel[#cancel + 1] = ARGV[i]
    end
  end
end
return {lost, cancel}
"""

# Atomic because the status read and what follows must not be split: a worker's START
# between them would mark the job running after we decided it had not started (it
# would run, cancelled), and a job that just ended must not turn cancelled. START reads
# the record in one step too: a job cancelled here never starts, a running one gets a
# flag its worker's heartbeat reads (or the next START, if that worker died).
CANCEL = """
-- KEYS[1] job record, KEYS[2] done list, KEYS[3] stream, KEYS[4] delayed zset
-- ARGV[1] group, ARGV[2] now (epoch s), ARGV[3] ttl in ms of the final record, ARGV[4] id
-- Returns 'unknown' (no record), 'ended' (final already: nothing written), 'requested'
-- (running: flagged) or 'cancelled' (had not started: it never will).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'unknown' end
if status == 'done' or status == 'failed' or status == 'dead' or status == 'cancelled' then
  return 'ended'
end
if status == 'running' then
  redis.call('HSET', KEYS[1], 'cancel', ARGV[2])
  return 'requested'
end
-- scheduled, queued or retrying. The write that may be refused out of memory first.
local why = 'cancelled before it started'
if status == 'retrying' then why = 'cancelled between attempts' end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[2], 'reason', why)
local due = redis.call('HGET', KEYS[1], 'next_at')
if due then
  -- Waiting in the delayed set, its envelope scored by next_at: removed, or it would be
  -- moved to the stream after its record expired, and run.
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], due, due)) do
    local ok, job = pcall(cjson.decode, member)
    if ok and type(job) == 'table' and job.id == ARGV[4] then
      redis.call('ZREM', KEYS[4], member)
    end
  end
  redis.call('HDEL', KEYS[1], 'next_at')
end
local entry = redis.call('HGET', KEYS[1], 'entry')
if entry then
  -- Not delivered yet (in no consumer's PEL; no group: no worker yet): deleted, never
  -- read. Delivered: left for the worker holding it, whose START finds it cancelled.
  local pending = redis.pcall('XPENDING', KEYS[3], ARGV[1], entry, entry, 1)
  if type(pending) ~= 'table' or pending.err or #pending == 0 then
    redis.call('XDEL', KEYS[3], entry)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('LPUSH', KEYS[2], 'done')  -- wakes result(), as SETTLE's notify()
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PUBLISH', KEYS[2], 'done')
return 'cancelled'
"""

# Atomic because "holds nothing" and the delete must not be split: XGROUP DELCONSUMER
# drops the consumer's pending entries with it, and an entry no consumer holds is never
# delivered again (nor reclaimed): its job would be lost. Checked here, at the delete.
FORGET_CONSUMERS = """
-- KEYS[1] stream; ARGV[1] group, ARGV[2..] consumers found idle (by the client)
-- Deletes each one that holds no pending entry now; returns the names deleted.
local gone = {}
for i = 2, #ARGV do
  if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[i]) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[i])
    gone[#gone + 1] = ARGV[i]
  end
end
return gone
"""

# Atomic because the ack and what follows it (result, retry, dead letter, wake-up
# token) must happen together or not at all: a crash between them would lose the
# job (acked, nothing written) or run it twice (written, not acked). And the
# writes depend on whether the entry is still pending, which a MULTI could not
# express. The ack comes last, so a command that fails half-way (Redis does not
# roll a script back) leaves the entry pending rather than acked. One call settles
# every delivery that ended in the same turn of the worker's event loop; each one
# is still gated by its own pending check, so a batch sent again (after a lost reply)
# settles nothing twice.
# Settling frees what it ends (the entry is deleted): it must run out of memory too.
SETTLE_FLAGS = "allow-oom"
SETTLE = """
-- KEYS[1] stream, KEYS[2] delayed zset, KEYS[3] dead-letter stream, then two keys
--   per delivery: its job record and done list (the stream twice when it has no job).
-- ARGV[1] group, ARGV[2] ttl in ms of a final record and its token, ARGV[3] now
--   (epoch s: finished_at of the jobs that returned), ARGV[4] dead letters to keep,
--   about (0: all), then per delivery: entry id, kind, and what that kind takes:
--   'done' result                   the job returned (the common case, kept short)
--   'ack'                           only ack it (a duplicate of an ended job)
--   'end'  n, n record args, m, m dead-letter args (m may be 0): failed or dead
--   'retry' n, n record args, 2, score, next attempt's envelope: into the delayed zset
--   'back' n, n record args, 2, 'job', envelope: handed back, re-added to the stream
--   'bury' 0, m, m dead-letter args: not a job at all, dead-lettered
--   (record args are field/value pairs for the job's record.)
--   Optionally, after the last delivery: consumer, count (a read; see the end).
-- Returns one code per delivery: 1 settled; 0 not, it was settled already (by us
-- before a lost reply, or by a worker that reclaimed it): it must not be settled
-- twice; 2 acked, but the job had ended already: nothing else written.
local ttl = ARGV[2]

local function ended(job)
  local status = redis.call('HGET', job, 'status')
  return status == 'done' or status == 'failed' or status == 'dead' or status == 'cancelled'
end

local function notify(job, done)
  redis.call('PEXPIRE', job, ttl)
  redis.call('LPUSH', done, 'done')  -- the token; expires with the record
  redis.call('PEXPIRE', done, ttl)
  -- Wakes result(): each Queue's listener PSUBSCRIBEs to its done keys (results.py).
  redis.call('PUBLISH', done, 'done')
end

-- Settle the delivery whose entry id is ARGV[a]; its code, and where the next begins.
local function settle(job, done, a)
  local kind = ARGV[a + 1]
  local n, m, after = 0, 0, a + 2
  if kind == 'done' then
    after = a + 3
  elseif kind ~= 'ack' then
    n = tonumber(ARGV[a + 2])
    m = tonumber(ARGV[a + 3 + n])
    after = a + 4 + n + m
  end
  -- Still pending (in anyone's PEL)? Else it was settled already. The ack comes
  -- LAST: Redis does not undo a script's writes when a later command fails, so a
  -- failure half-way leaves the entry pending (reclaimed later), never acked
  -- without its outcome.
  if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[a], ARGV[a], 1) == 0 then
    return 0, after
  end
  local function ack(code)
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[a])
    -- Deleted now, not left for a trim by MINID: one long job still pending would pin
    -- every entry after it (a trim cannot pass it), and the stream would grow with the
    -- queue's history. The price: another group on this stream sees only what is not
    -- settled yet. (Redis 8.2's XACKDEL ... ACKED would delete once every group acked.)
    redis.call('XDEL', KEYS[1], ARGV[a])
    return code, after
  end
  if kind == 'done' then
    if ended(job) then return ack(2) end
    redis.call('HSET', job, 'status', 'done', 'result', ARGV[a + 2], 'finished_at', ARGV[3])
    notify(job, done)
    return ack(1)
  end
  if n > 0 then
    -- A final record stays final: another delivery of this job id ended it first.
    if ended(job) then return ack(2) end
    redis.call('HSET', job, unpack(ARGV, a + 3, a + 2 + n))
  end
  local p = a + 4 + n  -- the first of the m arguments
  if kind == 'retry' then
    redis.call('ZADD', KEYS[2], ARGV[p], ARGV[p + 1])
  elseif kind == 'back' then
    -- The record names the entry it waits as now: the old one is deleted below.
    redis.call('HSET', job, 'entry', redis.call('XADD', KEYS[1], '*', unpack(ARGV, p, p + m - 1)))
  elseif m > 0 and ARGV[4] == '0' then  -- 'end' of a dead job, 'bury'
    redis.call('XADD', KEYS[3], '*', unpack(ARGV, p, p + m - 1))
  elseif m > 0 then
    -- '~': Redis drops only whole nodes of the stream (100 entries by default), cheap;
    -- the oldest letters go, for good (their job records stay dead until they expire).
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', unpack(ARGV, p, p + m - 1))
  end
  if kind == 'end' then notify(job, done) end
  return ack(1)
end

local out, a = {}, 5
for i = 4, #KEYS, 2 do
  local code
  code, a = settle(KEYS[i], KEYS[i + 1], a)
  out[#out + 1] = code
end
-- Then, when asked (ARGV[a] consumer, ARGV[a + 1] count), read new entries for the
-- slots just freed: {codes, the XREADGROUP reply}. In the script, not pipelined after
-- it, so that the read runs only when the settle did: a settle refused (NOSCRIPT after
-- a SCRIPT FLUSH) must not leave its worker holding more entries than its slots.
if ARGV[a] then
  return {out, redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[a], 'COUNT', ARGV[a + 1],
                          'STREAMS', KEYS[1], '>')}
end
return out
"""


class Script:
    """One script, run by its SHA1: loaded when Redis lacks it, with its flags where read.

        settle = Script(redis, SETTLE, flags=SETTLE_FLAGS)
        await settle(keys=[...], args=[...])

    ``flags`` go into a ``#!lua flags=...`` first line, which Redis 7 reads (``allow-oom``:
    run when out of memory). Redis 6.2 and fakeredis cannot compile that line: there the
    script runs without it, as scripts always did. NOSCRIPT (a restart or SCRIPT FLUSH
    emptied the cache) loads it again and runs it; for a pipeline, use redis-py's own
    ``register_script``, which loads before the pipeline runs.
    """

    def __init__(self, client: redis.asyncio.Redis, body: str, *, flags: str = "") -> None:
        self._plain = client.register_script(body)
        self._script = (client.register_script(f"#!lua flags={flags}\n{body}") if flags
                        else self._plain)

    @property
    def sha(self) -> str:
        """The SHA1 it runs by (of the body with its flags line, where the server reads it)."""
        return self._script.sha

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        for loads in range(1, _LOADS + 1):
            script = self._script  # this call's: another may switch it meanwhile
            try:
                return await script(keys=keys, args=args)
            except redis.exceptions.NoScriptError:
                if loads == _LOADS:
                    raise
            except redis.exceptions.ResponseError as exc:
                # Redis 6.2 ("Error compiling script") and fakeredis ("error loading
                # code") both stop at the first character of the flags line. Calls
                # sent together all fail so: each retries with the plain body.
                if script is self._plain or "near '#'" not in str(exc):
                    raise
                self._script = self._plain
