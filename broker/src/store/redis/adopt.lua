-- adopt: a surviving node takes over the sessions of a node that left or failed, atomically.
--
-- KEYS[1] the departed node's session set   KEYS[2] the survivor's session set
-- KEYS[3] session index set                 KEYS[4] expiry index zset
-- KEYS[5] the departed node's `moved` zset (sessions claimed away from it, see attach.lua)
-- KEYS[6] the survivor's stash of this adoption's answer (see below)
-- KEYS[7] the departed node's registered run
-- KEYS[8] the departed node's return marker (written when a node declared dead while it ran
--         registers again; deleted here, so a marker left from an earlier false alarm of the
--         same run cannot make this adoption's inbox tail think the node is back already)
-- ARGV[1] departed node id  ARGV[2] survivor node id   ARGV[3] now (ms since the Unix epoch)
-- ARGV[4] grace added to an offline session's TTL (ms)
-- ARGV[5..9] key name prefixes of the session hash, subscriptions, in-flight, queue and
--            incoming QoS 2 keys (the client id follows each prefix)
-- ARGV[10] the run of the departed node being adopted, '' when not known
--
-- A departed node that is back under the same id, with another run registered than the one
-- that departed, is not adopted from: its sessions (claimed again by the new run, or its
-- earlier run's, which the new run adopts itself when it starts) stay where they are.
--
-- A node restarting under its old id adopts its own earlier run's sessions the same way.
-- Sessions the departed node held online become offline (their expiry starts now) and those
-- with expiry 0 end; sessions it had parked move to the survivor. Each will is removed as it
-- is returned, so however many survivors run this, a will fires once.
-- Sessions in the departed node's set that another node has claimed meanwhile, and those that
-- left it for another node in the last minute (its `moved` zset), are not adopted but reported
-- too (with their subscriptions), so messages relayed to the departed node for them can still
-- be recovered (see the broker's cluster::recovery). The sessions a survivor adopts or hears
-- of as moved are added to that zset: a node back under its old id recovers its earlier run's
-- inbox for them too.
-- Returns {1 if the departed node is back under a newer run (nothing adopted) else 0,
-- {{client id, will or '', HGETALL subscriptions, 1 if it was online, 1 if it ended,
-- 1 if it moved to another node}...}}.
-- The answer is also kept (MessagePack, an hour) in the survivor's stash, and every answer
-- returns what the stash holds: a survivor whose call timed out after the script ran (Redis
-- stalled) gets the same sessions and wills when it tries again, rather than nothing. The
-- survivor deletes the stash once it has the answer.
-- What an earlier call whose answer was lost adopted comes first, once.
local stashed = {}
local seen = {}
for _, packed in ipairs(redis.call('LRANGE', KEYS[6], 0, -1)) do
  for _, entry in ipairs(cmsgpack.unpack(packed)) do
    stashed[#stashed + 1] = entry
    seen[entry[1]] = true
  end
end
local registered = redis.call('GET', KEYS[7])
if ARGV[10] ~= '' and registered and registered ~= ARGV[10] then
  return {1, stashed}
end
redis.call('DEL', KEYS[8])
local adopted = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  seen[id] = true
  local keys = {}
  for i = 1, 5 do
    keys[i] = ARGV[4 + i] .. id
  end
  local state = redis.call('HGET', keys[1], 'state')
  if state and redis.call('HGET', keys[1], 'node') == ARGV[1] then
    local will = redis.call('HGET', keys[1], 'will') or ''
    local expiry = tonumber(redis.call('HGET', keys[1], 'expiry') or '0') or 0
    local was_online = state ~= 'offline'
    local subs = redis.call('HGETALL', keys[2])
    if was_online and expiry == 0 then
      redis.call('DEL', keys[1], keys[2], keys[3], keys[4], keys[5])
      redis.call('SREM', KEYS[3], id)
      redis.call('ZREM', KEYS[4], id)
      adopted[#adopted + 1] = {id, will, {}, 1, 1, 0}
    else
      redis.call('HDEL', keys[1], 'will', 'from', 'clean', 'handed', 'fresh')
      redis.call('HSET', keys[1], 'node', ARGV[2])
      if was_online then
        redis.call('HSET', keys[1], 'state', 'offline', 'disconnected_at', ARGV[3])
        if expiry >= 4294967295 then
          redis.call('ZREM', KEYS[4], id)
        else
          redis.call('ZADD', KEYS[4], tonumber(ARGV[3]) + expiry * 1000, id)
          for i = 1, 5 do
            redis.call('PEXPIRE', keys[i], expiry * 1000 + tonumber(ARGV[4]))
          end
        end
      end
      redis.call('SADD', KEYS[2], id)
      adopted[#adopted + 1] = {id, will, subs, was_online and 1 or 0, 0, 0}
    end
  elseif state then
    adopted[#adopted + 1] = {id, '', redis.call('HGETALL', keys[2]), 0, 0, 1}
  end
end
local recent = tonumber(ARGV[3]) - 60000
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], recent, '+inf')) do
  local node = redis.call('HGET', ARGV[5] .. id, 'node')
  if not seen[id] and node and node ~= ARGV[1] then
    adopted[#adopted + 1] = {id, '', redis.call('HGETALL', ARGV[6] .. id), 0, 0, 1}
  end
end
redis.call('DEL', KEYS[5])
if KEYS[1] ~= KEYS[2] then
  redis.call('DEL', KEYS[1])
  -- What was adopted, or had moved on, has left the departed node: should it come back under
  -- its id and recover its own earlier run's inbox (possibly while this survivor recovers the
  -- same inbox), it must still find these sessions there.
  for _, entry in ipairs(adopted) do
    if entry[5] == 0 then
      redis.call('ZADD', KEYS[5], ARGV[3], entry[1])
    end
  end
end
if #adopted > 0 then
  redis.call('RPUSH', KEYS[6], cmsgpack.pack(adopted))
  redis.call('PEXPIRE', KEYS[6], 3600000)
end
for _, entry in ipairs(adopted) do
  stashed[#stashed + 1] = entry
end
return {0, stashed}
