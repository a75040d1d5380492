-- queue_depth_by_priority v1 (body; runs after QUEUE_FRAGMENT)
-- KEYS: 1 queue zset
-- ARGV: none
-- Reply: flat {priority, count, ...} for each priority with queued entries, best priority first.
-- Costs one ZRANGEBYSCORE + ZCOUNT per distinct priority, not one step per entry.
local out = {}
local from = '-inf'
while true do
  local first = redis.call('ZRANGEBYSCORE', KEYS[1], from, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #first == 0 then
    break
  end
  local priority = math.floor(tonumber(first[2]) / 4294967296)
  local next_band = q_num((priority + 1) * 4294967296)
  out[#out + 1] = priority
  out[#out + 1] = redis.call('ZCOUNT', KEYS[1], q_num(priority * 4294967296), '(' .. next_band)
  from = next_band
end
return out
