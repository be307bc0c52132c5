-- complete: finishes a claim that had to wait for another node to hand the session over.
--
-- KEYS[1..5] as for attach.lua.
-- ARGV[1] id of the claiming node   ARGV[2] the generation its claim got
-- KEYS[6], ARGV[3], ARGV[4] (optional) as KEYS[9], ARGV[7], ARGV[8] of attach.lua
--
-- Returns {0} when a newer claim superseded this one (the claimer must give up), {1} when the
-- session ended with its old connection (nothing to resume), else {2, HGETALL session,
-- HGETALL subscriptions, in-flight, queue, incoming QoS 2 ids}. A holder that never answered
-- (it died) leaves what it wrote through: the subscriptions and anything queued meanwhile.
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1]
  or redis.call('HGET', KEYS[1], 'gen') ~= ARGV[2]
  or redis.call('HGET', KEYS[1], 'state') ~= 'pending' then
  return {0}
end
local clean = redis.call('HGET', KEYS[1], 'clean') == '1'
local fresh = redis.call('HGET', KEYS[1], 'fresh') == '1'
local reply = {1}
if not clean and not fresh then
  reply = {
    2,
    redis.call('HGETALL', KEYS[1]),
    redis.call('HGETALL', KEYS[2]),
    redis.call('LRANGE', KEYS[3], 0, -1),
    redis.call('LRANGE', KEYS[4], 0, -1),
    redis.call('LRANGE', KEYS[5], 0, -1),
  }
  if KEYS[6] then
    journal_moved(KEYS[6], ARGV[3], ARGV[4], reply[4], reply[5])
  end
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
if clean or fresh then
  redis.call('DEL', KEYS[2])
end
redis.call('HDEL', KEYS[1], 'from', 'clean', 'handed', 'fresh', 'disconnected_at')
redis.call('HSET', KEYS[1], 'state', 'online')
return reply
