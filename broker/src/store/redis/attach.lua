-- attach: claims a session for a connection on this node, atomically.
--
-- KEYS[1] session hash      KEYS[2] subscriptions hash   KEYS[3] in-flight list
-- KEYS[4] queue list        KEYS[5] incoming QoS 2 list  KEYS[6] session index set
-- KEYS[7] expiry index zset KEYS[8] this node's session set
-- ARGV[1] client id         ARGV[2] id of the node claiming the session
-- ARGV[3] expiry interval (s) of the new connection
-- ARGV[4] the connection's encoded will, '' for none
-- ARGV[5] '1' for a clean start (the stored session is discarded)
-- ARGV[6] prefix of the per-node session sets (the node id and ':sessions' follow)
-- KEYS[9], ARGV[7], ARGV[8] (optional) this node's delivery journal, the claim's field and
-- value prefixes: the in-flight and queued messages the claim takes are journalled there
-- (journal.lua, which precedes this script)
--
-- A session that leaves another node's set is recorded in that node's `moved` zset (scored by
-- the time it left, entries older than a minute trimmed): should that node die, the adopter
-- still delivers what was relayed to it for the session meanwhile (see adopt.lua).
--
-- Every claim increments the session's generation (`gen`), the fencing token of the holder.
-- Returns {2, holder, gen} when another node holds the session on a live connection: the
-- session is marked `pending` for this node, and the holder hands its state over when its
-- connection ends (detach.lua); the claimer then finishes with complete.lua.
-- Otherwise the session is this node's now: returns {0, gen, previous node or ''} if there
-- was no session, else {1, gen, previous node or '', HGETALL session, HGETALL subscriptions,
-- in-flight, queue, incoming QoS 2 ids}. The in-flight, queue and QoS 2 lists move into the
-- connection; the subscriptions hash stays, kept current by subscribe.lua while online.
local function moved_from(node)
  local key = ARGV[6] .. node .. ':moved'
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('SREM', ARGV[6] .. node .. ':sessions', ARGV[1])
  redis.call('ZADD', key, ms, ARGV[1])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', ms - 60000)
end

local state = redis.call('HGET', KEYS[1], 'state')
local owner = redis.call('HGET', KEYS[1], 'node')
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
local holder = owner
if state == 'pending' then
  holder = redis.call('HGET', KEYS[1], 'from')
end
if (state == 'online' or state == 'pending') and holder and holder ~= ARGV[2] then
  redis.call('HSET', KEYS[1], 'state', 'pending', 'node', ARGV[2], 'from', holder,
    'expiry', ARGV[3], 'clean', ARGV[5], 'will', ARGV[4])
  redis.call('HDEL', KEYS[1], 'handed', 'fresh')
  if owner ~= ARGV[2] and owner ~= holder then
    moved_from(owner)
  end
  redis.call('SADD', KEYS[8], ARGV[1])
  return {2, holder, gen}
end

local reply
if state then
  reply = {
    1, gen, owner or '',
    redis.call('HGETALL', KEYS[1]),
    redis.call('HGETALL', KEYS[2]),
    redis.call('LRANGE', KEYS[3], 0, -1),
    redis.call('LRANGE', KEYS[4], 0, -1),
    redis.call('LRANGE', KEYS[5], 0, -1),
  }
else
  reply = {0, gen, owner or ''}
end
if state and KEYS[9] then
  journal_moved(KEYS[9], ARGV[7], ARGV[8], reply[6], reply[7])
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
if ARGV[5] == '1' then
  redis.call('DEL', KEYS[2])
end
redis.call('HDEL', KEYS[1], 'from', 'clean', 'handed', 'fresh', 'disconnected_at', 'will')
redis.call('HSET', KEYS[1], 'state', 'online', 'node', ARGV[2], 'expiry', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'will', ARGV[4])
end
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[2])
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
if owner and owner ~= ARGV[2] then
  moved_from(owner)
end
redis.call('SADD', KEYS[8], ARGV[1])
return reply
