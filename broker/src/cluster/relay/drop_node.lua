-- drop_node: removes a departed node's registration once its sessions were adopted, unless the
-- node came back under a newer run meanwhile (then everything here is the new run's).
--
-- KEYS[1] the node registry set   KEYS[2] the node's entry set
-- KEYS[3] the node's inbox read position   KEYS[4] the node's registered run
-- KEYS[5] the node's listing marker   KEYS[6] the node's return marker (written when it finds
-- itself declared dead and registers again: one left from an earlier false alarm must not end
-- the adopter's reading of this departure's inbox)
-- ARGV[1] node id   ARGV[2] the departed run, '' when not known (removed whatever the run)
--
-- Returns 1 if the registration was removed, 0 if a newer run holds it.
local registered = redis.call('GET', KEYS[4])
if ARGV[2] ~= '' and registered and registered ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
redis.call('SREM', KEYS[1], ARGV[1])
return 1
