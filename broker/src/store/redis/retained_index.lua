-- Helpers of retain.lua and tidy_retained.lua. Their KEYS begin with the retained indexes:
-- v1:retained-topics (set: the count), v1:retained-expiring (zset: topics whose message expires,
-- by when, ms), v1:retained-sizes (hash: topic -> payload bytes), v1:retained-bytes (their sum).
local TOPICS, EXPIRING, SIZES, BYTES = 1, 2, 3, 4

-- Drops `topic` from the indexes and its size from the sum.
local function forget(keys, topic)
  redis.call('SREM', keys[TOPICS], topic)
  redis.call('ZREM', keys[EXPIRING], topic)
  local size = redis.call('HGET', keys[SIZES], topic)
  if size then
    redis.call('HDEL', keys[SIZES], topic)
    redis.call('DECRBY', keys[BYTES], size)
  end
end
