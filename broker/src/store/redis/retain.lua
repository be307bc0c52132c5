-- Stores or deletes a topic's retained message, within the retained-message limit.
-- KEYS[1] v1:retained:<topic>, KEYS[2] v1:retained-topics (set), KEYS[3] v1:retained-expiring
-- (zset: topics whose message expires, by expiry time in ms).
-- ARGV[1] topic, ARGV[2] encoded message ('' deletes), ARGV[3] expiry (ms since the epoch, 0:
-- none), ARGV[4] most retained messages (0: no limit), ARGV[5] now (ms), ARGV[6] the prefix of
-- retained keys (`v1:retained:`), ARGV[7] most expired topics to drop when at the limit.
-- Returns 1 stored, 2 deleted, 0 refused (the limit is reached and the topic had none).
-- The count is the size of the topic index; topics whose key Redis expired are still in it until
-- a look-up or this script (at the limit) drops them.
local topic = ARGV[1]
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], topic)
  redis.call('ZREM', KEYS[3], topic)
  return 2
end
local max = tonumber(ARGV[4])
if max > 0 and redis.call('SISMEMBER', KEYS[2], topic) == 0
    and redis.call('SCARD', KEYS[2]) >= max then
  local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[5], 'LIMIT', 0, tonumber(ARGV[7]))
  for _, gone in ipairs(due) do
    -- Gone by Redis' clock too (a node's clock may run ahead): drop it from the count.
    if redis.call('EXISTS', ARGV[6] .. gone) == 0 then
      redis.call('SREM', KEYS[2], gone)
      redis.call('ZREM', KEYS[3], gone)
    end
  end
  if redis.call('SCARD', KEYS[2]) >= max then
    return 0
  end
end
local expiry = tonumber(ARGV[3])
if expiry > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PXAT', expiry)
  redis.call('ZADD', KEYS[3], expiry, topic)
else
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[3], topic)
end
redis.call('SADD', KEYS[2], topic)
return 1
