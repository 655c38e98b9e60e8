-- Extend the leases a worker holds. ARGV: [2] lease_ms, then pairs id, token.
-- Returns {ids whose lease is no longer this holder's, held ids whose cancellation was requested}.
-- Runs at maxmemory too (see allow_oom): a lease that could not be renewed would let the job run twice.
allow_oom()
local deadline = now + tonumber(ARGV[2])
local ids, tokens = {}, {}
for i = 3, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  tokens[#tokens + 1] = tonumber(ARGV[i + 1])
end
preload(ids)
local lost, renewed, cancel = {}, {}, {}
for i, id in ipairs(ids) do
  local rec = load(id)
  if rec and rec.state == 'active' and rec.token == tokens[i] then
    renewed[#renewed + 1] = deadline
    renewed[#renewed + 1] = id
    if rec.cancel then cancel[#cancel + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
-- (A held job another hand took out of 'active' goes back in.)
if #renewed > 0 then
  for i = 1, #renewed, CHUNK do
    redis.call('ZADD', K_ACTIVE, unpack(renewed, i, math.min(i + CHUNK - 1, #renewed)))
  end
end
send_events()  -- a record found unreadable was failed (see contain)
return {lost, cancel}
