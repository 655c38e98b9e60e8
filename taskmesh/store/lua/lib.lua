-- Shared prelude, prepended to every script by taskmesh/store/scripts.py.
-- KEYS: the queue's keys in the order of QUEUE_KEY_NAMES (taskmesh/store/keys.py says what each holds),
-- all under the queue's hash tag (one Cluster slot). scripts.py declares each as a local K_<NAME>: the
-- first ENQUEUE_KEYS (those enqueue gets, the only ones this head may use) before the prelude, the others
-- after its head, with N_QUEUE_KEYS, their number (KEYS after them are a script's own: step's claim list).
-- Every key a script touches comes in KEYS (Cluster routing and ACL checks rely on it) but for one kind,
-- which exists per task: a task's rate log, K_RATE .. ':' .. task, named from K_RATE (so in its slot).
-- ARGV[1] is always the events stream's approximate MAXLEN.
--
-- Writes are batched: records are read once (cached), zset changes are collected, and
-- flush() sends each kind in one command; the stream is trimmed once per script.
local MAXLEN = ARGV[1]
local WAKEUP_CAP = 16
-- Waiting score: higher priority first, FIFO within a priority (|prio| <= 1000, seq < 2^40).
local PRIO_SPAN = 1099511627776

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

-- An event on the queue's stream. Adding it trims the stream (MAXLEN ~) when it is the script's first
-- (one command for the common single-event script) or `trim` asks it: send_events() asks it of the last
-- of each batch. A script whose last event did not trim trims once more in finalize().
-- Events announce changes already written, so a refused one (a stream of the wrong type, or whose ids
-- are used up) never turns a change into an error: it is lost, and `events_refused` says why.
local emitted, untrimmed, events_refused = 0, false, false
local function send(trim, ...)
  local reply
  trim = trim or emitted == 0
  if trim then
    reply = redis.pcall('XADD', K_EVENTS, 'MAXLEN', '~', MAXLEN, '*', ...)
  else
    reply = redis.pcall('XADD', K_EVENTS, '*', ...)
  end
  if type(reply) == 'table' and reply.err then
    events_refused = reply.err
  else
    emitted, untrimmed = emitted + 1, not trim
  end
end

-- Wake-ups only save idle workers a wait, so a broken wakeup list (not a list) never fails a script.
local function wake(n)
  if n <= 0 then return end
  -- A full list already wakes every idle worker: then add nothing (a read, not two writes).
  local queued = redis.pcall('LLEN', K_WAKEUP)
  if type(queued) ~= 'number' then return end
  n = math.min(n, WAKEUP_CAP - queued)
  if n <= 0 then return end
  local tokens = {}
  for i = 1, n do tokens[i] = '1' end
  redis.pcall('LPUSH', K_WAKEUP, unpack(tokens))
end

-- The state of the job recorded as `raw`, or nil if the record cannot be read.
local function state_of(raw)
  local ok, rec = pcall(cjson.decode, raw)
  if ok and type(rec) == 'table' and type(rec.state) == 'string' then return rec.state end
  return nil
end

-- The error a redis.pcall() reply holds, or nil.
local function refused(reply)
  return type(reply) == 'table' and reply.err or nil
end

