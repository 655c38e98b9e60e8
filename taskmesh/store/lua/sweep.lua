-- Recover stalled jobs: a lease whose deadline passed goes back to waiting
-- (the attempt is not spent); past max_stalls the job fails as lost, and a job
-- whose cancellation was requested ends cancelled.
-- ARGV: [2] max stalls, [3] batch limit, [4] failed keep, [5] failed age ms.
-- Returns {recovered ids, failed ids}. Runs at maxmemory too (see allow_oom).
allow_oom()
local max_stalls = tonumber(ARGV[2])
local expired = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
preload(expired)
local recovered, lost, cancelled = {}, {}, 0
for _, id in ipairs(expired) do
  local rec = load(id)
  if not rec then
    zset_remove(K_ACTIVE, id)
  elseif rec.state ~= 'active' then
    if not contained[id] then misplaced(id, rec, K_ACTIVE) end
  else
    rec.stalls = rec.stalls + 1
    if rec.cancel then
      finish(id, rec, 'cancelled', K_CANCELLED)
      emit('cancelled', id)
      cancelled = cancelled + 1
    elseif rec.stalls > max_stalls then
      rec.error = cjson.encode({type = 'WorkerLost', message = 'worker lost: the lease expired '
        .. rec.stalls .. ' times (max_stalls=' .. max_stalls .. ')', traceback = ''})
      finish(id, rec, 'failed', K_FAILED)
      emit('failed', id, 'attempt', rec.attempt, 'reason', 'worker lost')
      lost[#lost + 1] = id
    else
      leave_active(id, rec)
      rec.attempt = rec.attempt - 1
      push_waiting(id, rec)
      emit('stalled', id, 'stalls', rec.stalls)
      recovered[#recovered + 1] = id
    end
    save(id, rec)
  end
end
finalize()
if #lost > 0 then trim(K_FAILED, 'failed', tonumber(ARGV[4]), tonumber(ARGV[5]), #lost) end
if cancelled > 0 then trim(K_CANCELLED, 'cancelled', tonumber(ARGV[4]), tonumber(ARGV[5]), cancelled) end
if #recovered > 0 then wake(#recovered) end
return {recovered, lost}
