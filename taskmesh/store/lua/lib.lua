-- Shared prelude, prepended to every script by taskmesh/store/scripts.py.
-- KEYS (all share the queue's hash tag; enqueue gets the first 7, the keys it touches, every
-- other script all 12):
--   1 jobs (hash id -> JSON record)   2 payloads (hash id -> JSON payload)
--   3 waiting (zset)  4 delayed (zset, due ms)
--   5 events (stream)  6 seq (counter: FIFO order and fencing tokens)  7 wakeup (list)
--   8 active (zset, lease deadline ms)  9 completed  10 failed  11 cancelled (zsets, finish ms)
--   12 meta (hash: 'paused', and limits as JSON {rate, per, max} under 'limit:' for the
--      queue and 'limit:<task>' for a task)
-- Derived keys, named from the same hash tag (so in the same Cluster slot): TAG:running (hash
-- task -> active jobs leased under the task's max), TAG:rate and TAG:rate:<task> (sliding-window
-- logs of lease times, zsets token -> ms).
-- ARGV[1] is always the events stream's approximate MAXLEN.
--
-- Writes are batched: records are read once (cached), zset changes are collected, and
-- flush() sends each kind in one command; the stream is trimmed once per script.
local K_JOBS, K_PAYLOADS, K_WAITING, K_DELAYED = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_EVENTS, K_SEQ, K_WAKEUP = KEYS[5], KEYS[6], KEYS[7]
local K_ACTIVE, K_COMPLETED, K_FAILED, K_CANCELLED, K_META = KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local MAXLEN = ARGV[1]
local WAKEUP_CAP = 16
-- Waiting score: higher priority first, FIFO within a priority (|prio| <= 1000, seq < 2^40).
local PRIO_SPAN = 1099511627776

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- The first event of a script trims the stream as it is added (one command for the common
-- single-event script); a script that emits more trims once more in finalize().
local emitted = 0
local function emit(event, id, ...)
  if emitted == 0 then
    redis.call('XADD', K_EVENTS, 'MAXLEN', '~', MAXLEN, '*', 'event', event, 'job', id, ...)
  else
    redis.call('XADD', K_EVENTS, '*', 'event', event, 'job', id, ...)
  end
  emitted = emitted + 1
end

local function wake(n)
  -- A full list already wakes every idle worker: then add nothing (a read, not two writes).
  n = math.min(n, WAKEUP_CAP - redis.call('LLEN', K_WAKEUP))
  if n <= 0 then return end
  local tokens = {}
  for i = 1, n do tokens[i] = '1' end
  redis.call('LPUSH', K_WAKEUP, unpack(tokens))
end

-- Add one job unless its id is taken: its record (plus the `extra` fields), its payload, its place in
-- waiting (or delayed, when `due` is later than now) and its event (plus the fields in `...`).
-- Returns true and its state, or false and the state of the job that has the id.
local function add_job(id, task, payload, prio, due, extra, ...)
  local rec = {task = task, prio = prio, attempt = 0, stalls = 0, created = now, state = 'waiting'}
  for k, v in pairs(extra) do rec[k] = v end
  if due > now then rec.state, rec.due = 'delayed', due end
  if redis.call('HSETNX', K_JOBS, id, cjson.encode(rec)) == 0 then
    return false, cjson.decode(redis.call('HGET', K_JOBS, id)).state
  end
  redis.call('HSET', K_PAYLOADS, id, payload)
  if rec.due then
    redis.call('ZADD', K_DELAYED, due, id)
    emit('delayed', id, 'due', due, ...)
  else
    redis.call('ZADD', K_WAITING, redis.call('INCR', K_SEQ) - prio * PRIO_SPAN, id)
    emit('enqueued', id, ...)
  end
  return true, rec.state
end

-- What comes before the next line is all a script's early part may use (see scripts.py).
-- @end-of-head

local TAG = string.sub(K_JOBS, 1, -6)
local K_RUNNING = TAG .. ':running'
local CHUNK = 1000

