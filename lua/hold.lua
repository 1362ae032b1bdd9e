#!lua
-- Put an event on hold for a lifecycle operation: issuing stops at once (I1 under sync/close).
-- KEYS[1] meta
-- ARGV[1] the hold status: 'syncing' or 'closed'
-- ARGV[2..5] quantity, starts_at (µs), ends_at (µs), expire_at (ms), from PostgreSQL,
--            written only where Redis has no state for the event (it lost its data)
-- Returns the status the event had before, or false if Redis had no state for it.
local meta_key = KEYS[1]
local hold, quantity, starts_at, ends_at, expire_at = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local previous = redis.call('HGET', meta_key, 'status')
if previous then
  redis.call('HSET', meta_key, 'status', hold)
else
  redis.call('HSET', meta_key, 'status', hold, 'quantity', quantity,
    'starts_at', starts_at, 'ends_at', ends_at, 'expire_at', expire_at)
  redis.call('PEXPIREAT', meta_key, expire_at)
end
return previous
