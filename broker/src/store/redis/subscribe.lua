-- subscribe: writes a held session's subscription changes through, fenced by generation, so a
-- node that adopts the session after this node dies knows them.
--
-- KEYS[1] session hash      KEYS[2] subscriptions hash
-- ARGV[1] node id           ARGV[2] generation of the claim
-- ARGV[3] number of additions A, then A (filter, options) pairs, then filters to remove.
--
-- Returns 1 when written, 0 when this node no longer holds the session.
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] or redis.call('HGET', KEYS[1], 'gen') ~= ARGV[2]
    or redis.call('HGET', KEYS[1], 'state') ~= 'online' then
  return 0
end
local additions = tonumber(ARGV[3])
for i = 0, additions - 1 do
  redis.call('HSET', KEYS[2], ARGV[4 + 2 * i], ARGV[5 + 2 * i])
end
for i = 4 + 2 * additions, #ARGV do
  redis.call('HDEL', KEYS[2], ARGV[i])
end
return 1