-- Add one job unless its id is taken: its record (plus the `extra` fields), its payload, its place in
-- waiting (or delayed, when `due` is later than now) and its event (plus the fields in `...`).
-- Returns true and its state, or false and the state of the job that has the id.
-- The record goes first (HSETNX finds a taken id); a later write refused (a key of the wrong type) takes
-- it back and fails the script, so no job seems queued that never runs.
local function add_job(id, task, payload, prio, due, extra, ...)
  local rec = {task = task, prio = prio, attempt = 0, stalls = 0, created = now, state = 'waiting'}
  for k, v in pairs(extra) do rec[k] = v end
  if due > now then rec.state, rec.due = 'delayed', due end
  if redis.call('HSETNX', K_JOBS, id, cjson.encode(rec)) == 0 then
    return false, state_of(redis.call('HGET', K_JOBS, id)) or 'failed'
  end
  local err = refused(redis.pcall('HSET', K_PAYLOADS, id, payload))
  if not err and rec.due then
    err = refused(redis.pcall('ZADD', K_DELAYED, due, id))
  elseif not err then
    local seq = redis.pcall('INCR', K_SEQ)
    err = refused(seq) or refused(redis.pcall('ZADD', K_WAITING, seq - prio * PRIO_SPAN, id))
  end
  if err then
    redis.pcall('HDEL', K_PAYLOADS, id)
    redis.call('HDEL', K_JOBS, id)
    error({err = err})
  end
  if rec.due then
    send(false, 'event', 'delayed', 'job', id, 'due', due, ...)
  else
    send(false, 'event', 'enqueued', 'job', id, ...)
  end
  return true, rec.state
end

-- What comes before the next line is all a script's early part may use (see scripts.py).
-- @end-of-head

local CHUNK = 1000

