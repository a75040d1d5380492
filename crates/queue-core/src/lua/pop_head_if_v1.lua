-- queue_pop_head_if v1 (body; runs after QUEUE_FRAGMENT)
-- KEYS: 1 queue zset, 2 owners zset
-- ARGV: 1 max_score
-- Reply: {{reaped member, reaped score, ...}, member, score} when the first live entry has score <= max_score
--        (it is removed), else {{reaped member, reaped score, ...}}. Dead head entries are reaped either way.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local removed, removed_scores = {}, {}
local member, score = q_head(KEYS[1], KEYS[2], now, removed, removed_scores)
local reaped = {}
for i = 1, #removed do
  reaped[#reaped + 1] = removed[i]
  reaped[#reaped + 1] = removed_scores[i]
end
if member ~= nil and score <= tonumber(ARGV[1]) then
  q_remove(KEYS[1], member)
  return { reaped, member, score }
end
return { reaped }
