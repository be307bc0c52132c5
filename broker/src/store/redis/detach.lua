-- detach: stores a session when its connection ends, atomically, fenced by generation.
--
-- KEYS as for attach.lua.
-- ARGV[1] client id         ARGV[2] node id             ARGV[3] expiry interval (s)
-- ARGV[4] disconnected at (ms since the Unix epoch)
-- ARGV[5] expiry index score (ms since the epoch), '' if the session never expires
-- ARGV[6] key TTL (ms), '' if the session never expires
-- ARGV[7] maximum queue length
-- ARGV[8] number of subscriptions S, ARGV[9] in-flight I, ARGV[10] queued Q, ARGV[11] QoS 2 ids N
-- ARGV[12] the generation the connection's claim got
-- ARGV[13] '1' to leave the session's will stored (the node is shutting down: whoever adopts its
--          sessions publishes the will after its delay, unless the client reconnects first)
-- ARGV[14..] S (filter, options) pairs, then I in-flight, Q queued messages and N ids.
--
-- Returns 1 when the session is stored offline (parked on this node), 2 when another node is
-- claiming it from this one (the state is stored for that node, which completes its claim),
-- 3 when a newer holder owns it already (nothing is written: this node's copy is stale).
-- Messages forced into the queue while the session was attached follow the session's own
-- queue, as long as the queue has room.
local state = redis.call('HGET', KEYS[1], 'state')
local handover = state == 'pending' and redis.call('HGET', KEYS[1], 'from') == ARGV[2]
if not handover and (state ~= 'online' or redis.call('HGET', KEYS[1], 'node') ~= ARGV[2]
    or redis.call('HGET', KEYS[1], 'gen') ~= ARGV[12]) then
  return 3
end

local meanwhile = redis.call('LRANGE', KEYS[4], 0, -1)
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5])

local next_arg = 14
-- Appends the next `count` arguments to `key` with `command`, in chunks (Lua's unpack is
-- limited to a few thousand values).
local function push(command, key, count)
  local done = 0
  while done < count do
    local n = math.min(1000, count - done)
    redis.call(command, key, unpack(ARGV, next_arg + done, next_arg + done + n - 1))
    done = done + n
  end
  next_arg = next_arg + count
end

local queued = tonumber(ARGV[10])
push('HSET', KEYS[2], 2 * tonumber(ARGV[8]))
push('RPUSH', KEYS[3], tonumber(ARGV[9]))
push('RPUSH', KEYS[4], queued)
local max = tonumber(ARGV[7])
for _, message in ipairs(meanwhile) do
  if queued >= max then
    break
  end
  redis.call('RPUSH', KEYS[4], message)
  queued = queued + 1
end
push('RPUSH', KEYS[5], tonumber(ARGV[11]))

if handover then
  redis.call('HSET', KEYS[1], 'handed', '1')
  return 2
end
if ARGV[13] ~= '1' then
  redis.call('HDEL', KEYS[1], 'will')
end
redis.call('HSET', KEYS[1], 'state', 'offline', 'node', ARGV[2], 'expiry', ARGV[3],
  'disconnected_at', ARGV[4])
if ARGV[6] ~= '' then
  for i = 1, 5 do
    redis.call('PEXPIRE', KEYS[i], ARGV[6])
  end
end
redis.call('SADD', KEYS[6], ARGV[1])
redis.call('SADD', KEYS[8], ARGV[1])
if ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[7], ARGV[5], ARGV[1])
else
  redis.call('ZREM', KEYS[7], ARGV[1])
end
return 1
