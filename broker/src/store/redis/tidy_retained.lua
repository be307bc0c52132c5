-- Drops topics whose retained message is gone (expired by its TTL, or evicted) from the indexes,
-- checking each again so that a topic retained anew meanwhile, by any node, stays.
-- KEYS[1] v1:retained-topics, KEYS[2] v1:retained-expiring; ARGV[1] the prefix of retained keys,
-- ARGV[2..] the topics a look-up found without a key. Returns how many were dropped.
local dropped = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    dropped = dropped + redis.call('SREM', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
  end
end
return dropped
