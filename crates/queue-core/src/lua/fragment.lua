-- queue-core QUEUE_FRAGMENT v1: local functions over one model group's queue keys.
--
-- Concatenated in front of every queue script and of the router's composite admission scripts. It only
-- defines `local function`s: no top-level code, no KEYS/ARGV access; every key is a parameter.
--
-- Keys of one group (all share the group's hash tag, see store::Keyspace):
--   k_q      ZSET   member -> score, score = priority * 2^32 + (INCR k_seq mod 2^32); lower is served first
--   k_seq    STRING per-group sequence counter
--   k_owners ZSET   owner id -> lease expiry (epoch ms); an entry is alive while its owner's expiry >= now
--   k_grants HASH   member -> grant payload "<deployment_id>|<window_start_ms>"
-- Member: "<id>|<owner>|<est_tokens>|<prompt_tokens>|<deadline_ms>" (deadline 0 = none). The owner `~jobs`
-- (queue_core::JOB_OWNER) marks a durable job's entry: it belongs to no replica and is always live (its
-- deadline is acted on by the admission step, which finishes the job, not by silent removal).
-- Scores stay below 2^53, so Lua doubles hold them exactly; q_num formats them for Redis.

-- Formats an integral number without exponent notation (Lua's tostring switches to it past 1e14).
local function q_num(x)
  return string.format('%.0f', x)
end

-- The score of sequence number `seq` at `priority`: priority * 2^32 + seq (twin: queue_core::Score::new).
-- q_score(p + 1, 0) bounds the scores of priority p and better from above.
local function q_score(priority, seq)
  return tonumber(priority) * 4294967296 + seq
end

-- Decodes a member into {id=, owner=, est=, prompt=, deadline=} (numbers as numbers); nil if malformed.
local function q_decode(member)
  local id, owner, est, prompt, deadline =
    string.match(member, '^([^|]+)|([^|]+)|(%d+)|(%d+)|(%d+)$')
  if id == nil then
    return nil
  end
  return { id = id, owner = owner, est = tonumber(est), prompt = tonumber(prompt), deadline = tonumber(deadline) }
end

-- True while `owner` holds a lease (expiry >= now). `cache` (optional table) memoises answers per owner for
-- the rest of the script, so a head full of one dead owner's entries costs one ZSCORE.
local function q_owner_alive(k_owners, owner, now, cache)
  if owner == '~jobs' then
    return true
  end
  if cache ~= nil then
    local known = cache[owner]
    if known ~= nil then
      return known
    end
  end
  local expiry = redis.call('ZSCORE', k_owners, owner)
  local alive = expiry ~= false and tonumber(expiry) >= now
  if cache ~= nil then
    cache[owner] = alive
  end
  return alive
end

-- True if decoded entry `e` still wants service: well formed, deadline (if any) not passed, owner alive.
local function q_live(k_owners, e, now, cache)
  if e == nil then
    return false
  end
  if e.owner == '~jobs' then
    return true
  end
  if e.deadline ~= 0 and e.deadline < now then
    return false
  end
  return q_owner_alive(k_owners, e.owner, now, cache)
end

-- Adds `member` at `priority` behind everyone of equal or better priority. Returns `score, rank` (0-based
-- rank) or `false, depth` when the queue already holds `max_depth` entries (max_depth 0 = unbounded).
-- Re-adding a present member moves it to the back of its priority, like ZADD.
local function q_enqueue(k_q, k_seq, member, priority, max_depth)
  max_depth = tonumber(max_depth)
  if max_depth > 0 then
    local depth = redis.call('ZCARD', k_q)
    if depth >= max_depth then
      return false, depth
    end
  end
  local score = q_score(priority, redis.call('INCR', k_seq) % 4294967296)
  redis.call('ZADD', k_q, q_num(score), member)
  return score, redis.call('ZRANK', k_q, member)
end

-- True if any entry with score < (priority + 1) * 2^32 exists: someone of equal or better priority waits.
-- Counts entries whose owner died too; they disappear at the next q_head or q_reap.
local function q_better_waiting(k_q, priority)
  local head = redis.call('ZRANGE', k_q, 0, 0, 'WITHSCORES')
  if #head == 0 then
    return false
  end
  return tonumber(head[2]) < q_score(tonumber(priority) + 1, 0)
end

-- Returns `member, score` of the first live entry, or nil when none is left. Dead head entries (owner
-- lease expired, deadline passed, malformed) are removed on the way and their members appended to
-- `removed` (and their scores to the optional `removed_scores`).
local function q_head(k_q, k_owners, now, removed, removed_scores)
  local cache = {}
  while true do
    local batch = redis.call('ZRANGE', k_q, 0, 15, 'WITHSCORES')
    if #batch == 0 then
      return nil
    end
    for i = 1, #batch, 2 do
      local member = batch[i]
      if q_live(k_owners, q_decode(member), now, cache) then
        return member, tonumber(batch[i + 1])
      end
      redis.call('ZREM', k_q, member)
      if removed ~= nil then
        removed[#removed + 1] = member
      end
      if removed_scores ~= nil then
        removed_scores[#removed_scores + 1] = tonumber(batch[i + 1])
      end
    end
  end
end

-- Removes `member` from the queue; returns 1 if it was there, else 0.
local function q_remove(k_q, member)
  return redis.call('ZREM', k_q, member)
end

-- Sets `owner`'s lease expiry (epoch ms): renews every entry of that owner in the group at once.
local function q_heartbeat(k_owners, owner, expiry_ms)
  redis.call('ZADD', k_owners, q_num(tonumber(expiry_ms)), owner)
end

-- Like q_heartbeat but never shortens a lease (used on enqueue, so an entry is alive from its first moment).
local function q_touch_owner(k_owners, owner, expiry_ms)
  redis.call('ZADD', k_owners, 'GT', q_num(tonumber(expiry_ms)), owner)
end

-- Records that `member` was granted; `payload` is "<deployment_id>|<window_start_ms>".
local function q_record_grant(k_grants, member, payload)
  redis.call('HSET', k_grants, member, payload)
end

-- Takes (reads and deletes) the grants of `owner`'s entries; returns a flat array {member, payload, ...}
-- in no particular order.
local function q_take_grants(k_grants, owner)
  local all = redis.call('HGETALL', k_grants)
  local out = {}
  for i = 1, #all, 2 do
    local e = q_decode(all[i])
    if e ~= nil and e.owner == owner then
      out[#out + 1] = all[i]
      out[#out + 1] = all[i + 1]
      redis.call('HDEL', k_grants, all[i])
    end
  end
  return out
end

-- Takes the grant of one member (for cancel): returns its payload, or false if it has none.
local function q_take_grant(k_grants, member)
  local payload = redis.call('HGET', k_grants, member)
  if payload then
    redis.call('HDEL', k_grants, member)
  end
  return payload
end

-- Full pass: removes every dead entry (see q_live), appending members to `removed` and scores to the
-- optional `removed_scores` in queue order, then forgets owners whose lease expired.
local function q_reap(k_q, k_owners, now, removed, removed_scores)
  local cache = {}
  local start = 0
  while true do
    local batch = redis.call('ZRANGE', k_q, start, start + 255, 'WITHSCORES')
    if #batch == 0 then
      break
    end
    local kept = 0
    for i = 1, #batch, 2 do
      local member = batch[i]
      if q_live(k_owners, q_decode(member), now, cache) then
        kept = kept + 1
      else
        redis.call('ZREM', k_q, member)
        if removed ~= nil then
          removed[#removed + 1] = member
        end
        if removed_scores ~= nil then
          removed_scores[#removed_scores + 1] = tonumber(batch[i + 1])
        end
      end
    end
    start = start + kept
  end
  redis.call('ZREMRANGEBYSCORE', k_owners, '-inf', '(' .. q_num(now))
end
