-- Schedules' state in the queue's slot (K_CRON, hash name -> JSON {last, v, r, nv, job, paused}):
-- `last` is the latest tick handled (fired or passed over); `v` the version of the schedule's entry
-- the state is kept for (a digest of its stored JSON) and `r` its revision (the entry's `rev`: each
-- change a client makes stores the next; none: unordered); `nv` a version a client is about to store
-- (see `change`). ARGV: [2] op, [3] schedule name, then:
--   look, [4] version, [5] '1' to keep the adjustment, [6] a version that [4] replaced ('' if none, see
--     `adopt`), [7] revision: returns {state JSON or false, now}: the state as fire would find it for
--     this version of the entry (still kept for a newer version if [4] is older), and this node's clock,
--     which fire checks against. A scheduler keeps the adjustment (a listing only reads).
--   init, [4] version, [5] revision: make the state if missing (or unreadable): `last` = now (ticks
--     before a schedule existed never fire).
--   change, [4] version, [5] revision: called before a new or changed entry is stored: `last` = now
--     (no tick due before the change fires, under either version), and a scheduler that finds this
--     version stored keeps the state for it as it is (ticks after the change fire, even if a later call
--     failed).
--   pause | resume: ticks while paused pass unfired (resuming a paused schedule sets `last` = now).
--   remove: forget it.
--   fire, [4] version, [5] task, [6] payload, [7] priority, [8] overlap ('allow' | 'skip'),
--     [9] JSON array of ticks (ms, ascending), [10] a tick to pass over unfired (0: none), [11] revision:
--     each tick later than `last` and not in the future enqueues job '<name>@<tick>' (once: the id
--     dedupes), unless overlap is 'skip' and the schedule's previous job is still waiting or active.
--     A schedule without state fires nothing (it was removed, or is being moved).
-- A state kept for another version than the one a scheduler read restarts first (see `adopt`): so no
-- tick of an old version of a schedule fires under a new one, whatever became of the client's calls;
-- a version older than the one kept (by revision) is not taken back, so a scheduler that read the entry
-- just before a change does not restart the new version's state.
-- Returns the ids of the jobs enqueued (fire), the look result (look), else 1.
local op, name = ARGV[2], ARGV[3]

if op == 'remove' then
  redis.call('HDEL', K_CRON, name)
  return 1
end

-- The stored state, or nil if there is none or it is not one (written by hand, say; a `last` more than
-- a day ahead would stop the schedule): only the fields above, of the right types, are kept, so it
-- always encodes again.
local function read_state()
  local raw = redis.call('HGET', K_CRON, name)
  if not raw then return nil end
  local ok, d = pcall(cjson.decode, raw)
  if not ok or type(d) ~= 'table' or type(d.last) ~= 'number' then return nil end
  if not (d.last >= 0 and d.last <= now + 86400000) then return nil end  -- NaN included
  local s = {last = d.last, paused = d.paused == true or nil}
  for _, field in ipairs({'v', 'nv', 'job'}) do
    if type(d[field]) == 'string' then s[field] = d[field] end
  end
  if type(d.r) == 'number' and d.r >= 0 then s.r = d.r end
  return s
end

local state = read_state()

local function store()
  redis.call('HSET', K_CRON, name, cjson.encode(state))
end

-- Keep the state for `version` of the entry (revision `rev`, nil: unordered); true if it changed, nil if
-- it did not because `version` is older than the one kept (the caller read the entry before it changed:
-- it fires nothing). `over` takes an older version all the same when the state is still kept for `over`:
-- the caller found this state kept for `over` at its previous look, read the entries again, and found
-- `version` stored still (written back after `over`, by hand say). A state kept for another version
-- restarts (`last` = now), unless `change` announced this version (it restarted then, and the entry was
-- stored after) or the state is from before versions were kept (it takes the version as it is).
local function adopt(version, rev, over)
  if state.v == version then return false end
  if rev and state.v ~= nil and state.v ~= over and rev < (state.r or 0) then return nil end
  if state.nv ~= version and state.v ~= nil then state.last = math.max(state.last, now) end
  state.v, state.r, state.nv = version, rev, nil
  return true
end

if op == 'look' then
  if state and adopt(ARGV[4], tonumber(ARGV[7]), ARGV[6]) and ARGV[5] == '1' then store() end
  return {state and cjson.encode(state) or false, now}
elseif op == 'init' then
  if state then return 1 end
  state = {last = now, v = ARGV[4], r = tonumber(ARGV[5])}  -- new, or unreadable: start afresh
  store()
  return 1
elseif op == 'change' then
  local version = ARGV[4]
  state = state or {last = now, v = version, r = tonumber(ARGV[5])}
  state.last = math.max(state.last, now)
  state.nv = state.v ~= version and version or nil
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
if not state or adopt(ARGV[4], tonumber(ARGV[11])) == nil then return {} end

local task, payload, prio, overlap = ARGV[5], ARGV[6], tonumber(ARGV[7]), ARGV[8]
local fired = {}
for _, tick in ipairs(cjson.decode(ARGV[9])) do
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
local pass = tonumber(ARGV[10])
if pass > state.last and pass <= now then state.last = pass end
store()
finalize()
wake(#fired)
return fired
