-- queue_reap v1 (body; runs after QUEUE_FRAGMENT)
-- KEYS: 1 queue zset, 2 owners zset
-- ARGV: none
-- Reply: flat {member, score, ...} of the removed dead entries, in queue order.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local removed, removed_scores = {}, {}
q_reap(KEYS[1], KEYS[2], now, removed, removed_scores)
local out = {}
for i = 1, #removed do
  out[#out + 1] = removed[i]
  out[#out + 1] = removed_scores[i]
end
return out
