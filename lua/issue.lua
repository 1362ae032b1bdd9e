#!lua
-- Decide a batch of issue requests for one event, atomically, in arrival order.
-- KEYS[1] meta:  hash status, quantity, starts_at (µs), ends_at (µs, 0 = open-ended), expire_at (ms)
-- KEYS[2] seq:   the last ordinal handed out
-- KEYS[3] users: hash user id -> "ordinal:issued_at_us"
-- ARGV[1]        deadline (µs since the epoch, 0 = none): past it the caller has given up
-- ARGV[2..n+1]   the user ids
-- Returns {now_us, outcome_1, ..., outcome_n}: an outcome > 0 is the user's new ordinal,
-- otherwise one of the codes below (service/decision.py names them too).
-- The shebang declares a script that may write: under maxmemory with noeviction Redis
-- refuses it whole before it runs, never halfway through a batch.
local meta_key, seq_key, users_key = KEYS[1], KEYS[2], KEYS[3]
local deadline_us = tonumber(ARGV[1])
local ALREADY_ISSUED, SOLD_OUT, NOT_STARTED, ENDED, CLOSED, MISSING, SYNCING, EXPIRED, BROKEN =
  -1, -2, -3, -4, -5, -6, -7, -8, -9

local time = redis.call('TIME')
local now_us = tonumber(time[1]) * 1000000 + tonumber(time[2])
local issued_at = time[1] .. string.format('%06d', tonumber(time[2]))
local n = #ARGV - 1
local out = {now_us}

local function all(code)
  for i = 1, n do out[i + 1] = code end
  return out
end

-- A batch run after its caller gave up (Redis stalled with it queued) must not issue:
-- its users were already answered 503 (I5).
if deadline_us > 0 and now_us > deadline_us then return all(EXPIRED) end

local meta = redis.call('HMGET', meta_key, 'status', 'quantity', 'starts_at', 'ends_at', 'expire_at')
local status = meta[1]
-- No state at all: the event is closed, unknown, or Redis lost its data; the caller
-- asks PostgreSQL which, and never reads it as "open with full stock" (I1).
if not status then return all(MISSING) end
if status == 'syncing' then return all(SYNCING) end
if status == 'closed' then return all(CLOSED) end
if status ~= 'open' then return all(NOT_STARTED) end
if now_us < tonumber(meta[3]) then return all(NOT_STARTED) end
local ends_at = tonumber(meta[4])
if ends_at > 0 and now_us >= ends_at then return all(ENDED) end

local quantity = tonumber(meta[2])
-- The keys must be whole. An open event always has seq (finish_sync writes it, 0 or more):
-- without it (lost, evicted or expired alone) ordinals would be handed out again. Every
-- ordinal handed out has its record: more records than seq, or seq without any record
-- (the users hash lost), would serve users twice. Any of them is lost state: 503 until it
-- is rebuilt, never a fresh event (I1, I2).
local raw_seq = redis.call('GET', seq_key)
if not raw_seq then return all(BROKEN) end
local seq = tonumber(raw_seq)
local records = redis.call('HLEN', users_key)
if records > seq or (seq > 0 and records == 0) then return all(BROKEN) end
local first = seq
for i = 1, n do
  local user = ARGV[i + 1]
  -- Duplicate before stock, as the original: a served user hears 409 even when sold out.
  if seq >= quantity then
    if redis.call('HEXISTS', users_key, user) == 1 then
      out[i + 1] = ALREADY_ISSUED
    else
      out[i + 1] = SOLD_OUT
    end
  -- In stock: one HSETNX both checks for a duplicate and records the issue.
  elseif redis.call('HSETNX', users_key, user, string.format('%d', seq + 1) .. ':' .. issued_at) == 1 then
    seq = seq + 1
    out[i + 1] = seq
  else
    out[i + 1] = ALREADY_ISSUED
  end
end
if seq ~= first then
  redis.call('SET', seq_key, seq)
  redis.call('PEXPIREAT', seq_key, meta[5])
  redis.call('PEXPIREAT', users_key, meta[5])
end
return out
