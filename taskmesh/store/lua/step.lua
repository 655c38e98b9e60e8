-- One worker round trip: apply a batch of updates from fenced holders, then
-- promote due delayed jobs and lease up to `want` waiting ones.
-- ARGV: [2] lease_ms, [3] want, [4] worker id, [5] promote limit,
--   [6] completed keep, [7] completed age ms, [8] failed keep, [9] failed age ms,
--   [10] JSON array of updates, each [kind, id, token, value, delay_ms, max_attempts]
--   kind: p = progress (value: JSON), l = log line, c = complete (value: result JSON),
--         f = fail (value: error JSON; delay_ms >= 0 retries while attempts remain, -1 never),
--         r = release (hand back without spending an attempt).
-- Returns {accepted flags per update, leased {id, token, attempt, task, payload}..., next due ms or -1}
-- KEYS[12], when given, is the worker's claim list: the step leases only if it holds a wake-up
-- token (moved there by the BLMOVE queued just before this step on the same connection).
local lease_ms, want, worker = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
if KEYS[12] and not redis.call('LPOP', KEYS[12]) then want = 0 end
local completed_keep, completed_age = tonumber(ARGV[6]), tonumber(ARGV[7])
local failed_keep, failed_age = tonumber(ARGV[8]), tonumber(ARGV[9])
local updates = cjson.decode(ARGV[10])
local accepted = {}
local completed, failed = 0, 0
local requeued, delayed_retry = 0, false

local ids = {}
for i, u in ipairs(updates) do ids[i] = u[2] end
preload(ids)
for i, u in ipairs(updates) do
  local kind, id, token, value = u[1], u[2], u[3], u[4]
  local rec = load(id)
  if not rec or rec.state ~= 'active' or rec.token ~= token then
    accepted[i] = 0
  else
    accepted[i] = 1
    if kind == 'p' then
      rec.progress = value
      emit('progress', id, 'progress', value)
    elseif kind == 'l' then
      local logs = rec.logs or {}
      logs[#logs + 1] = value
      if #logs > 100 then table.remove(logs, 1) end
      rec.logs = logs
      emit('log', id, 'message', value)
    elseif kind == 'c' then
      rec.result = value
      finish(id, rec, 'completed', K_COMPLETED)
      emit('completed', id)
      completed = completed + 1
    elseif kind == 'f' then
      local delay, max_attempts = u[5], u[6]
      rec.error = value
      if delay >= 0 and rec.attempt < max_attempts then
        zset_remove(K_ACTIVE, id)
        rec.token = nil
        if delay == 0 then
          push_waiting(id, rec)
          requeued = requeued + 1
        else
          rec.state = 'delayed'
          rec.due = now + delay
          zset_add(K_DELAYED, rec.due, id)
          delayed_retry = true
        end
        emit('retrying', id, 'attempt', rec.attempt, 'delay', delay)
      else
        finish(id, rec, 'failed', K_FAILED)
        emit('failed', id, 'attempt', rec.attempt)
        failed = failed + 1
      end
    elseif kind == 'r' then
      zset_remove(K_ACTIVE, id)
      rec.token = nil
      rec.attempt = rec.attempt - 1
      push_waiting(id, rec)
      requeued = requeued + 1
      emit('released', id)
    end
    save(id, rec)
  end
end

local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
preload(due)
for _, id in ipairs(due) do
  zset_remove(K_DELAYED, id)
  local rec = load(id)
  if rec then
    push_waiting(id, rec)
    save(id, rec)
    emit('waiting', id)
  end
end
flush()

local leased = {}
if want > 0 then
  local popped = redis.call('ZPOPMIN', K_WAITING, want)
  local popped_ids = {}
  for i = 1, #popped, 2 do popped_ids[#popped_ids + 1] = popped[i] end
  if #popped_ids > 0 then
    preload(popped_ids)
    local payloads = hmget(K_PAYLOADS, popped_ids)
    local token = redis.call('INCRBY', K_SEQ, #popped_ids) - #popped_ids
    for i, id in ipairs(popped_ids) do
      token = token + 1
      local rec = load(id)
      if rec then
        rec.state = 'active'
        rec.attempt = rec.attempt + 1
        rec.token = token
        rec.started = now
        rec.worker = worker
        save(id, rec)
        zset_add(K_ACTIVE, now + lease_ms, id)
        emit('active', id, 'attempt', rec.attempt)
        leased[#leased + 1] = {id, token, rec.attempt, rec.task, payloads[i] or ''}
      end
    end
  end
  -- More is runnable than this worker took: pass the wake-up on to another idle worker.
  if #leased == want and redis.call('ZCARD', K_WAITING) > 0 then wake(1) end
end
-- A worker that leases nothing (stopping) leaves what it put back to others, and a
-- backed-off retry may be due before idle workers would look again (as in enqueue): wake them.
local others = 0
if want == 0 then others = requeued end
if delayed_retry then others = others + 1 end
wake(others)

finalize()
if completed > 0 then trim(K_COMPLETED, completed_keep, completed_age, completed) end
if failed > 0 then trim(K_FAILED, failed_keep, failed_age, failed) end

local next_due = -1
local first = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
if #first > 0 then next_due = math.max(0, tonumber(first[2]) - now) end
return {accepted, leased, next_due}
