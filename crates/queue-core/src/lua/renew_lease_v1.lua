-- queue_renew_lease v1 (body; runs after QUEUE_FRAGMENT)
-- KEYS: 1 owners zset
-- ARGV: 1 owner, 2 lease ms
-- Reply: the new lease expiry (epoch ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[2])
q_heartbeat(KEYS[1], ARGV[1], expiry)
return expiry
