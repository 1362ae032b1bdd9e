#!lua
-- Finish a rebuild: the event's state from PostgreSQL, in one atomic step.
-- Records were merged into KEYS[3] beforehand (HSETNX, never overwriting), while the event
-- was on hold; here seq moves to the highest ordinal known, never down (I1, I3).
-- KEYS[1] meta, KEYS[2] seq, KEYS[3] users
-- ARGV[1] status to resume with ('open' or 'created')
-- ARGV[2..5] quantity, starts_at (µs), ends_at (µs), expire_at (ms)
-- ARGV[6] the highest ordinal PostgreSQL holds
-- Returns {seq, number of records}.
local meta_key, seq_key, users_key = KEYS[1], KEYS[2], KEYS[3]
local status, quantity, starts_at, ends_at, expire_at = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_ordinal = tonumber(ARGV[6])

local seq = tonumber(redis.call('GET', seq_key) or '0')
if max_ordinal > seq then seq = max_ordinal end
redis.call('SET', seq_key, seq)
redis.call('HSET', meta_key, 'status', status, 'quantity', quantity,
  'starts_at', starts_at, 'ends_at', ends_at, 'expire_at', expire_at)
redis.call('PEXPIREAT', meta_key, expire_at)
redis.call('PEXPIREAT', seq_key, expire_at)
redis.call('PEXPIREAT', users_key, expire_at)
return {seq, redis.call('HLEN', users_key)}
