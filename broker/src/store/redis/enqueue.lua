-- enqueue: offers a message to a session's queue, atomically.
--
-- KEYS[1] session hash      KEYS[2] queue list
-- ARGV[1] encoded message   ARGV[2] '1' to queue even for a session held by this node
-- ARGV[3] maximum queue length                          ARGV[4] this node's id
--
-- Returns 0 queued, 1 full, 2 held by this node (not queued), 3 no such session, or the id of
-- the node that holds (or is claiming) the session: the message is that node's to deliver.
local state = redis.call('HGET', KEYS[1], 'state')
if not state then
  return 3
end
if state ~= 'offline' then
  local node = redis.call('HGET', KEYS[1], 'node')
  if node ~= ARGV[4] then
    return node
  end
  if ARGV[2] ~= '1' then
    return 2
  end
end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[3]) then
  return 1
end
redis.call('RPUSH', KEYS[2], ARGV[1])
if state == 'offline' then
  -- An offline session's keys expire together: a queue created now takes the session's TTL.
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
return 0
