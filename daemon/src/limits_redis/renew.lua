-- Renews the concurrency lease of a request still in flight: its expiry moves to the
-- server's now + ttl. XX: a lease that has already expired and been reclaimed is not
-- brought back (its slot may be someone else's by now).
--
-- KEYS[1] leases (as in admit.lua)
-- ARGV: lease id, lease ttl (µs)
-- Returns 1 when the lease was renewed, 0 when it was gone.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
if redis.call('ZSCORE', KEYS[1], ARGV[1]) == false then
  return 0
end
redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[1])
-- GT: only ever lengthens the set's own expiry (other gateways' leases may live longer).
redis.call('PEXPIRE', KEYS[1], math.ceil(ttl / 1000) + 1000, 'GT')
return 1
