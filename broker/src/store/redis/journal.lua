-- journal_moved: journals the copies a claim moves out of the store into the claiming node, in
-- the claim's own atomic step, so that node's death cannot lose them (see cluster/journal.rs).
--
-- key: the claiming node's journal hash; field_prefix: '<run>.<seq>.'; value_prefix: the client
-- id with its length (2 bytes, big-endian). Copy i (from 0: the in-flight messages, then the
-- queue) becomes field field_prefix .. i, value value_prefix .. the copy as a queued message.
-- An in-flight value is a version byte, the packet id (varint), a state byte and the queued
-- message body; one too short to hold that is left out (the store drops it too).
local function journal_moved(key, field_prefix, value_prefix, inflight, queue)
  local index = 0
  for _, value in ipairs(inflight) do
    local last = 2
    while last <= #value and string.byte(value, last) >= 128 do
      last = last + 1
    end
    if last + 2 <= #value then
      redis.call('HSET', key, field_prefix .. index,
        value_prefix .. string.sub(value, 1, 1) .. string.sub(value, last + 2))
    end
    index = index + 1
  end
  for _, value in ipairs(queue) do
    redis.call('HSET', key, field_prefix .. index, value_prefix .. value)
    index = index + 1
  end
end

