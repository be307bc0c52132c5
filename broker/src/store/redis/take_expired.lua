-- take_expired: removes and returns offline sessions whose expiry has passed, atomically.
--
-- KEYS[1] session index set KEYS[2] expiry index zset
-- ARGV[1] now (ms since the Unix epoch)                ARGV[2] at most this many sessions
-- ARGV[3..7] key name prefixes of the session hash, subscriptions, in-flight, queue and
--            incoming QoS 2 keys (the client id follows each prefix)
-- ARGV[8] prefix of the per-node session sets (the node id and ':sessions' follow)
--
-- Returns {number of index entries examined, {client id, node it was parked on or '',
-- HGETALL session, HGETALL subscriptions, in-flight, queue, incoming QoS 2 ids}...}. A session
-- whose keys already expired by their TTL comes back with empty parts.
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local taken = {}
for _, id in ipairs(ids) do
  local keys = {}
  for i = 1, 5 do
    keys[i] = ARGV[2 + i] .. id
  end
  redis.call('ZREM', KEYS[2], id)
  local state = redis.call('HGET', keys[1], 'state')
  if not state or state == 'offline' then
    local node = redis.call('HGET', keys[1], 'node') or ''
    taken[#taken + 1] = {
      id,
      node,
      redis.call('HGETALL', keys[1]),
      redis.call('HGETALL', keys[2]),
      redis.call('LRANGE', keys[3], 0, -1),
      redis.call('LRANGE', keys[4], 0, -1),
      redis.call('LRANGE', keys[5], 0, -1),
    }
    redis.call('DEL', keys[1], keys[2], keys[3], keys[4], keys[5])
    redis.call('SREM', KEYS[1], id)
    if node ~= '' then
      redis.call('SREM', ARGV[8] .. node .. ':sessions', id)
    end
  end
end
return {#ids, taken}
