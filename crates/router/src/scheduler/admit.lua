-- admit_v1: the scheduler's one atomic step for a model group. Appended to queue-core's QUEUE_FRAGMENT and
-- usage-tracker's USAGE_FRAGMENT (see scheduler/redis.rs), so every function used here is defined above.
--
-- KEYS: [1] queue zset, [2] seq, [3] owners zset, [4] grants hash, then 3 keys per candidate deployment
--       (usage hash, in-flight zset, cooldown key), all under the group's hash tag.
-- ARGV: [1] mode: "submit" | "poll" | "release" | "cancel"
--       [2] owner (this replica)       [3] owner lease ms       [4] usage window ms
--       [5] reservation lease ms       [6] candidate order mode [7] max grants per call
--       [8] wake channel prefix        [9] group name            [10] n candidates
--       [11 .. 10+6n] candidates (u_parse_candidates layout)
--       then, with E = 10+6n:
--       submit:  E+1 member, E+2 priority, E+3 max depth (0 = unbounded), E+4 force queue (0/1),
--                E+5 in-flight lease ms of a fast-path reservation
--       release: E+1 reservation id, E+2 deployment index (1-based), E+3 window start, E+4 estimate,
--                E+5 actual tokens (-1 unknown), E+6 outcome (1 success, 2 failure, 3 abandoned after
--                sending, 0 never sent: the reservation is given back whole), E+7 latency ms per output
--                token (-1 none),
--                E+8 time to first token ms (-1 none), E+9 EWMA weight of the latency sample
--       cancel:  E+1 member
-- Reply (decoded by scheduler::redis::AdmitReply):
--   { status, next_ms, depth (-1 when not read), position, fast_deployment, fast_window, a, b, member1,
--     payload1, ... }
--   status: "granted" (fast path: fast_deployment/fast_window), "queued" (position = 0-based rank,
--           a = epoch ms before which no deployment can take the request, -1 if none ever can),
--           "full" (depth), "polled", "released" (a = requests in window, b = failures in window),
--           "cancelled" (a = 1 when the entry was waiting, 2 when its grant was taken back, 3 when a fast-path
--           reservation of its racing submit was given back, 0 when absent)
--   next_ms: epoch ms when capacity may return for the head (-1 unknown), then this replica's grants as
--   member/payload pairs; a payload is "<deployment_id>|<window_start>" or "reject" for an entry no deployment
--   can ever serve.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local mode = ARGV[1]
local owner = ARGV[2]
local owner_lease = tonumber(ARGV[3])
local window_ms = tonumber(ARGV[4])
local res_lease = tonumber(ARGV[5])
local order_mode = tonumber(ARGV[6])
local max_grants = tonumber(ARGV[7])
local wake_prefix = ARGV[8]
local group = ARGV[9]
local n = tonumber(ARGV[10])
local e = 10 + 6 * n
local k_q, k_seq, k_owners, k_grants = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

local cands = u_parse_candidates(KEYS, ARGV, 4, 10, n)
-- The owner's heartbeat: its waiting entries stay alive while it runs submit and poll steps (a replica with
-- waiting entries polls every polling interval). Owners whose lease expired are forgotten on the way (their
-- entries are dead either way), so the set stays as small as the number of live replicas.
local function s_heartbeat()
  q_heartbeat(k_owners, owner, now + owner_lease)
  redis.call('ZREMRANGEBYSCORE', k_owners, '-inf', '(' .. q_num(now))
end

-- The earliest epoch ms at which some candidate could take a request (cooldowns and full windows; in-flight
-- slots may free at any time), -1 if none ever can. A lower bound: entries ahead may take that capacity.
local function s_not_before(cs, now, window_ms, est, prompt)
  local ws = u_window_start(now, window_ms)
  local best = -1
  for _, c in ipairs(cs) do
    local fits = not ((c.max_input >= 0 and prompt > c.max_input) or (c.tpm >= 0 and est > c.tpm)
      or c.rpm == 0 or c.max_parallel == 0)
    local at = now
    if fits then
      local cd = redis.call('PTTL', c.cd)
      if cd == -1 then fits = false elseif cd > 0 then at = now + cd end
    end
    if fits then
      local rpm_used, tpm_used = u_usage(c.dep, ws)
      if (c.rpm > 0 and rpm_used + 1 > c.rpm) or (c.tpm >= 0 and tpm_used + est > c.tpm) then
        at = math.max(at, ws + window_ms)
      end
      if best == -1 or at < best then best = at end
    end
  end
  return best
end

local status = 'polled'
local position = -1
local fast_dep, fast_window = '', -1
local a, b = 0, 0
local removed = {}

if mode == 'submit' then
  local member = ARGV[e + 1]
  local priority = tonumber(ARGV[e + 2])
  local max_depth = tonumber(ARGV[e + 3])
  local force = ARGV[e + 4] == '1'
  local entry = q_decode(member)
  local head, head_score = q_head(k_q, k_owners, now, removed)
  -- Only an entry of equal or better priority blocks the fast path: scores below (priority+1)*2^32.
  local blocked = head and head_score < (priority + 1) * 4294967296
  if not force and not blocked then
    local i, w = u_try_reserve(now, window_ms, cands, order_mode, entry.est, entry.prompt, entry.id,
      tonumber(ARGV[e + 5]))
    if i then
      return { 'granted', -1, -1, -1, cands[i].id, w, 0, 0 }
    end
  end
  s_heartbeat()
  local score, rank = q_enqueue(k_q, k_seq, member, priority, max_depth)
  if not score then
    -- Entries of crashed replicas still count until reaped: reap, then try once more.
    q_reap(k_q, k_owners, now, removed)
    score, rank = q_enqueue(k_q, k_seq, member, priority, max_depth)
  end
  if not score then
    return { 'full', -1, rank, -1, '', -1, 0, 0 }
  end
  status = 'queued'
  a = s_not_before(cands, now, window_ms, entry.est, entry.prompt)
