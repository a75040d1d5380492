
-- usage_renew_v1: extend in-flight leases of one group (body after USAGE_FRAGMENT).
-- KEYS: one inflight zset per lease (repeats allowed).
-- ARGV: lease_ms, then one reservation id per key.
-- Reply: array of 1 (renewed) / 0 (lease already ended or expired), in KEYS order.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease_ms = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS do
  out[i] = u_renew(KEYS[i], ARGV[i + 1], now, lease_ms)
end
return out
