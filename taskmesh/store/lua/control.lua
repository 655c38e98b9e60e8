-- Change a queue's settings. ARGV: [2] op, then per op:
--   pause | resume: workers stop / start leasing from the queue (enqueue always works);
--   limit, [3] task ('' for the whole queue), [4] JSON {rate, per, max} ('' to remove).
-- Emits 'paused', 'resumed' or 'limited' (job field empty); returns 1, or 0 for a limit set to
-- what it already was (then only the running count is checked).
allow_oom()  -- an operator can pause a queue or change its limits at maxmemory too
local op = ARGV[2]
if op == 'pause' then
  redis.call('HSET', K_META, 'paused', '1')
  emit('paused', '')
elseif op == 'resume' then
  redis.call('HDEL', K_META, 'paused')
  emit('resumed', '')
  wake(WAKEUP_CAP)
elseif op == 'limit' then
  local task, field, raw = ARGV[3], 'limit:' .. ARGV[3], ARGV[4]
  local limit = nil
  if raw ~= '' then
    limit = read_limit(raw)
    if not limit then return redis.error_reply('invalid limit ' .. raw) end
  end
  -- A cap counts every active job under it from now on, those leased before it was set too (for a
  -- task: its running count, checked again whenever the limit is set; for the queue: their ends wake).
  if limit and limit.max then
    local active = redis.call('ZRANGE', K_ACTIVE, 0, -1)
    preload(active)
    local running = 0
    for _, id in ipairs(active) do
      local rec = load(id)
      if rec and rec.state == 'active' and (task == '' or rec.task == task) then
        running = running + 1
        if not rec.capped or (task ~= '' and not rec.counted) then
          rec.capped = true
          if task ~= '' then rec.counted = true end
          save(id, rec)
        end
      end
    end
    if task ~= '' then redis.call('HSET', K_RUNNING, task, running) end
  end
  -- A log of starts must outlive the longest window it serves.
  if limit and limit.rate then
    local log = K_RATE
    if task ~= '' then log = log .. ':' .. task end
    redis.call('PEXPIRE', log, limit.per + 1)
  end
  local before = redis.call('HGET', K_META, field)
  if (before or '') == raw then
    finalize()
    return 0
  end
  if raw == '' then redis.call('HDEL', K_META, field) else redis.call('HSET', K_META, field, raw) end
  emit('limited', '', 'task', task, 'limit', raw)
  -- Only a limit changed or removed can let a waiting job start.
  if before then wake(WAKEUP_CAP) end
else
  return redis.error_reply('unknown op ' .. op)
end
finalize()
return 1
