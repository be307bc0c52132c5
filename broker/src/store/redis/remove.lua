-- remove: ends a session whose connection closed with expiry 0, fenced by generation.
--
-- KEYS as for attach.lua.
-- ARGV[1] client id         ARGV[2] node id             ARGV[3] the generation of the claim
--
-- Returns 1 when the session is gone, 2 when another node is claiming it from this one (its
-- claim finds no session to resume), 3 when a newer holder owns it (nothing is touched).
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'pending' and redis.call('HGET', KEYS[1], 'from') == ARGV[2] then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])
  redis.call('HSET', KEYS[1], 'fresh', '1', 'handed', '1')
  return 2
end
if state and (redis.call('HGET', KEYS[1], 'node') ~= ARGV[2]
    or redis.call('HGET', KEYS[1], 'gen') ~= ARGV[3]) then
  return 3
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SREM', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('SREM', KEYS[8], ARGV[1])
return 1
