-- One worker round trip: apply a batch of updates from fenced holders, then
-- promote due delayed jobs and lease up to `want` waiting ones, within the queue's limits.
-- ARGV: [2] lease_ms, [3] want, [4] worker id, [5] promote limit,
--   [6] completed keep, [7] completed age ms, [8] failed keep, [9] failed age ms,
--   [10] JSON array of updates, each [kind, id, token, value, delay_ms, max_attempts] (scripts.Update; read
--   as u[U_KIND], u[U_ID], ...: scripts.py writes each field's position in)
--   kind: p = progress (value: JSON), l = log line, c = complete (value: result JSON),
--         f = fail (value: error JSON; delay_ms >= 0 retries while attempts remain, -1 never),
--         r = release (hand back without spending an attempt),
--         d = defer (back to delayed for delay_ms without spending an attempt; value: error JSON),
--         x = cancelled (the run stopped on a cancel request).
--   A job whose cancellation was requested ends 'cancelled' whatever its run reports.
-- Returns {accepted flags per update, leased {id, token, attempt, task, payload}...,
--   ms until a delayed job is due or a rate limit lets a waiting job start (-1: none),
--   ms until a rate limit lets a waiting job start (-1: no job is held back by a rate limit),
--   why nothing was leased though `want` asked for jobs ('OOM': Redis is out of memory; else the error
--   a command of the lease met) or false (the updates were applied either way),
--   the error a refused event met (the changes were made; their events are lost) or false}
-- KEYS[N_QUEUE_KEYS + 1], when given, is the worker's claim list: the step leases only if it holds a
-- wake-up token (moved there by the BLMOVE queued just before this step on the same connection).
-- Cancelled jobs follow the failed jobs' retention.
--
-- Everything that can fail is read or checked before the first write that depends on it: the
-- queue's settings and the updates first, each record when it is loaded (see contain). The lease runs
-- on its own under pcall, after the updates are written, and leaves 'waiting' only by flush(), after the
-- jobs' places in 'active': a command refused part-way (a key of the wrong type, a permission taken
-- away) leases nothing and never leaves a job out of every set.
local lease_ms, want, worker = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local paused, queue_limit, task_limits  -- see read_settings
-- The jobs this step leased ({id, token, attempt, task, payload} each), or why it leased none.
local leased, lease_refused = {}, false

-- The queue's settings: paused, and limits (see lib.lua).
local function read_settings()
  local paused, queue_limit, task_limits = false, nil, nil
  local meta = redis.call('HGETALL', K_META)
  for i = 1, #meta, 2 do
    local field = meta[i]
    if field == 'paused' then
      paused = true
    elseif field == 'limit:' then
      queue_limit = read_limit(meta[i + 1])
    elseif string.sub(field, 1, 6) == 'limit:' then
      local limit = read_limit(meta[i + 1])
      if limit then
        task_limits = task_limits or {}
        task_limits[string.sub(field, 7)] = limit
      end
    end
  end
  return paused, queue_limit, task_limits
end

local function to_delayed(id, rec, delay)
  rec.state = 'delayed'
  rec.due = now + delay
  zset_add(K_DELAYED, rec.due, id)
end

-- Returns the flag of each update (1: it came from the job's holder and was applied, else 0), and what
-- the updates did: jobs finished (completed, failed, cancelled), put back to wait (requeued), and
-- whether a retry was delayed.
local function apply_updates(updates)
  local accepted, ids = {}, {}
  local completed, failed, cancelled, requeued, delayed_retry = 0, 0, 0, 0, false
  for i, u in ipairs(updates) do ids[i] = u[U_ID] end
  preload(ids)
  for i, u in ipairs(updates) do
    local kind, id, token, value = u[U_KIND], u[U_ID], u[U_TOKEN], u[U_VALUE]
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
      elseif rec.cancel or kind == 'x' then
        if kind == 'c' then rec.result = value elseif kind == 'f' or kind == 'd' then rec.error = value end
        finish(id, rec, 'cancelled', K_CANCELLED)
        emit('cancelled', id)
        cancelled = cancelled + 1
      elseif kind == 'c' then
        rec.result = value
        finish(id, rec, 'completed', K_COMPLETED)
        emit('completed', id)
        completed = completed + 1
      elseif kind == 'f' then
        local delay, max_attempts = u[U_DELAY_MS], u[U_MAX_ATTEMPTS]
        rec.error = value
        if delay >= 0 and rec.attempt < max_attempts then
          leave_active(id, rec)
          if delay == 0 then
            push_waiting(id, rec)
            requeued = requeued + 1
          else
            to_delayed(id, rec, delay)
            delayed_retry = true
          end
          emit('retrying', id, 'attempt', rec.attempt, 'delay', delay)
        else
          finish(id, rec, 'failed', K_FAILED)
          emit('failed', id, 'attempt', rec.attempt)
          failed = failed + 1
        end
      elseif kind == 'r' then
        leave_active(id, rec)
        rec.attempt = rec.attempt - 1
        push_waiting(id, rec)
        requeued = requeued + 1
        emit('released', id)
      elseif kind == 'd' then
        leave_active(id, rec)
        rec.attempt = rec.attempt - 1
        rec.error = value
        to_delayed(id, rec, u[U_DELAY_MS])
        delayed_retry = true
        emit('deferred', id, 'delay', u[U_DELAY_MS])
      end
      save(id, rec)
    end
  end
  return accepted, completed, failed, cancelled, requeued, delayed_retry
end

-- Delayed jobs that are due go back to waiting (an entry whose record says otherwise leaves: see misplaced).
local function promote_due()
  local due = redis.call('ZRANGEBYSCORE', K_DELAYED, '-inf', now, 'LIMIT', 0, tonumber(ARGV[5]))
  preload(due)
  for _, id in ipairs(due) do
    zset_remove(K_DELAYED, id)
    local rec = load(id)
    if rec and rec.state == 'delayed' then
      push_waiting(id, rec)
      save(id, rec)
      emit('waiting', id)
    elseif rec and not contained[id] then
      misplaced(id, rec, K_DELAYED)
    end
  end
end

-- Sliding-window log of lease times: at most limit.rate leases in any `per` ms (window ends
-- included). Returns the free slots now and, when none, ms until one frees.
local function window(key, limit)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. (now - limit.per))
  local used = redis.call('ZCARD', key)
  if used < limit.rate then return limit.rate - used, 0 end
  local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  return 0, tonumber(oldest[2]) + limit.per + 1 - now
