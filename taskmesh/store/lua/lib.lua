-- Shared prelude, prepended to every script by taskmesh/store/scripts.py.
-- KEYS (the same for every script; all share the queue's hash tag):
--   1 jobs (hash id -> JSON record)   2 payloads (hash id -> JSON payload)
--   3 waiting (zset)  4 delayed (zset, due ms)  5 active (zset, lease deadline ms)
--   6 completed  7 failed  8 cancelled (zsets, finish ms)
--   9 events (stream)  10 seq (counter: FIFO order and fencing tokens)  11 wakeup (list)
-- ARGV[1] is always the events stream's approximate MAXLEN.
local K_JOBS, K_PAYLOADS, K_WAITING, K_DELAYED, K_ACTIVE = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_COMPLETED, K_FAILED, K_CANCELLED = KEYS[6], KEYS[7], KEYS[8]
local K_EVENTS, K_SEQ, K_WAKEUP = KEYS[9], KEYS[10], KEYS[11]
local MAXLEN = ARGV[1]
local WAKEUP_CAP = 16
-- Waiting score: higher priority first, FIFO within a priority (|prio| <= 1000, seq < 2^40).
local PRIO_SPAN = 1099511627776

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local function emit(event, id, ...)
  redis.call('XADD', K_EVENTS, 'MAXLEN', '~', MAXLEN, '*', 'event', event, 'job', id, ...)
end

local function load(id)
  local raw = redis.call('HGET', K_JOBS, id)
  if not raw then return nil end
  return cjson.decode(raw)
end

local function save(id, rec)
  redis.call('HSET', K_JOBS, id, cjson.encode(rec))
end

local function push_waiting(id, rec)
  local seq = redis.call('INCR', K_SEQ)
  rec.state = 'waiting'
  rec.due = nil
  redis.call('ZADD', K_WAITING, seq - rec.prio * PRIO_SPAN, id)
end

local function wake(n)
  if n <= 0 then return end
  if n > WAKEUP_CAP then n = WAKEUP_CAP end
  local tokens = {}
  for i = 1, n do tokens[i] = '1' end
  redis.call('LPUSH', K_WAKEUP, unpack(tokens))
  redis.call('LTRIM', K_WAKEUP, 0, WAKEUP_CAP - 1)
end

-- Finished jobs are trimmed with bounded work per call: keep at most `keep`
-- (-1: no count limit) and none older than `age_ms` (-1: no age limit).
local TRIM_BATCH = 32
local function forget(ids)
  if #ids > 0 then
    redis.call('HDEL', K_JOBS, unpack(ids))
    redis.call('HDEL', K_PAYLOADS, unpack(ids))
  end
end

local function trim(zkey, keep, age_ms)
  if keep >= 0 then
    local excess = redis.call('ZCARD', zkey) - keep
    if excess > 0 then
      local popped = redis.call('ZPOPMIN', zkey, math.min(excess, TRIM_BATCH))
      local ids = {}
      for i = 1, #popped, 2 do ids[#ids + 1] = popped[i] end
      forget(ids)
    end
  end
  if age_ms >= 0 then
    local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', now - age_ms, 'LIMIT', 0, TRIM_BATCH)
    if #old > 0 then
      redis.call('ZREM', zkey, unpack(old))
      forget(old)
    end
  end
end

local function finish(id, rec, state, zkey)
  redis.call('ZREM', K_ACTIVE, id)
  rec.state = state
  rec.token = nil
  rec.finished = now
  redis.call('ZADD', zkey, now, id)
end
