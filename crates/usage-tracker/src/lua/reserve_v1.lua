
-- usage_reserve_v1: reserve capacity on the first candidate with headroom (body after USAGE_FRAGMENT).
-- KEYS: 3 per candidate: dep hash, inflight zset, cooldown key.
-- ARGV: window_ms, order_mode, est, prompt, res_id, lease_ms, n, then 6 per candidate:
--       deployment_id, rpm, tpm, max_parallel, max_input_tokens, tier (-1 = no limit).
-- Reply: {1, index (1-based), window_start_ms, now} or {0, next_ms (-1 = never), now}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cands = u_parse_candidates(KEYS, ARGV, 0, 7, tonumber(ARGV[7]))
local i, v = u_try_reserve(now, u_window_spec(ARGV[1]), cands, tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]))
if i then
  return { 1, i, v, now }
end
return { 0, v, now }
