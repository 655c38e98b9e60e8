-- Change a queue's settings. ARGV: [2] op, then per op:
--   pause | resume: workers stop / start leasing from the queue (enqueue always works);
--   limit, [3] task ('' for the whole queue), [4] JSON {rate, per, max} ('' to remove).
-- Emits 'paused', 'resumed' or 'limited' (job field empty); returns 1, or 0 for a limit set to
-- what it already was (nothing is written then).
local op = ARGV[2]
if op == 'pause' then
  redis.call('HSET', K_META, 'paused', '1')
  emit('paused', '')
elseif op == 'resume' then
  redis.call('HDEL', K_META, 'paused')
  emit('resumed', '')
elseif op == 'limit' then
  local task, field = ARGV[3], 'limit:' .. ARGV[3]
  local before = redis.call('HGET', K_META, field)
  if (before or '') == ARGV[4] then return 0 end
  -- Only a limit changed or removed can let a waiting job start.
  if before then wake(WAKEUP_CAP) end
  if ARGV[4] == '' then redis.call('HDEL', K_META, field) else redis.call('HSET', K_META, field, ARGV[4]) end
  -- A task's cap counts every active job of it from now on, those leased before it was set too.
  if task ~= '' and ARGV[4] ~= '' and cjson.decode(ARGV[4]).max then
    local active = redis.call('ZRANGE', K_ACTIVE, 0, -1)
    preload(active)
    local running = 0
    for _, id in ipairs(active) do
      local rec = load(id)
      if rec and rec.task == task then
        running = running + 1
        if not rec.counted then
          rec.counted, rec.capped = true, true
          save(id, rec)
        end
      end
    end
    redis.call('HSET', K_RUNNING, task, running)
  end
  emit('limited', '', 'task', ARGV[3], 'limit', ARGV[4])
else
  return redis.error_reply('unknown op ' .. op)
end
-- Resuming may let idle workers lease now.
if op == 'resume' then wake(WAKEUP_CAP) end
finalize()
return 1
