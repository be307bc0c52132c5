-- attach: takes a session for a connecting client and marks it online, atomically.
--
-- KEYS[1] session hash      KEYS[2] subscriptions hash   KEYS[3] in-flight list
-- KEYS[4] queue list        KEYS[5] incoming QoS 2 list  KEYS[6] session index set
-- KEYS[7] expiry index zset
-- ARGV[1] client id         ARGV[2] id of the node taking the session
--
-- Returns {0} if there was no session, else
-- {1, HGETALL session, HGETALL subscriptions, in-flight, queue, incoming QoS 2 ids}.
-- The session keeps only its hash while online (the connection holds the rest); messages forced
-- into its queue meanwhile go to the queue list again.
local reply = {0}
if redis.call('EXISTS', KEYS[1]) == 1 then
  reply = {
    1,
    redis.call('HGETALL', KEYS[1]),
    redis.call('HGETALL', KEYS[2]),
    redis.call('LRANGE', KEYS[3], 0, -1),
    redis.call('LRANGE', KEYS[4], 0, -1),
    redis.call('LRANGE', KEYS[5], 0, -1),
  }
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('HSET', KEYS[1], 'online', '1', 'node', ARGV[2])
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
return reply
