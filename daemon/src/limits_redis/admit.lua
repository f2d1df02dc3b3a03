-- Admission of one request under a tenant's shared limits, in one atomic step: the
-- concurrency lease, the token reservation and the request rate (GCRA). Nothing is
-- consumed unless everything is granted. Times are microseconds of the server's clock
-- (TIME), so every gateway sees one clock; ARGV[1] > 0 overrides it (tests).
--
-- KEYS[1] rate: the GCRA's theoretical arrival time (string, µs)
-- KEYS[2] tokens: hash {level = milli-tokens, last = µs of the last refill}
-- KEYS[3] leases: sorted set of lease ids scored by their expiry (µs)
-- ARGV: now, emission interval (µs per request, 0: no rate limit), burst,
--       tokens per minute (0: none), tokens to reserve, max concurrent (0: none),
--       lease id, lease ttl (µs)
-- Returns {code, retry_after, remaining_requests, reset_requests, remaining_tokens,
--          reset_tokens} (times in µs); code 0 admitted, 1 requests, 2 tokens,
--          3 concurrency, 4 too large.
local now = tonumber(ARGV[1])
if now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local tpm = tonumber(ARGV[4])
local want = tonumber(ARGV[5])
local max_concurrent = tonumber(ARGV[6])
local lease = ARGV[7]
local lease_ttl = tonumber(ARGV[8])

-- The request rate's state: remaining burst and time to a full burst, without consuming.
local tat = now
if interval > 0 then
  tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
end
local function rate_status(t)
  if interval <= 0 then return 0, 0 end
  local remaining = math.floor((now + interval * burst - t) / interval)
  return math.max(0, math.min(burst, remaining)), math.max(0, t - now)
end

-- Tokens: refilled continuously at tpm per minute, in milli-tokens (like the local bucket).
local full = tpm * 1000
local level = full
-- Moved only when a whole milli-token was gained, so frequent calls do not round the
-- refill away.
local last = now
if tpm > 0 then
  local state = redis.call('HMGET', KEYS[2], 'level', 'last')
  if state[1] then
    level = tonumber(state[1])
    last = tonumber(state[2])
    if now > last then
      local gained = math.floor((now - last) * tpm / 60000)
      if gained > 0 then
        level = math.min(full, level + gained)
        last = now
      end
    end
  end
end
local function time_for(milli)
  if tpm <= 0 then return 0 end
  return math.ceil(milli * 60000 / tpm)
end
local function answer(code, retry, t)
  local rem, reset = rate_status(t)
  return {code, retry, rem, reset, math.floor(level / 1000), time_for(full - level)}
end

if max_concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= max_concurrent then
    return answer(3, 1000000, tat)
  end
end
if tpm > 0 then
  if want > tpm then
    return answer(4, 60000000, tat)
  end
  if want * 1000 > level then
    return answer(2, time_for(want * 1000 - level), tat)
  end
end
local new_tat = tat
if interval > 0 then
  new_tat = tat + interval
  if new_tat - now > interval * burst then
    return answer(1, new_tat - interval * burst - now, tat)
  end
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
end
if tpm > 0 then
  level = level - want * 1000
  redis.call('HSET', KEYS[2], 'level', string.format('%d', level), 'last', string.format('%d', last))
  redis.call('PEXPIRE', KEYS[2], math.ceil(time_for(full - level) / 1000) + 1000)
end
if max_concurrent > 0 then
  redis.call('ZADD', KEYS[3], now + lease_ttl, lease)
  redis.call('PEXPIRE', KEYS[3], math.ceil(lease_ttl / 1000) + 1000)
end
return answer(0, 0, new_tat)