elseif mode == 'poll' then
  s_heartbeat()
elseif mode == 'release' then
  local c = cands[tonumber(ARGV[e + 2])]
  local outcome = tonumber(ARGV[e + 6])
  if outcome == 0 then
    u_give_back(c.dep, c.inflight, ARGV[e + 1], tonumber(ARGV[e + 3]), tonumber(ARGV[e + 4]))
  elseif outcome == 3 then
    outcome = 0
  end
  a, b = u_settle(c.dep, c.inflight, ARGV[e + 1], tonumber(ARGV[e + 3]), tonumber(ARGV[e + 4]),
    tonumber(ARGV[e + 5]), outcome, now, window_ms, tonumber(ARGV[e + 7]), tonumber(ARGV[e + 8]),
    tonumber(ARGV[e + 9]))
  status = 'released'
elseif mode == 'cancel' then
  local member = ARGV[e + 1]
  if q_remove(k_q, member) == 1 then
    a = 1
  else
    local payload = q_take_grant(k_grants, member)
    if payload and payload ~= 'reject' then
      -- Granted concurrently: give the capacity back (the request never ran).
      local sep = string.find(payload, '|', 1, true)
      local dep_id = string.sub(payload, 1, sep - 1)
      local w = tonumber(string.sub(payload, sep + 1))
      local entry = q_decode(member)
      for _, c in ipairs(cands) do
        if c.id == dep_id then u_give_back(c.dep, c.inflight, entry.id, w, entry.est) end
      end
      a = 2
    elseif payload then
      a = 2
    else
      -- A submit step that the request gave up on while it was on the way may have reserved on the fast
      -- path (its in-flight lease carries the entry id, reserved res_lease ago at most): give it back.
      local entry = q_decode(member)
      for _, c in ipairs(cands) do
        local expiry = redis.call('ZSCORE', c.inflight, entry.id)
        if expiry then
          local w = u_window_start(tonumber(expiry) - res_lease, window_ms)
          u_give_back(c.dep, c.inflight, entry.id, w, entry.est)
          a = 3
        end
      end
    end
  end
  status = 'cancelled'
end

-- Grants waiting in the hash: this replica's are taken; those of replicas that died before collecting them
-- hold capacity no request will use, so it is given back now (a crashed replica holds a deployment no longer
-- than its queue lease). A dead owner's grant naming a deployment missing from this step's candidates waits
-- for a step that has it.
local mine = {}
local pending = redis.call('HGETALL', k_grants)
if #pending > 0 then
  local alive = {}
  for j = 1, #pending, 2 do
    local member, payload = pending[j], pending[j + 1]
    local entry = q_decode(member)
    if entry == nil then
      redis.call('HDEL', k_grants, member)
    elseif entry.owner == owner then
      mine[#mine + 1] = member
      mine[#mine + 1] = payload
      redis.call('HDEL', k_grants, member)
    elseif not q_owner_alive(k_owners, entry.owner, now, alive) then
      local sep = string.find(payload, '|', 1, true)
      if sep == nil then
        redis.call('HDEL', k_grants, member)
      else
        local dep_id = string.sub(payload, 1, sep - 1)
        local w = tonumber(string.sub(payload, sep + 1))
        for _, c in ipairs(cands) do
          if c.id == dep_id then
            u_give_back(c.dep, c.inflight, entry.id, w, entry.est)
            redis.call('HDEL', k_grants, member)
          end
        end
      end
    end
  end
end

-- Admit from the global head while some deployment has headroom for it. This replica's grants go straight
-- into the reply; other replicas' are recorded in the hash and their owners woken.
local next_ms = -1
local granted = 0
local woken = {}
while granted < max_grants do
  local member = q_head(k_q, k_owners, now, removed)
  if not member then break end
  local entry = q_decode(member)
  local i, w = u_try_reserve(now, window_ms, cands, order_mode, entry.est, entry.prompt, entry.id, res_lease)
  local payload
  if i then
    payload = cands[i].id .. '|' .. w
  elseif w == -1 then
    -- No deployment can ever serve this entry (prompt or estimate too large): refuse it instead of letting
    -- it block the queue.
    payload = 'reject'
  else
    next_ms = w
    break
  end
  q_remove(k_q, member)
  if entry.owner == owner then
    mine[#mine + 1] = member
    mine[#mine + 1] = payload
  else
    q_record_grant(k_grants, member, payload)
    woken[entry.owner] = true
  end
  granted = granted + 1
end
for other in pairs(woken) do
  redis.call('PUBLISH', wake_prefix .. other, group)
end

-- Depth is reported where someone reads it (queue position, pollers); -1 elsewhere.
local depth = -1
if status == 'queued' or status == 'polled' then depth = redis.call('ZCARD', k_q) end
if status == 'queued' then
  local rank = redis.call('ZRANK', k_q, ARGV[e + 1])
  if rank then position = rank end
end
local reply = { status, next_ms, depth, position, fast_dep, fast_window, a, b }
for _, v in ipairs(mine) do reply[#reply + 1] = v end
return reply
