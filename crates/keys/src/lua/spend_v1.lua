-- spend_v1: adds the cost of a settled request to a key's spend, starting a new budget period first when
-- the current one ended.
-- KEYS[1] the record hash   ARGV[1] USD to add   ARGV[2] now (epoch ms, the replica's wall clock, as expiry)
-- Reply: the spend after adding, as a string (0 when the key no longer exists)
if redis.call('EXISTS', KEYS[1]) == 0 then return '0' end
local now = tonumber(ARGV[2])
local reset = tonumber(redis.call('HGET', KEYS[1], 'budget_reset_at_ms') or '')
local dur = tonumber(redis.call('HGET', KEYS[1], 'budget_duration_secs') or '')
if reset and dur and dur > 0 and now >= reset then
  local period = dur * 1000
  local next_reset = reset + (math.floor((now - reset) / period) + 1) * period
  redis.call('HSET', KEYS[1], 'spend', ARGV[1], 'budget_reset_at_ms', string.format('%d', next_reset))
  return ARGV[1]
end
return redis.call('HINCRBYFLOAT', KEYS[1], 'spend', ARGV[1])
