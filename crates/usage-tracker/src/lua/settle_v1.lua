
-- usage_settle_v1: settle one reservation (body after USAGE_FRAGMENT).
-- KEYS: dep hash, inflight zset.
-- ARGV: res_id, window_start, est, actual (-1 = unknown), outcome (0 cancelled, 1 success, 2 failure),
--       window_ms, lat (ms per output token, -1 = none), ttft (ms, -1 = none), alpha.
-- Reply: {requests_in_window, failures_in_window}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local requests, failures = u_settle(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), tonumber(ARGV[5]), now, u_window_spec(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]),
  tonumber(ARGV[9]))
return { requests, failures }
