-- reserve_v1: one request of a virtual key takes its place in the key's limits, or learns why not.
-- All keys share the virtual key's hash tag {<id>} (one Redis Cluster slot; no model group's keys).
-- KEYS[1] in-flight sorted set (member = request id, score = lease end, epoch ms)
-- KEYS[2] usage hash: w (window start, epoch ms), rpm (requests in window w), tpm (tokens reserved in w)
-- ARGV[1] window length (ms)   ARGV[2] rpm limit (-1 none)   ARGV[3] tpm limit (-1 none)
-- ARGV[4] parallel limit (-1 none)   ARGV[5] request id   ARGV[6] estimated tokens   ARGV[7] lease (ms)
-- Reply: {0, window start} granted | {1, retry-after ms} over rpm | {2, retry-after ms} over tpm
--        | {3, 0} at the parallel limit (wait and try again)
-- The rpm/tpm checks come first: a key over its rate is told at once, even while its parallel slots are full.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local rpm_limit = tonumber(ARGV[2])
local tpm_limit = tonumber(ARGV[3])
local parallel = tonumber(ARGV[4])
local est = tonumber(ARGV[6])
local lease = tonumber(ARGV[7])
local win = now - (now % window)

local w = tonumber(redis.call('HGET', KEYS[2], 'w') or '-1')
local rpm, tpm = 0, 0
if w == win then
  rpm = tonumber(redis.call('HGET', KEYS[2], 'rpm') or '0')
  tpm = tonumber(redis.call('HGET', KEYS[2], 'tpm') or '0')
end
local retry = win + window - now
if rpm_limit >= 0 and rpm + 1 > rpm_limit then return {1, retry} end
-- A request larger than the whole tpm limit may still run alone in a fresh window.
if tpm_limit >= 0 and tpm + est > tpm_limit and tpm > 0 then return {2, retry} end
if tpm_limit >= 0 and tpm_limit == 0 then return {2, retry} end

redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if parallel >= 0 and redis.call('ZCARD', KEYS[1]) >= parallel then return {3, 0} end

if w ~= win then
  redis.call('HSET', KEYS[2], 'w', win, 'rpm', 0, 'tpm', 0)
end
redis.call('HINCRBY', KEYS[2], 'rpm', 1)
redis.call('HINCRBY', KEYS[2], 'tpm', est)
redis.call('PEXPIRE', KEYS[2], window * 2)
redis.call('ZADD', KEYS[1], now + lease, ARGV[5])
redis.call('PEXPIRE', KEYS[1], lease * 2)
return {0, win}
