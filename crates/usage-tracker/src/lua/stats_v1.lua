
-- usage_stats_v1: usage and health of deployments of one group (body after USAGE_FRAGMENT). Read only.
-- KEYS: 3 per deployment: dep hash, inflight zset, cooldown key.
-- ARGV: window_ms.
-- Reply: one array per deployment: {rpm, tpm, in_flight, lat|nil, ttft|nil, cooldown_pttl, ok, fail}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win = u_window_spec(ARGV[1])
local out = {}
for i = 0, #KEYS / 3 - 1 do
  out[i + 1] = u_stats({ dep = KEYS[3 * i + 1], inflight = KEYS[3 * i + 2], cd = KEYS[3 * i + 3] }, now, win)
end
return out
