-- The end of an admitted request: returns the unused part of its token reservation and
-- releases its concurrency lease. Either may be absent (0 tokens, empty lease id).
--
-- KEYS[1] tokens, KEYS[2] leases (as in admit.lua)
-- ARGV: now (µs, 0: the server's clock), tokens per minute, tokens to give back, lease id
local now = tonumber(ARGV[1])
if now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tpm = tonumber(ARGV[2])
local back = tonumber(ARGV[3])
if tpm > 0 and back > 0 then
  local full = tpm * 1000
  local state = redis.call('HMGET', KEYS[1], 'level', 'last')
  -- A missing bucket has expired full: nothing to give back.
  if state[1] then
    local level = tonumber(state[1])
    local last = tonumber(state[2])
    if now > last then
      local gained = math.floor((now - last) * tpm / 60000)
      if gained > 0 then
        level = math.min(full, level + gained)
        last = now
      end
    end
    level = math.min(full, level + back * 1000)
    redis.call('HSET', KEYS[1], 'level', string.format('%d', level), 'last', string.format('%d', last))
  end
end
if ARGV[4] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[4])
end
return 0
