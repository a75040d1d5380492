-- status_v1: a read-only view of one model group's queue for /queue/status (body; runs after QUEUE_FRAGMENT).
-- Its memory twin is admission::MemoryAdmission's QueueStatus; the twin property test compares the two.
-- Cost: ZCARD, then per priority band one ZRANGEBYSCORE LIMIT 1 (the band's head) and one ZCOUNT, at most
-- ARGV[2] bands; never a walk over the queue's entries. Grants are few (taken within a poll), owners are
-- the group's replicas.
-- KEYS: [1] queue zset, [2] owners zset, [3] grants hash, [4] jobs hash, [5] job runs zset
-- ARGV: [1] now ms (-1: Redis TIME; tests pin it), [2] max priority bands to report
-- Reply (decoded by admission::status::decode): { now, depth, more (1 when bands beyond ARGV[2] wait),
--   nb, then nb triples (priority, count, head member) best priority first,
--   no, then no pairs (owner, lease expiry ms) of live owners sorted by owner,
--   ng, then ng members with a grant not yet taken (sorted),
--   jobs live (queued or running), jobs running }
local now = tonumber(ARGV[1])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local max_bands = tonumber(ARGV[2])
local k_q, k_owners, k_grants, k_jobs, k_runs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

local out = { now, redis.call('ZCARD', k_q), 0, 0 }
local bands = {}
local from = '-inf'
while true do
  local first = redis.call('ZRANGEBYSCORE', k_q, from, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #first == 0 then
    break
  end
  if #bands >= 3 * max_bands then
    out[3] = 1
    break
  end
  local priority = math.floor(tonumber(first[2]) / 4294967296)
  local next_band = q_num((priority + 1) * 4294967296)
  bands[#bands + 1] = priority
  bands[#bands + 1] = redis.call('ZCOUNT', k_q, q_num(priority * 4294967296), '(' .. next_band)
  bands[#bands + 1] = first[1]
  from = next_band
end
out[4] = #bands / 3
for i = 1, #bands do
  out[#out + 1] = bands[i]
end

local owners = redis.call('ZRANGEBYSCORE', k_owners, now, '+inf', 'WITHSCORES')
local pairs_ = {}
for i = 1, #owners, 2 do
  pairs_[#pairs_ + 1] = { owners[i], tonumber(owners[i + 1]) }
end
table.sort(pairs_, function(a, b) return a[1] < b[1] end)
out[#out + 1] = #pairs_
for _, p in ipairs(pairs_) do
  out[#out + 1] = p[1]
  out[#out + 1] = p[2]
end

local granted = redis.call('HKEYS', k_grants)
table.sort(granted)
out[#out + 1] = #granted
for _, m in ipairs(granted) do
  out[#out + 1] = m
end

out[#out + 1] = redis.call('HLEN', k_jobs)
out[#out + 1] = redis.call('ZCARD', k_runs)
return out
