-- Stores or deletes a topic's retained message, within the retained-message limits.
-- KEYS[1..4] the retained indexes (retained_index.lua), KEYS[5] v1:retained:<topic>.
-- ARGV[1] topic, ARGV[2] encoded message ('' deletes), ARGV[3] expiry (ms since the epoch, 0:
-- none), ARGV[4] most retained messages (0: no limit), ARGV[5] now (ms), ARGV[6] the prefix of
-- retained keys (`v1:retained:`), ARGV[7] most expired topics to drop when a limit is reached,
-- ARGV[8] the payload's size in bytes, ARGV[9] most payload bytes in total (0: no limit).
-- Returns 1 stored, 2 deleted, 0 refused by the count (the topic had none), 3 refused by the
-- bytes. Topics whose key Redis expired still count until a look-up or this script (at a limit)
-- drops them.
local topic = ARGV[1]
if ARGV[2] == '' then
  redis.call('DEL', KEYS[5])
  forget(KEYS, topic)
  return 2
end
local max, max_bytes, size = tonumber(ARGV[4]), tonumber(ARGV[9]), tonumber(ARGV[8])

-- 0 or 3 when a limit refuses the message now, else nil.
local function refusal()
  if max > 0 and redis.call('SISMEMBER', KEYS[TOPICS], topic) == 0
      and redis.call('SCARD', KEYS[TOPICS]) >= max then
    return 0
  end
  if max_bytes > 0 then
    local total = tonumber(redis.call('GET', KEYS[BYTES]) or '0')
    local old = tonumber(redis.call('HGET', KEYS[SIZES], topic) or '0')
    if total - old + size > max_bytes then
      return 3
    end
  end
  return nil
end

if refusal() then
  local due = redis.call('ZRANGEBYSCORE', KEYS[EXPIRING], '-inf', ARGV[5], 'LIMIT', 0,
    tonumber(ARGV[7]))
  for _, gone in ipairs(due) do
    -- Gone by Redis' clock too (a node's clock may run ahead): drop it from the counts.
    if redis.call('EXISTS', ARGV[6] .. gone) == 0 then
      forget(KEYS, gone)
    end
  end
  local still = refusal()
  if still then
    return still
  end
end
local expiry = tonumber(ARGV[3])
if expiry > 0 then
  redis.call('SET', KEYS[5], ARGV[2], 'PXAT', expiry)
  redis.call('ZADD', KEYS[EXPIRING], expiry, topic)
else
  redis.call('SET', KEYS[5], ARGV[2])
  redis.call('ZREM', KEYS[EXPIRING], topic)
end
redis.call('SADD', KEYS[TOPICS], topic)
local old = tonumber(redis.call('HGET', KEYS[SIZES], topic) or '0')
redis.call('HSET', KEYS[SIZES], topic, size)
redis.call('INCRBY', KEYS[BYTES], size - old)
return 1
