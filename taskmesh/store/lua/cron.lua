-- Schedules' state in the queue's slot (TAG:cron, hash name -> JSON {last, job, fired, paused}):
-- `last` is the latest tick handled (fired or passed over). ARGV: [2] op, [3] schedule name, then:
--   init: make the state if missing, `last` = now (ticks before a schedule existed never fire).
--   pause | resume: ticks while paused pass unfired (resume sets `last` = now). remove: forget it.
--   fire, [4] task, [5] payload, [6] priority, [7] overlap ('allow' | 'skip'),
--     [8] JSON array of ticks (ms, ascending), [9] a tick to pass over unfired (0: none):
--     each tick later than `last` and not in the future enqueues job '<name>@<tick>' (once: the id
--     dedupes), unless overlap is 'skip' and the schedule's previous job is still waiting or active.
-- Returns the ids of the jobs enqueued (fire), else 1.
local K_CRON = TAG .. ':cron'
local op, name = ARGV[2], ARGV[3]
local raw = redis.call('HGET', K_CRON, name)
local state = raw and cjson.decode(raw)

local function store()
  redis.call('HSET', K_CRON, name, cjson.encode(state))
end

if op == 'remove' then
  redis.call('HDEL', K_CRON, name)
  return 1
elseif op == 'init' or not state then
  if not state then
    state = {last = now}
    store()
  end
  if op == 'init' then return 1 end
  return {}
elseif op == 'pause' then
  state.paused = true
  store()
  return 1
elseif op == 'resume' then
  state.paused = nil
  state.last = math.max(state.last, now)
  store()
  return 1
elseif op ~= 'fire' then
  return redis.error_reply('unknown op ' .. op)
end

local task, payload, prio, overlap = ARGV[4], ARGV[5], tonumber(ARGV[6]), ARGV[7]
local fired = {}
for _, tick in ipairs(cjson.decode(ARGV[8])) do
  if tick > state.last and tick <= now then
    state.last = tick
    local previous = state.job and load(state.job)
    local busy = previous and (previous.state == 'waiting' or previous.state == 'delayed' or previous.state == 'active')
    if state.paused or (overlap == 'skip' and busy) then
      emit('tick_skipped', '', 'schedule', name, 'tick', tick, 'reason', state.paused and 'paused' or 'overlap')
    else
      local id = name .. '@' .. tick
      if not load(id) then
        local rec = {task = task, prio = prio, attempt = 0, stalls = 0, created = now, schedule = name, tick = tick}
        redis.call('HSET', K_PAYLOADS, id, payload)
        push_waiting(id, rec)
        save(id, rec)
        emit('enqueued', id, 'schedule', name, 'tick', tick)
        fired[#fired + 1] = id
      end
      state.job = id
      state.fired = now
    end
  end
end
local pass = tonumber(ARGV[9])
if pass > state.last and pass <= now then state.last = pass end
store()
finalize()
wake(#fired)
return fired
