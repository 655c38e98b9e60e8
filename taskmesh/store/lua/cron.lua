-- Schedules' state in the queue's slot (TAG:cron, hash name -> JSON {last, job, paused}):
-- `last` is the latest tick handled (fired or passed over). ARGV: [2] op, [3] schedule name, then:
--   look: returns {state JSON or false, now}: the state and this node's clock, which fire checks against.
--   init, [4] '1' to restart: make the state if missing (or unreadable), `last` = now (ticks before a
--     schedule existed never fire); restart moves `last` to now (the schedule's timing changed).
--   pause | resume: ticks while paused pass unfired (resuming a paused schedule sets `last` = now).
--   remove: forget it.
--   fire, [4] task, [5] payload, [6] priority, [7] overlap ('allow' | 'skip'),
--     [8] JSON array of ticks (ms, ascending), [9] a tick to pass over unfired (0: none):
--     each tick later than `last` and not in the future enqueues job '<name>@<tick>' (once: the id
--     dedupes), unless overlap is 'skip' and the schedule's previous job is still waiting or active.
--     A schedule without state fires nothing (it was removed, or is being moved).
-- Returns the ids of the jobs enqueued (fire), the look result (look), else 1.
local K_CRON = TAG .. ':cron'
local op, name = ARGV[2], ARGV[3]

if op == 'remove' then
  redis.call('HDEL', K_CRON, name)
  return 1
end

local raw = redis.call('HGET', K_CRON, name)
local state = nil
if raw then
  local ok, decoded = pcall(cjson.decode, raw)
  if ok and type(decoded) == 'table' and type(decoded.last) == 'number' then state = decoded end
end

local function store()
  redis.call('HSET', K_CRON, name, cjson.encode(state))
end

if op == 'look' then
  return {state and cjson.encode(state) or false, now}
elseif op == 'init' then
  if not state then
    state = {last = now}  -- new, or unreadable: start afresh
  elseif ARGV[4] == '1' then
    state.last = math.max(state.last, now)
  else
    return 1
  end
  store()
  return 1
elseif op == 'pause' or op == 'resume' then
  state = state or {last = now}
  if op == 'pause' then
    state.paused = true
  elseif state.paused then
    state.paused = nil
    state.last = math.max(state.last, now)
  end
  store()
  return 1
elseif op ~= 'fire' then
  return redis.error_reply('unknown op ' .. op)
end
if not state then return {} end

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
      if add_job(id, task, payload, prio, 0, {schedule = name, tick = tick}, 'schedule', name, 'tick', tick) then
        fired[#fired + 1] = id
      end
      state.job = id
    end
  end
end
local pass = tonumber(ARGV[9])
if pass > state.last and pass <= now then state.last = pass end
store()
finalize()
wake(#fired)
return fired
