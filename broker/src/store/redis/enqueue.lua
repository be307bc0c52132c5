-- enqueue: offers a message to a session's queue, atomically.
--
-- KEYS[1] session hash      KEYS[2] queue list
-- ARGV[1] encoded message   ARGV[2] '1' to queue even for an online session
-- ARGV[3] maximum queue length
--
-- Returns 0 queued, 1 full, 2 online (not queued), 3 no such session.
local online = redis.call('HGET', KEYS[1], 'online')
if not online then
  return 3
end
if online == '1' and ARGV[2] ~= '1' then
  return 2
end
if redis.call('LLEN', KEYS[2]) >= tonumber(ARGV[3]) then
  return 1
end
redis.call('RPUSH', KEYS[2], ARGV[1])
if online ~= '1' then
  -- An offline session's keys expire together: a queue created now takes the session's TTL.
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
end
return 0
