-- Add jobs. ARGV: [2] count, then per job 6 values:
--   id, task, payload, priority, delay_ms (relative, 0 = none), run_at_ms (absolute, 0 = none)
-- Returns per job: created (1, or 0 when the id already existed), state.
local count = tonumber(ARGV[2])

-- One job (the common call): no record cache, and the rest of the prelude is never built.
if count == 1 then
  local delay, run_at = tonumber(ARGV[7]), tonumber(ARGV[8])
  local due = 0
  if delay > 0 then due = now + delay elseif run_at > 0 then due = run_at end
  local created, state = add_job(ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), due, {})
  if created then wake(1) end
  return {created and 1 or 0, state}
end

-- The rest of the prelude follows here: a one-job call never builds its helpers.
-- @lib

-- An id already taken (by a record readable or not, or earlier in this batch) is left as it is, as in the
-- one-job path: enqueue is given only the keys it writes, so it never contains an unreadable record.
local ids = {}
for i = 0, count - 1 do ids[i + 1] = ARGV[3 + i * 6] end
local raws = hmget(K_JOBS, ids)
local out, payloads = {}, {}
local added = 0
local seq = 0
for i = 0, count - 1 do
  local b = 3 + i * 6
  local id = ARGV[b]
  local existing = records[id]
  if existing or raws[i + 1] then
    out[#out + 1] = 0
    out[#out + 1] = existing and existing.state or state_of(raws[i + 1]) or 'failed'
  else
    local delay, run_at = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
    local due = 0
    if delay > 0 then due = now + delay elseif run_at > 0 then due = run_at end
    local rec = {task = ARGV[b + 1], prio = tonumber(ARGV[b + 3]), attempt = 0, stalls = 0, created = now}
    payloads[#payloads + 1] = id
    payloads[#payloads + 1] = ARGV[b + 2]
    if due > now then
      rec.state = 'delayed'
      rec.due = due
      zset_add(K_DELAYED, due, id)
      emit('delayed', id, 'due', due)
    else
      if seq == 0 then seq = redis.call('INCRBY', K_SEQ, count) - count end
      seq = seq + 1
      rec.state = 'waiting'
      zset_add(K_WAITING, seq - rec.prio * PRIO_SPAN, id)
      emit('enqueued', id)
    end
    save(id, rec)
    added = added + 1
    out[#out + 1] = 1
    out[#out + 1] = rec.state
  end
end
bulk('HSET', K_PAYLOADS, payloads)
finalize()
-- A delayed job may be due before what idle workers wait for: wake them too.
wake(added)
return out