end

local function record_lease(key, limit, token)
  redis.call('ZADD', key, now, token)
  redis.call('PEXPIRE', key, limit.per + 1)
end

local retry_in = -1  -- ms until a rate limit lets a waiting job start
local function rate_blocked(wait)
  if retry_in < 0 or wait < retry_in then retry_in = wait end
end
-- Rate windows that held a waiting job back; once this step's leases are recorded, each says
-- when it frees a slot.
local held_back = {}

-- Lease up to `want` waiting jobs, within the queue's limits and their tasks'.
local function lease()
  -- Whether the entry `id` of 'waiting' can be leased: its record, or nil; `gone` when it already left
  -- 'waiting' (its record was contained). Any other entry without a waiting record leaves (see misplaced).
  local function leasable(id)
    local rec = load(id)
    if contained[id] then return nil, true end
    if rec and rec.state == 'waiting' then return rec, false end
    if rec then misplaced(id, rec, K_WAITING) else zset_remove(K_WAITING, id) end
    return nil, false
  end

  if want > 0 and queue_limit then
    if queue_limit.max then want = math.min(want, queue_limit.max - redis.call('ZCARD', K_ACTIVE)) end
    if queue_limit.rate and want > 0 then
      local free = window(K_RATE, queue_limit)
      if free < want then held_back[K_RATE] = queue_limit end
      want = math.min(want, free)
    end
  end

  -- The jobs to lease: the first `want` waiting ones; with task limits, the first that their
  -- task's limits allow, looking past blocked ones up to SCAN_DEPTH (or `want`) jobs deep, a chunk
  -- at a time. Entries without a waiting record (none, or it says the job is elsewhere) leave 'waiting'.
  local SCAN_DEPTH = 250
  local picked = {}
  if want > 0 and not task_limits then
    local start, examined = 0, 0
    while #picked < want and examined < want + SCAN_DEPTH do
      local candidates = redis.call('ZRANGE', K_WAITING, start, start + want - #picked - 1)
      if #candidates == 0 then break end
      start, examined = start + #candidates, examined + #candidates
      preload(candidates)
      for _, id in ipairs(candidates) do
        local rec, gone = leasable(id)
        if gone then
          start = start - 1
        elseif rec then
          picked[#picked + 1] = id
        end
      end
    end
  elseif want > 0 then
    local depth, chunk = math.max(SCAN_DEPTH, want), math.max(want, 32)
    local room = {}  -- task -> {free slots under its max, free starts in its rate window}
    local start, examined = 0, 0
    while #picked < want and start < depth and examined < 2 * depth do
      local candidates = redis.call('ZRANGE', K_WAITING, start, math.min(start + chunk, depth) - 1)
      if #candidates == 0 then break end
      start, examined = start + #candidates, examined + #candidates
      preload(candidates)
      for _, id in ipairs(candidates) do
        local rec, gone = leasable(id)
        local limit = rec and task_limits[rec.task]
        if gone then
          start = start - 1
        elseif limit then
          local r = room[rec.task]
          if not r then
            r = {cap = 1e9, rate = 1e9}
            if limit.max then r.cap = limit.max - (tonumber(redis.call('HGET', K_RUNNING, rec.task)) or 0) end
            if limit.rate then r.rate = window(K_RATE .. ':' .. rec.task, limit) end
            room[rec.task] = r
          end
          if r.cap > 0 and r.rate > 0 then
            picked[#picked + 1] = id
            r.cap, r.rate = r.cap - 1, r.rate - 1
          elseif r.cap > 0 then
            held_back[K_RATE .. ':' .. rec.task] = limit
          end
        elseif rec then
          picked[#picked + 1] = id
        end
        if #picked == want then break end
      end
    end
  end

  -- Lease the picked jobs. The limits' logs and counts go first, where a refused write (a permission taken
  -- away) costs at most a start counted against a rate window until it passes; then, by flush(), the jobs'
  -- places in 'active', their leaving 'waiting', their records and their events.
  if #picked > 0 then
    local payloads = hmget(K_PAYLOADS, picked)
    local token = redis.call('INCRBY', K_SEQ, #picked) - #picked
    local logs, counted = {}, {}
    for i, id in ipairs(picked) do
      token = token + 1
      local rec = load(id)
      leased[i] = {id, token, rec.attempt + 1, rec.task, payloads[i] or ''}
      local limit = task_limits and task_limits[rec.task]
      if limit and limit.rate then logs[#logs + 1] = {K_RATE .. ':' .. rec.task, limit, token} end
      if queue_limit and queue_limit.rate then logs[#logs + 1] = {K_RATE, queue_limit, token} end
      if limit and limit.max then counted[#counted + 1] = rec.task end
    end
    for _, entry in ipairs(logs) do record_lease(entry[1], entry[2], entry[3]) end
    if #counted > 0 then
      redis.call('ZCARD', K_ACTIVE)  -- a zset (else an error now, before a count changes)
      for _, task in ipairs(counted) do count_running(task, 1) end
    end
    for i, id in ipairs(picked) do
      local rec = load(id)
      rec.state = 'active'
      rec.attempt = leased[i][3]
      rec.token = leased[i][2]
      rec.started = now
      rec.worker = worker
      local limit = task_limits and task_limits[rec.task]
      if limit and limit.max then rec.counted, rec.capped = true, true end
      if queue_limit and queue_limit.max then rec.capped = true end
      save(id, rec)
      zset_add(K_ACTIVE, now + lease_ms, id)
      zset_remove(K_WAITING, id)
      emit('active', id, 'attempt', rec.attempt)
    end
    flush()
  end
  for key, limit in pairs(held_back) do
    local free, wait = window(key, limit)
    if free == 0 then rate_blocked(wait) end
  end
end

-- More is runnable than this worker took (`asked` jobs): pass the wake-up on to another idle worker (not
-- when the queue's limits held this worker back: they hold the others back too).
local function pass_wakeups(asked, requeued, delayed_retry)
  if asked > 0 and #leased == asked and redis.call('ZCARD', K_WAITING) > 0 then wake(1) end
  -- A worker that leases nothing (stopping) leaves what it put back to others, and a
  -- backed-off retry may be due before idle workers would look again (as in enqueue): wake them.
  local others = 0
  if tonumber(ARGV[3]) == 0 then others = requeued end
  if delayed_retry then others = others + 1 end
  wake(others)
end

local function trim_finished(completed, failed, cancelled)
  local completed_keep, completed_age = tonumber(ARGV[6]), tonumber(ARGV[7])
  local failed_keep, failed_age = tonumber(ARGV[8]), tonumber(ARGV[9])
  if completed > 0 then trim(K_COMPLETED, 'completed', completed_keep, completed_age, completed) end
  if failed > 0 then trim(K_FAILED, 'failed', failed_keep, failed_age, failed) end
  if cancelled > 0 then trim(K_CANCELLED, 'cancelled', failed_keep, failed_age, cancelled) end
end

-- ms until a delayed job is due or a rate limit lets a waiting job start (-1: neither).
local function next_due()
  local soonest = retry_in
  local first = redis.call('ZRANGE', K_DELAYED, 0, 0, 'WITHSCORES')
  if #first > 0 then
    local wait = math.max(0, tonumber(first[2]) - now)
    if soonest < 0 or wait < soonest then soonest = wait end
  end
  return soonest
end

-- The step, phase by phase. At maxmemory nothing is leased, but results and hand-backs are still
-- recorded: a finished job never runs again (see out_of_memory in lib.lua).
local oom = want > 0 and out_of_memory()
if want == 0 or oom then allow_oom() end
if oom then want, lease_refused = 0, 'OOM' end
paused, queue_limit, task_limits = read_settings()
if paused then want = 0 end
local updates = cjson.decode(ARGV[10])
local K_CLAIM = KEYS[N_QUEUE_KEYS + 1]
if K_CLAIM and not redis.call('LPOP', K_CLAIM) then want = 0 end
local accepted, completed, failed, cancelled, requeued, delayed_retry = apply_updates(updates)
promote_due()
flush()
local asked = want
-- The lease, on its own: a command refused there (a rate log or running count of the wrong type, a
-- permission taken away) leases nothing and is reported, but the updates above stay recorded.
if want > 0 then
  local ok, err = pcall(lease)
  if not ok then
    lease_refused = type(err) == 'table' and err.err or tostring(err)
    leased, records, dirty, zadd, zrem, unsent = {}, {}, {}, {}, {}, {}
  end
end
pass_wakeups(asked, requeued, delayed_retry)
finalize()
trim_finished(completed, failed, cancelled)
return {accepted, leased, next_due(), retry_in, lease_refused, events_refused}
