-- Add jobs. ARGV: [2] count, then per job 6 values:
--   id, task, payload, priority, delay_ms (relative, 0 = none), run_at_ms (absolute, 0 = none)
-- Returns per job: created (1, or 0 when the id already existed), state.
local out = {}
local added = 0
local count = tonumber(ARGV[2])
for i = 0, count - 1 do
  local b = 3 + i * 6
  local id = ARGV[b]
  local existing = redis.call('HGET', K_JOBS, id)
  if existing then
    out[#out + 1] = 0
    out[#out + 1] = cjson.decode(existing).state
  else
    local delay, run_at = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
    local due = 0
    if delay > 0 then due = now + delay elseif run_at > 0 then due = run_at end
    local rec = {task = ARGV[b + 1], prio = tonumber(ARGV[b + 3]), attempt = 0, stalls = 0, created = now}
    redis.call('HSET', K_PAYLOADS, id, ARGV[b + 2])
    if due > now then
      rec.state = 'delayed'
      rec.due = due
      redis.call('ZADD', K_DELAYED, due, id)
      emit('delayed', id, 'due', due)
    else
      push_waiting(id, rec)
      emit('enqueued', id)
    end
    save(id, rec)
    added = added + 1
    out[#out + 1] = 1
    out[#out + 1] = rec.state
  end
end
-- A delayed job may be due before what idle workers wait for: wake them too.
wake(added)
return out
