-- queue_enqueue v1 (body; runs after QUEUE_FRAGMENT)
-- KEYS: 1 queue zset, 2 seq counter, 3 owners zset
-- ARGV: 1 member, 2 priority, 3 max_depth (0 = unbounded), 4 owner, 5 owner liveness ms
-- Reply: {1, score, rank} when queued (the owner's lease is extended to at least now + lease),
--        {0, depth} when the queue is full.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score, rank = q_enqueue(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
if not score then
  return { 0, rank }
end
q_touch_owner(KEYS[3], ARGV[4], now + tonumber(ARGV[5]))
return { 1, score, rank }
