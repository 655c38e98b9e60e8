-- Which commands the scripts use this Redis user may not run on this queue's keys: checked when a
-- worker starts, so a missing permission stops it at once instead of failing a script half-way.
-- Returns the denied ones as 'COMMAND key' strings, or false where Redis cannot tell (before 7.0).
-- (A user without TIME, which every script calls first, gets a permission error instead.)
if not redis.acl_check_cmd then return false end
-- Every command a script calls, with arguments of the right shape (`k` stands for the key).
local COMMANDS = {
  HDEL = {'f'}, HGET = {'f'}, HGETALL = {}, HINCRBY = {'f', '1'}, HMGET = {'f'}, HSET = {'f', 'v'},
  HSETNX = {'f', 'v'}, INCR = {}, INCRBY = {'1'}, LLEN = {}, LPOP = {}, LPUSH = {'1'}, PEXPIRE = {'1'},
  SETRANGE = {'0', ''}, XADD = {'*', 'f', 'v'}, XTRIM = {'MAXLEN', '1'}, ZADD = {'1', 'm'}, ZCARD = {},
  ZPOPMIN = {}, ZRANGE = {'0', '1'}, ZRANGEBYSCORE = {'0', '1'}, ZREM = {'m'}, ZREMRANGEBYSCORE = {'0', '1'},
  ZSCORE = {'m'},
}
-- The queue's keys, and a sample of each kind a script gets or names besides: a task's rate log, a claim list.
local keys = {K_RATE .. ':task', K_WAKEUP .. ':claim:w'}
for i = 1, N_QUEUE_KEYS do keys[#keys + 1] = KEYS[i] end
local denied = {}
for command, args in pairs(COMMANDS) do
  for _, key in ipairs(keys) do
    if not redis.acl_check_cmd(command, key, unpack(args)) then
      denied[#denied + 1] = command .. ' ' .. key
      break
    end
  end
end
table.sort(denied)
return denied
