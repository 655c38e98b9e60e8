-- Cancel a job. ARGV: [2] job id, [3] cancelled keep, [4] cancelled age ms.
-- A waiting or delayed job is cancelled at once; an active one is marked, and its worker
-- stops it (it learns at its next lease renewal; the job ends cancelled whatever the run
-- reports, or when its lease expires). Returns the job's state afterwards: 'cancelled',
-- 'cancelling', the final state it already had, or 'missing'.
allow_oom()  -- cancelling frees memory, so it runs at maxmemory too
local id = ARGV[2]
local rec = load(id)
if not rec then return 'missing' end
local state = rec.state
if state == 'waiting' or state == 'delayed' then
  zset_remove(state == 'waiting' and K_WAITING or K_DELAYED, id)
  close(id, rec, 'cancelled', K_CANCELLED)
  save(id, rec)
  emit('cancelled', id)
  finalize()
  trim(K_CANCELLED, 'cancelled', tonumber(ARGV[3]), tonumber(ARGV[4]), 1)
  return 'cancelled'
elseif state == 'active' then
  if not rec.cancel then
    rec.cancel = true
    save(id, rec)
    emit('cancelling', id)
  end
  finalize()
  return 'cancelling'
end
send_events()  -- a record found unreadable was failed (see contain)
return state
