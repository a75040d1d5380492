-- queue_peek v1 (body; runs after QUEUE_FRAGMENT). Read only: dead entries are skipped, not removed.
-- KEYS: 1 queue zset, 2 owners zset
-- ARGV: 1 n (max entries to return)
-- Reply: flat {member, score, ...} of the first n live entries in queue order.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local out = {}
local cache = {}
local start = 0
while #out < 2 * n do
  local batch = redis.call('ZRANGE', KEYS[1], start, start + 63, 'WITHSCORES')
  if #batch == 0 then
    break
  end
  for i = 1, #batch, 2 do
    if #out < 2 * n and q_live(KEYS[2], q_decode(batch[i]), now, cache) then
      out[#out + 1] = batch[i]
      out[#out + 1] = tonumber(batch[i + 1])
    end
  end
  start = start + 64
end
return out
