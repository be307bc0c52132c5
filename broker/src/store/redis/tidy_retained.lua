-- Drops topics whose retained message is gone (expired by its TTL, or evicted) from the indexes
-- and the byte count, checking each again so that a topic retained anew meanwhile, by any node,
-- stays. KEYS[1..4] the retained indexes (retained_index.lua); ARGV[1] the prefix of retained
-- keys, ARGV[2..] the topics a look-up found without a key. Returns how many were dropped.
local dropped = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    dropped = dropped + redis.call('SISMEMBER', KEYS[TOPICS], ARGV[i])
    forget(KEYS, ARGV[i])
  end
end
return dropped
