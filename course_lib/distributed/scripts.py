"""Every Lua script of the job queue, with why each one must run as one atomic step.

    settle = redis.register_script(scripts.SETTLE)
    await settle(keys=[...], args=[...])

Redis runs a script with nothing in between: no other client's command lands
between two of its calls. That is what a Lua script buys over a MULTI: a
MULTI is atomic too, but it cannot look at one reply and decide what to write
next (ack only if the entry is still ours, add the job only if its id is free).
Every key a script touches is passed in ``KEYS`` and shares the queue's hash
tag (see ``keys``), so the scripts stay legal on Redis Cluster.

Who runs which: ``Queue`` runs ENQUEUE, MOVE_DUE and REQUEUE_DEAD; ``Worker``
runs START, HEARTBEAT and SETTLE.
"""

from __future__ import annotations

__all__ = ["ENQUEUE", "HEARTBEAT", "MOVE_DUE", "REQUEUE_DEAD", "SETTLE", "START"]

# Atomic because the id check and the add must not be split: two clients sending
# the same job_id at once (a retry after a timeout) would both see it free, and the
# job would run twice.
ENQUEUE = """
-- KEYS[1] job record, KEYS[2] stream, KEYS[3] done list
-- ARGV[1] envelope, ARGV[2] task, ARGV[3] attempt, ARGV[4] max_attempts, ARGV[5] enqueued_at
-- The id is taken while its record exists: check and add in one atomic step.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
-- A token left by an earlier job with this id (expiring just after its record)
-- would wake this job's waiters before it ends.
redis.call('DEL', KEYS[3])
local entry = redis.call('XADD', KEYS[2], '*', 'job', ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'queued', 'task', ARGV[2], 'attempt', ARGV[3],
           'max_attempts', ARGV[4], 'enqueued_at', ARGV[5], 'entry', entry)
return entry
"""

# Atomic because ZRANGEBYSCORE, XADD and ZREM must run with nothing in between:
# two workers moving at once would otherwise both read the same due jobs and move
# each one twice (a ZRANGEBYSCORE-then-ZREM from the client lets both read them).
MOVE_DUE = """
-- KEYS[1] delayed zset, KEYS[2] stream; ARGV[1] now (epoch s), ARGV[2] at most this many
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'job', job)
  redis.call('ZREM', KEYS[1], job)
end
return #due
"""

# Atomic because the record must not change between reading its status and
# marking it running: a duplicate entry of a job that has just ended would
# otherwise turn its final status back into "running".
START = """
-- KEYS[1] job record; ARGV: worker, started_at, attempt, max_attempts, task, enqueued_at
-- Returns the status when the job already ended (a duplicate entry), else marks it running.
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'done' or status == 'failed' or status == 'dead' then return status end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[2],
           'attempt', ARGV[3], 'max_attempts', ARGV[4], 'task', ARGV[5], 'enqueued_at', ARGV[6])
redis.call('HDEL', KEYS[1], 'next_at')
return false
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
           'error_type', 'error', 'traceback', 'reason')
redis.call('HSET', KEYS[3], 'status', 'queued', 'task', ARGV[3], 'attempt', '1',
           'max_attempts', ARGV[4], 'enqueued_at', ARGV[5], 'entry', entry)
redis.call('PERSIST', KEYS[3])  -- a queued record does not expire, as after enqueue
redis.call('XDEL', KEYS[1], ARGV[1])
return {1, entry}
"""

# Atomic because "is it still mine?" and "reset its idle time" must not be split:
# a worker that reclaimed the entry in between would lose it back to us.
HEARTBEAT = """
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id
-- Reset the entry's idle time, but only while it is still ours: a bare XCLAIM would
-- take it back from a worker that reclaimed it meanwhile.
if #redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2]) == 0 then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
"""

# Atomic because the ack and what follows it (result, retry, dead letter, wake-up
# token) must happen together or not at all: a crash between them would lose the
# job (acked, nothing written) or run it twice (written, not acked). And the
# writes depend on XACK's answer, which a MULTI could not express.
SETTLE = """
-- Settle one delivery in one atomic step: ack it and write what follows from it.
-- KEYS[1] stream, KEYS[2] job record, KEYS[3] done list, KEYS[4] the target:
--   delayed zset ('zadd': a retry), dead-letter stream or the stream itself ('xadd')
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] ttl in ms for record and token (0: none),
-- ARGV[4] action 'ack' | 'zadd' | 'xadd', ARGV[5] zadd score, ARGV[6] '1': push the
-- done token, ARGV[7] n, then n record field/value arguments, then the zadd member
-- or the xadd field/value pairs.
-- Nothing happens unless XACK acks: the delivery was settled already (by us before a
-- lost reply, or by a worker that reclaimed it), and must not be settled twice.
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('XDEL', KEYS[1], ARGV[2])
local n = tonumber(ARGV[7])
if n > 0 then
  local status = redis.call('HGET', KEYS[2], 'status')
  -- A final record stays final: another delivery of this job id ended it first.
  if status == 'done' or status == 'failed' or status == 'dead' then return 2 end
  redis.call('HSET', KEYS[2], unpack(ARGV, 8, 7 + n))
  if ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
end
local rest = 8 + n
if ARGV[4] == 'zadd' then
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[rest])
elseif ARGV[4] == 'xadd' then
  redis.call('XADD', KEYS[4], '*', unpack(ARGV, rest, #ARGV))
end
if ARGV[6] == '1' then
  redis.call('LPUSH', KEYS[3], 'done')
  if ARGV[3] ~= '0' then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
end
return 1
"""
