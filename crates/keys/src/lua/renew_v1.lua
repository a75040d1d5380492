-- renew_v1: a running request of a virtual key keeps its parallel slot for another lease.
-- KEYS[1] in-flight sorted set   ARGV[1] request id   ARGV[2] lease (ms)
-- Reply: 1 when the slot was still held (XX: a lapsed slot is not brought back), else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
return redis.call('ZADD', KEYS[1], 'XX', 'CH', now + tonumber(ARGV[2]), ARGV[1])