-- Run `cmd key <items...>` in chunks small enough for unpack().
local function bulk(cmd, key, items)
  for i = 1, #items, CHUNK do
    redis.call(cmd, key, unpack(items, i, math.min(i + CHUNK - 1, #items)))
  end
end

-- HMGET in chunks: the values of `ids` in order (false where missing).
local function hmget(key, ids)
  local out = {}
  for i = 1, #ids, CHUNK do
    local part = redis.call('HMGET', key, unpack(ids, i, math.min(i + CHUNK - 1, #ids)))
    for j = 1, #part do out[i + j - 1] = part[j] end
  end
  return out
end

local records, dirty = {}, {}
local zadd, zrem = {}, {}

local function preload(ids)
  if #ids == 0 then return end
  local raws = hmget(K_JOBS, ids)
  for i, id in ipairs(ids) do
    if records[id] == nil then records[id] = raws[i] and cjson.decode(raws[i]) or false end
  end
end

local function load(id)
  local rec = records[id]
  if rec == nil then
    local raw = redis.call('HGET', K_JOBS, id)
    rec = raw and cjson.decode(raw) or false
    records[id] = rec
  end
  return rec or nil
end

local function save(id, rec)
  records[id] = rec
  dirty[#dirty + 1] = id
end

local function zset_add(key, score, id)
  local list = zadd[key]
  if not list then list = {}; zadd[key] = list end
  list[#list + 1] = score
  list[#list + 1] = id
end

local function zset_remove(key, id)
  local list = zrem[key]
  if not list then list = {}; zrem[key] = list end
  list[#list + 1] = id
end

local function flush()
  local args, seen = {}, {}
  for _, id in ipairs(dirty) do
    if not seen[id] and records[id] then
      seen[id] = true
      args[#args + 1] = id
      args[#args + 1] = cjson.encode(records[id])
    end
  end
  dirty = {}
  bulk('HSET', K_JOBS, args)
  for key, ids in pairs(zrem) do bulk('ZREM', key, ids) end
  for key, pairs_ in pairs(zadd) do bulk('ZADD', key, pairs_) end
  zadd, zrem = {}, {}
end

local function push_waiting(id, rec)
  local seq = redis.call('INCR', K_SEQ)
  rec.state = 'waiting'
  rec.due = nil
  zset_add(K_WAITING, seq - rec.prio * PRIO_SPAN, id)
end


-- Finished jobs are trimmed with bounded work per call: keep at most `keep`
-- (-1: no count limit) and none older than `age_ms` (-1: no age limit). A call that
-- finished `finished` jobs removes up to max(TRIM_BATCH, 2 * finished) per limit: twice
-- what it added, so retention holds under any load and a backlog shrinks. Call after flush().
local TRIM_BATCH = 32
local function forget(ids)
  bulk('HDEL', K_JOBS, ids)
  bulk('HDEL', K_PAYLOADS, ids)
end

local function trim(zkey, keep, age_ms, finished)
  local limit = math.max(TRIM_BATCH, 2 * finished)
  if keep >= 0 then
    local excess = redis.call('ZCARD', zkey) - keep
    if excess > 0 then
      local popped = redis.call('ZPOPMIN', zkey, math.min(excess, limit))
      local ids = {}
      for i = 1, #popped, 2 do ids[#ids + 1] = popped[i] end
      forget(ids)
    end
  end
  if age_ms >= 0 then
    local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', now - age_ms, 'LIMIT', 0, limit)
    bulk('ZREM', zkey, old)
    forget(old)
  end
end

-- A stored limit, or nil if it is not one (written by hand, say): {rate, per} and/or max, whole
-- numbers >= 1. A malformed limit is ignored rather than stopping every lease of the queue.
local function read_limit(raw)
  local ok, limit = pcall(cjson.decode, raw)
  if not ok or type(limit) ~= 'table' then return nil end
  local function whole(v) return type(v) == 'number' and v >= 1 and v == math.floor(v) end
  local out = {}
  if limit.rate ~= nil or limit.per ~= nil then
    if not (whole(limit.rate) and whole(limit.per)) then return nil end
    out.rate, out.per = limit.rate, limit.per
  end
  if limit.max ~= nil then
    if not whole(limit.max) then return nil end
    out.max = limit.max
  end
  if not out.rate and not out.max then return nil end
  return out
end

-- Jobs that left 'active' after being leased under a concurrency cap: each may let another start.
local capped_exits = 0

-- Call last: write what is pending, wake workers a freed capped slot may let lease, and trim
-- the event stream once.
local function finalize()
  flush()
  if capped_exits > 0 and redis.call('ZCARD', K_WAITING) > 0 then wake(capped_exits) end
  if emitted > 1 then redis.call('XTRIM', K_EVENTS, 'MAXLEN', '~', MAXLEN) end
end

-- A job leaves 'active': its lease ends, and a task's running count drops if it was counted.
local function leave_active(id, rec)
  zset_remove(K_ACTIVE, id)
  rec.token = nil
  if rec.counted then redis.call('HINCRBY', K_RUNNING, rec.task, -1) end
  if rec.capped then capped_exits = capped_exits + 1 end
  rec.counted, rec.capped = nil, nil
end

-- A job reaches a final state (from any state; the caller removes it from where it was).
local function close(id, rec, state, zkey)
  rec.state = state
  rec.due = nil
  rec.finished = now
  zset_add(zkey, now, id)
end

local function finish(id, rec, state, zkey)
  leave_active(id, rec)
  close(id, rec, state, zkey)
end
