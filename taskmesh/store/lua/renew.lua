-- Extend the leases a worker holds. ARGV: [2] lease_ms, then pairs id, token.
-- Returns the ids whose lease is no longer this holder's.
local deadline = now + tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local rec = load(id)
  if rec and rec.state == 'active' and rec.token == tonumber(ARGV[i + 1]) then
    redis.call('ZADD', K_ACTIVE, 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
