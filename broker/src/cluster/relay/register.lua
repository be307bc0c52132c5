-- register: a running node registers (again) in the node registry, in one step.
--
-- KEYS[1] the node registry set   KEYS[2] the node's registered run   KEYS[3] its return marker
-- ARGV[1] node id   ARGV[2] its run
--
-- A node whose run is no longer registered was declared dead and its sessions were adopted (the
-- adopter removed the registration, drop_node.lua): it writes where it came back, as
-- `<run>/<ms>` by Redis's clock read here, in the same step. From that time on, what it reads in
-- its inbox is its own; the adopter's tail of that inbox delivers only what came before.
--
-- Returns that time (ms), or -1 when the run was registered already.
local was = redis.call('GET', KEYS[2])
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
if was then
  return -1
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('SET', KEYS[3], ARGV[2] .. '/' .. ms)
return ms