-- Events go out after the state they announce is written (flush() sends them last), so a script refused
-- half-way announces nothing it did not do.
local unsent = {}
local function emit(event, id, ...)
  unsent[#unsent + 1] = {'event', event, 'job', id, ...}
end

local function send_events()
  local n = #unsent
  for i = 1, n do send(i == n, unpack(unsent[i])) end
  unsent = {}
end

-- At maxmemory (policy noeviction) Redis refuses a script's first write if it may grow memory, and then
-- lets every later write through (a script cannot stop half-way). So a script that takes on work calls
-- out_of_memory() before its first write, and one that records what running jobs report (results, lease
-- renewals) calls allow_oom() first, so a full Redis cannot make a finished job run again. Both are
-- writes that change nothing, on a key no script creates (`never`), whatever its type: SETRANGE of an
-- empty value may grow memory (Redis refuses it when full), HDEL cannot (Redis lets it and what follows).
local function out_of_memory()
  local err = refused(redis.pcall('SETRANGE', K_NEVER, 0, ''))
  return err ~= nil and string.find(err, 'OOM', 1, true) ~= nil
end

local function allow_oom()
  redis.pcall('HDEL', K_NEVER, '')
end

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

-- A record is read and checked before a script writes anything that depends on it: Redis does not roll
-- back a script that fails half-way. Checked are the fields the scripts compute with (a type() call costs
-- hundreds of instructions in Redis's Lua, so no more): the task, the state, the counts, the due time and
-- the logs. The others are only stored, and whoever reads them checks them (JobStatus.from_record).
local STATES = {waiting = true, delayed = true, active = true, completed = true, failed = true, cancelled = true}
local HUGE = math.huge

local function finite(v)
  return type(v) == 'number' and v == v and v ~= HUGE and v ~= -HUGE
end

-- The record stored as `raw`, or nil and what is wrong with it. Fields of a later version are kept (see
-- encode_record for one that cannot be written back).
local function parse_record(raw)
  local ok, rec = pcall(cjson.decode, raw)
  if not ok or type(rec) ~= 'table' then return nil, 'not a JSON object' end
  if type(rec.task) ~= 'string' or not STATES[rec.state] then
    return nil, 'its task or state is missing or unknown'
  end
  if not (finite(rec.attempt) and finite(rec.stalls) and finite(rec.prio)) then
    return nil, 'its attempt, stalls or prio is not a number'
  end
  if rec.due ~= nil and not finite(rec.due) then return nil, 'its due time is not a number' end
  local logs = rec.logs
  if logs ~= nil then
    if type(logs) ~= 'table' then return nil, 'its logs are not a list' end
    local n = 0
    for _, line in pairs(logs) do
      n = n + 1
      if type(line) ~= 'string' then return nil, 'its logs are not lines of text' end
    end
    if n ~= #logs then return nil, 'its logs are not a list' end
  end
  return rec
end

-- A record as JSON. One that cannot be written back (a number JSON cannot hold, in a field the scripts
-- do not check) keeps only the fields they do, plus the texts.
local function encode_record(rec)
  local ok, text = pcall(cjson.encode, rec)
  if ok then return text end
  local kept = {}
  for k, v in pairs(rec) do
    if type(k) == 'string' and (type(v) == 'string' or type(v) == 'boolean' or finite(v) or k == 'logs') then
      kept[k] = v
    end
  end
  return cjson.encode(kept)
end

-- A record that cannot be read: the job ends failed, with why in its error and the start of what was
-- stored, and leaves every other state set (at once: `contained` lists them). Returns the new record.
local contained = {}
local function contain(id, raw, why)
  contained[id] = true
  local ok, old = pcall(cjson.decode, raw)
  local task = ok and type(old) == 'table' and type(old.task) == 'string' and old.task or '?'
  local shown = string.gsub(string.sub(raw, 1, 120), '[^%w%p ]', '?')
  local message = 'the job record in Redis could not be read (' .. why .. '), so the job was failed; it held: ' .. shown
  local err = cjson.encode({type = 'CorruptRecord', message = message, traceback = ''})
  local rec = {task = task, state = 'failed', attempt = 0, stalls = 0, prio = 0, created = now, finished = now, error = err}
  -- Its place in 'failed' first (refused: nothing changed), then the record; a copy left in another set (a
  -- key of the wrong type refused the removal) is dropped by the script that meets it, as the record says failed.
  redis.call('ZADD', K_FAILED, now, id)
  redis.call('HSET', K_JOBS, id, cjson.encode(rec))
  for _, key in ipairs({K_WAITING, K_DELAYED, K_ACTIVE, K_COMPLETED, K_CANCELLED}) do redis.pcall('ZREM', key, id) end
  emit('failed', id, 'reason', 'corrupt record')
  return rec
end

local function read(id, raw)
  if not raw then return false end
  local rec, why = parse_record(raw)
  return rec or contain(id, raw, why)
end

local function preload(ids)
  if #ids == 0 then return end
  local raws = hmget(K_JOBS, ids)
  for i, id in ipairs(ids) do
    if records[id] == nil then records[id] = read(id, raws[i]) end
  end
end

-- The job's record (nil if there is none); an unreadable one comes back failed (see contain).
local function load(id)
  local rec = records[id]
  if rec == nil then
    rec = read(id, redis.call('HGET', K_JOBS, id))
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

-- Write what is pending: first every job's new place, then its removal from the old one, then the records
-- (their key was read, so its type is known), and the events last. A write refused part-way (a state set of
-- the wrong type) then leaves a job where it was, or in two sets, never in none.
local function flush()
  local args, seen = {}, {}
  for _, id in ipairs(dirty) do
    if not seen[id] and records[id] then
      seen[id] = true
      args[#args + 1] = id
      args[#args + 1] = encode_record(records[id])
    end
  end
  dirty = {}
  for key, pairs_ in pairs(zadd) do bulk('ZADD', key, pairs_) end
  for key, ids in pairs(zrem) do bulk('ZREM', key, ids) end
  bulk('HSET', K_JOBS, args)
  zadd, zrem = {}, {}
  send_events()
end

-- A job found in the set `key` though its record names another state (another hand wrote one of them):
-- the entry leaves `key`, and if the set its record names does not hold it, it goes there, so the job is
-- in one set, never in none. An active one goes there with its lease expired: the sweep recovers it.
local function misplaced(id, rec, key)
  zset_remove(key, id)
  local home = ({waiting = K_WAITING, delayed = K_DELAYED, active = K_ACTIVE, completed = K_COMPLETED,
    failed = K_FAILED, cancelled = K_CANCELLED})[rec.state]
  if redis.call('ZSCORE', home, id) then return end
  local score = now
  if rec.state == 'waiting' then
    score = redis.call('INCR', K_SEQ) - rec.prio * PRIO_SPAN
  elseif rec.state == 'delayed' then
    score = rec.due or now
  elseif rec.state ~= 'active' then
    score = tonumber(rec.finished) or now
  end
  zset_add(home, score, id)
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
-- The records and payloads of jobs trimmed from the set of `state`; a record that says the job is
-- elsewhere (its id was a stray copy in that set) is kept.
local function forget(ids, state)
  if #ids == 0 then return end
  local marker, raws, gone = '"state":"' .. state .. '"', hmget(K_JOBS, ids), {}
  for i, id in ipairs(ids) do
    if not raws[i] or string.find(raws[i], marker, 1, true) then gone[#gone + 1] = id end
  end
  bulk('HDEL', K_JOBS, gone)
  bulk('HDEL', K_PAYLOADS, gone)
end

local function trim_now(zkey, state, keep, age_ms, finished)
  local limit = math.max(TRIM_BATCH, 2 * finished)
  if keep >= 0 then
    local excess = redis.call('ZCARD', zkey) - keep
    if excess > 0 then
      local popped = redis.call('ZPOPMIN', zkey, math.min(excess, limit))
      local ids = {}
      for i = 1, #popped, 2 do ids[#ids + 1] = popped[i] end
      forget(ids, state)
    end
  end
  if age_ms >= 0 then
    local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', now - age_ms, 'LIMIT', 0, limit)
    bulk('ZREM', zkey, old)
    forget(old, state)
  end
end

-- Retention is housekeeping after a script's changes are written: a failure there (a key of the wrong type)
-- must not turn a change already made into an error its caller would act on.
local function trim(zkey, state, keep, age_ms, finished)
  pcall(trim_now, zkey, state, keep, age_ms, finished)
end

-- A stored limit, or nil if it is not one (written by hand, say): {rate, per} and/or max, whole numbers
-- >= 1, rate at most 100,000 and per (ms) at most a day, as taskmesh.limits.Limit checks them. A limit
-- that is not one is ignored rather than stopping every lease of the queue (queue_settings reports it).
local function read_limit(raw)
  local ok, limit = pcall(cjson.decode, raw)
  if not ok or type(limit) ~= 'table' then return nil end
  local function whole(v, most) return type(v) == 'number' and v >= 1 and v <= most and v == math.floor(v) end
  local out = {}
  if limit.rate ~= nil or limit.per ~= nil then
    if not (whole(limit.rate, 100000) and whole(limit.per, 86400000)) then return nil end
    out.rate, out.per = limit.rate, limit.per
  end
  if limit.max ~= nil then
    if not whole(limit.max, 2 ^ 53) then return nil end
    out.max = limit.max
  end
  if not out.rate and not out.max then return nil end
  return out
end

-- Jobs that left 'active' after being leased under a concurrency cap: each may let another start.
local capped_exits = 0

-- Call last: write what is pending, wake workers a freed capped slot may let lease, and trim
-- the event stream if its last event did not.
local function finalize()
  flush()
  if capped_exits > 0 then
    local waiting = redis.pcall('ZCARD', K_WAITING)
    if type(waiting) == 'number' and waiting > 0 then wake(capped_exits) end
  end
  if untrimmed then redis.call('XTRIM', K_EVENTS, 'MAXLEN', '~', MAXLEN) end
end

-- Change a task's count of running jobs (see the task caps in step.lua). A count that is not a number
-- (written by hand) starts again rather than failing the script; setting the task's limit recounts it.
local function count_running(task, by)
  if type(redis.pcall('HINCRBY', K_RUNNING, task, by)) ~= 'number' then
    redis.pcall('HSET', K_RUNNING, task, math.max(by, 0))
  end
end

-- A job leaves 'active': its lease ends, and a task's running count drops if it was counted.
local function leave_active(id, rec)
  zset_remove(K_ACTIVE, id)
  rec.token = nil
  if rec.counted then count_running(rec.task, -1) end
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
