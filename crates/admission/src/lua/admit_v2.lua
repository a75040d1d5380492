-- admit_v2: the one atomic admission step for a model group. Appended to queue-core's QUEUE_FRAGMENT and
-- usage-tracker's USAGE_FRAGMENT (see admission::redis), so every q_* and u_* function used here is defined
-- above. Its memory twin is admission::memory; the twin property test (crates/admission/tests/twin.rs)
-- runs the same random steps on both and compares every reply and the state they leave.
--
-- KEYS: [1] queue zset, [2] seq, [3] owners zset, [4] grants hash, [5] generation, [6] jobs hash (a live
--       durable job's member -> "<score>:<attempts>"), [7] job runs zset (member -> runner lease expiry),
--       then 3 keys per candidate deployment (usage hash, in-flight zset, cooldown key), then (a job's submit
--       only) the job's record hash; all under the group's hash tag.
-- ARGV: [1] mode: "submit" | "poll" | "release" | "cancel" | "restore" | "claim"
--       [2] owner (this replica)       [3] liveness ms (owner lease a heartbeat renews)
--       [4] usage window: "<ms>" (fixed windows) or "<ms>r" (rolling)
--       [5] inflight_lease ms          [6] candidate order mode
--       [7] max grants per call        [8] wake channel prefix   [9] group name
--       [10] now ms (-1: Redis TIME; tests pin it)               [11] generation this replica knows ("" none)
--       [12] pause ms after the store lost its state              [13] n candidates
--       [14 .. 13+6n] candidates (u_parse_candidates layout)
--       then, with E = 13+6n:
--       submit:  E+1 member, E+2 priority, E+3 max depth (0 = unbounded), E+4 force queue (0/1),
--                E+5 job (0/1; a job is always queued: force queue 1), E+6 record expiry ms, E+7 f, then f
--                (field, value) pairs of the job's record
--       claim:   E+1 free job workers of this replica, E+2 job lease ms, E+3 job max attempts
--       release: E+1 reservation id, E+2 deployment index (1-based), E+3 window start, E+4 estimate,
--                E+5 actual tokens (-1 unknown), E+6 outcome (1 success, 2 failure, 3 abandoned after
--                sending, 0 never sent: the reservation is given back whole), E+7 latency ms per output
--                token (-1 none), E+8 time to first token ms (-1 none), E+9 EWMA weight of the sample
--       cancel:  E+1 member
--       restore: E+1 m, then m pairs (member, score: its place, or -(priority + 1) for the back of its
--                priority) (E+2 .. E+1+2m): waiters of this replica the store lost (those still queued or
--                granted are left alone); then E+2+2m r, then r triples
--                (reservation id, deployment index, estimate): its in-flight reservations, re-registered
--                in the current window
-- Reply, decoded by admission::redis::decode_reply into StepReply<T> (T per mode):
--   { status, next_ms, depth, generation, lapsed, <status fields>, member1, payload1, member2, payload2, ... }
--   next_ms: epoch ms when capacity may return for the head (-1 unknown); depth: queue length after the step
--   ("queued", "polled", "restored", "full"; -1 elsewhere, where it is not read); generation: the store's
--   (a replica that knew another one restores its waiters and reservations); lapsed: 1 when this replica's
--   heartbeat had lapsed before this step renewed it (its waiting entries may be gone: it restores them).
--   Status fields, by status:
--     "granted"   deployment_id, window_start      (SubmitOutcome::Granted; the fast path, no grants follow)
--     "queued"    position (0-based, -1 when the step granted it at once), not_before (epoch ms before which
--                 no deployment can take it, -1 if none ever can), score  (SubmitOutcome::Queued)
--     "full"      (none; depth is the queue's)                             (SubmitOutcome::Full)
--     "polled"    live: replicas alive in the group after the heartbeat    (Polled)
--     "restored"  waiters put back, reservations re-registered             (Restored)
--     "released"  requests_in_window, failures_in_window                   (SettleReport)
--     "cancelled" what: "waiting" | "grant" | "fast_path" | "absent"       (CancelOutcome)
--     "claimed"   requeued (runs whose runner's lease lapsed, put back at their place), j, then j triples
--                 (member, payload, attempts): the jobs this replica now runs         (Claimed)
--   then this replica's grants; a payload is s_payload's encoding (admission::GrantPayload), for a job also
--   "expired" (its deadline passed while it waited) or "exhausted" (job max attempts runs were started).
--
-- Durable jobs: a job's entry (owner "~jobs", queue_core::JOB_OWNER) belongs to no replica and waits in the
-- same queue, in the same order. Only a claim step (a replica with free job workers) grants it, to the
-- claiming replica, which then holds a runner lease in the job runs zset; any other step that reaches a job
-- at the head stops there (the order is global) and wakes the replicas' job workers (channel
-- <wake prefix>~jobs). A claim step first puts the runs whose runner's lease lapsed back at their place.
local now = tonumber(ARGV[10])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local mode = ARGV[1]
local owner = ARGV[2]
local liveness = tonumber(ARGV[3])
local win = u_window_spec(ARGV[4])
local inflight_lease = tonumber(ARGV[5])
local order_mode = tonumber(ARGV[6])
local max_grants = tonumber(ARGV[7])
local wake_prefix = ARGV[8]
local group = ARGV[9]
local known_gen = ARGV[11]
local pause_ms = tonumber(ARGV[12])
local n = tonumber(ARGV[13])
local e = 13 + 6 * n
local k_q, k_seq, k_owners, k_grants, k_gen = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local k_jobs, k_runs = KEYS[6], KEYS[7]
local JOB = '~jobs'

local cands = u_parse_candidates(KEYS, ARGV, 7, 13, n)

-- The store's generation: created (as its start time) by the first step after the store was empty. When a
-- replica that knew an earlier generation finds none, the store lost its state (restart, flush, failover):
-- nothing is granted for pause_ms, while replicas re-register their in-flight reservations and put their
-- waiters back (restore steps), so limits hold and the order is kept.
local gen = redis.call('GET', k_gen)
local paused_until = -1
if not gen then
  gen = q_num(now)
  if known_gen ~= '' then
    paused_until = now + pause_ms
    gen = gen .. ':' .. q_num(paused_until)
  end
  redis.call('SET', k_gen, gen)
else
  local sep = string.find(gen, ':', 1, true)
  if sep then
    local until_ms = tonumber(string.sub(gen, sep + 1))
    if until_ms > now then paused_until = until_ms end
  end
end
local paused = paused_until >= 0

-- The in-flight lease id of an entry's reservation: "<entry id>|<owner>", so the leases of a replica found
-- dead can be ended (u_end_leases_of reads the holder after the first '|'). Twin: admission::lease_id.
local function s_lease(entry)
  return entry.id .. '|' .. entry.owner
end

-- The owner's heartbeat: its waiting entries stay alive while it runs steps (a replica with waiters polls
-- every polling interval, one with requests in flight every heartbeat). Owners whose lease expired are
-- forgotten on the way (their entries are dead either way), so the set stays as small as the number of live
-- replicas, and their in-flight leases end: a dead replica's slots are free about one liveness after it
-- stopped, not one inflight_lease (a replica alive but cut off that long re-registers its leases when it is
-- back). Sets lapsed = 1 when the owner's lease had lapsed.
local lapsed = 0
local function s_heartbeat()
  if not q_owner_alive(k_owners, owner, now, nil) then lapsed = 1 end
  q_heartbeat(k_owners, owner, now + liveness)
  local dead = redis.call('ZRANGEBYSCORE', k_owners, '-inf', '(' .. q_num(now))
  if #dead > 0 then
    local holders = {}
    for _, o in ipairs(dead) do
      holders[o] = true
      redis.call('ZREM', k_owners, o)
    end
    for _, c in ipairs(cands) do u_end_leases_of(c.inflight, holders) end
  end
end

-- Grant payloads (admission::GrantPayload): "<deployment_id>|<window_start_ms>", or "reject" for an entry no
-- deployment can ever serve.
local function s_payload(dep_id, w)
  return dep_id .. '|' .. w
end

-- The deployment id and window start of a payload; nil for "reject" (or anything malformed).
local function s_parse_payload(payload)
  local sep = string.find(payload, '|', 1, true)
  if sep == nil then return nil end
  return string.sub(payload, 1, sep - 1), tonumber(string.sub(payload, sep + 1))
end

-- Gives back the reservation a granted payload stands for, if its deployment is a candidate of this step.
-- True if the deployment was found (the reservation is then settled, given back or already gone).
local function s_give_back_grant(entry, payload)
  local dep_id, w = s_parse_payload(payload)
  for _, c in ipairs(cands) do
    if c.id == dep_id then
      u_give_back(c.dep, c.inflight, s_lease(entry), w, entry.est, now, win)
      return true
    end
  end
  return false
end

-- A job's "<score>:<attempts>" (the jobs hash) as two numbers.
local function s_job_meta(meta)
  local sep = string.find(meta, ':', 1, true)
  return tonumber(string.sub(meta, 1, sep - 1)), tonumber(string.sub(meta, sep + 1))
end

local status
local fields = {}
-- Claim steps only: free job workers of this replica, their runner lease, the attempt cap.
local job_slots, job_lease, job_max = 0, 0, 0

if mode == 'submit' then
  local member = ARGV[e + 1]
  local priority = tonumber(ARGV[e + 2])
  local max_depth = tonumber(ARGV[e + 3])
  local force = ARGV[e + 4] == '1'
  local entry = q_decode(member)
  local head, head_score = q_head(k_q, k_owners, now, {})
  -- Only an entry of equal or better priority blocks the fast path.
  local blocked = head and head_score < q_score(priority + 1, 0)
  if not force and not blocked and not paused then
    local i, w = u_try_reserve(now, win, cands, order_mode, entry.est, entry.prompt, s_lease(entry),
      inflight_lease)
    if i then
      return { 'granted', -1, -1, gen, 0, cands[i].id, w }
    end
  end
  s_heartbeat()
  local score, rank = q_enqueue(k_q, k_seq, member, priority, max_depth)
  if not score then
    -- Entries of crashed replicas still count until reaped: reap, then try once more.
    q_reap(k_q, k_owners, now, {})
    score, rank = q_enqueue(k_q, k_seq, member, priority, max_depth)
  end
  if not score then
    return { 'full', -1, rank, gen, lapsed }
  end
  if ARGV[e + 5] == '1' then
    local k_rec = KEYS[8 + 3 * n]
    local f = tonumber(ARGV[e + 7])
    local args = {}
    for j = 1, 2 * f do args[j] = ARGV[e + 7 + j] end
    if f > 0 then redis.call('HSET', k_rec, unpack(args)) end
    redis.call('PEXPIRE', k_rec, ARGV[e + 6])
    redis.call('HSET', k_jobs, member, q_num(score) .. ':0')
  end
  status = 'queued'
  fields = { -1, u_not_before(cands, now, win, entry.est, entry.prompt), score }
elseif mode == 'claim' then
  -- The claimer heartbeats only when it takes a job (below): replicas that look for jobs and find none do
  -- not join the group.
  job_slots, job_lease, job_max = tonumber(ARGV[e + 1]), tonumber(ARGV[e + 2]), tonumber(ARGV[e + 3])
  -- Runs whose runner's lease lapsed (the runner died or lost Redis): back at their place, so the head of
  -- the queue reaches them again in order; their attempts stay counted.
  local requeued = 0
  local lapsed_runs = redis.call('ZRANGEBYSCORE', k_runs, '-inf', '(' .. q_num(now), 'LIMIT', 0, 64)
  for _, member in ipairs(lapsed_runs) do
    redis.call('ZREM', k_runs, member)
    local meta = redis.call('HGET', k_jobs, member)
    if meta then
      local score = s_job_meta(meta)
      redis.call('ZADD', k_q, q_num(score), member)
      requeued = requeued + 1
    end
  end
  status = 'claimed'
  fields = { requeued }
elseif mode == 'poll' then
  s_heartbeat()
  status = 'polled'
  fields = { redis.call('ZCARD', k_owners) }
elseif mode == 'restore' then
  s_heartbeat()
  local m = tonumber(ARGV[e + 1])
  local seq = tonumber(redis.call('GET', k_seq) or '0')
  local start_seq = seq
  local put_back = 0
  -- Entries with their place first, so the sequence resumes above every one of them; then those that go
  -- to the back of their priority.
  for pass = 1, 2 do
    for j = 0, m - 1 do
      local member, score = ARGV[e + 2 + 2 * j], tonumber(ARGV[e + 3 + 2 * j])
      if (pass == 1) == (score >= 0) then
        local entry = q_decode(member)
        if entry and q_live(k_owners, entry, now, nil) and not redis.call('ZSCORE', k_q, member)
          and redis.call('HEXISTS', k_grants, member) == 0 then
          if score < 0 then
            seq = seq + 1
            score = q_score(-score - 1, seq % 4294967296)
          elseif score % 4294967296 > seq then
            seq = score % 4294967296
          end
          redis.call('ZADD', k_q, q_num(score), member)
          put_back = put_back + 1
        end
      end
    end
  end
  if seq > start_seq then redis.call('SET', k_seq, q_num(seq)) end
  local o = e + 2 + 2 * m
  local r = tonumber(ARGV[o])
  local registered = 0
  for j = 0, r - 1 do
    local res_id = ARGV[o + 1 + 3 * j]
    local c = cands[tonumber(ARGV[o + 2 + 3 * j])]
    if c and not redis.call('ZSCORE', c.inflight, res_id) then
      u_charge(c, now, win, tonumber(ARGV[o + 3 + 3 * j]), res_id, inflight_lease)
      registered = registered + 1
    end
  end
  fields = { put_back, registered }
  status = 'restored'
  fields = { put_back, registered }
elseif mode == 'release' then
  local c = cands[tonumber(ARGV[e + 2])]
  local outcome = tonumber(ARGV[e + 6])
  if outcome == 0 then
    u_give_back(c.dep, c.inflight, ARGV[e + 1], tonumber(ARGV[e + 3]), tonumber(ARGV[e + 4]), now, win)
  elseif outcome == 3 then
    outcome = 0
  end
  local requests, failures = u_settle(c.dep, c.inflight, ARGV[e + 1], tonumber(ARGV[e + 3]),
    tonumber(ARGV[e + 4]), tonumber(ARGV[e + 5]), outcome, now, win, tonumber(ARGV[e + 7]),
    tonumber(ARGV[e + 8]), tonumber(ARGV[e + 9]))
  status = 'released'
  fields = { requests, failures }
elseif mode == 'cancel' then
  local member = ARGV[e + 1]
  local entry = q_decode(member)
  local what = 'absent'
  if q_remove(k_q, member) == 1 then
    what = 'waiting'
  else
    local payload = q_take_grant(k_grants, member)
    if payload then
      -- Granted concurrently: give the capacity back (the request never ran).
      s_give_back_grant(entry, payload)
      what = 'grant'
    else
      -- A submit step that the request gave up on while it was on the way may have reserved on the fast
      -- path (its in-flight lease carries the entry's lease id, reserved inflight_lease ago at most): give it
      -- back.
      local lease = s_lease(entry)
      for _, c in ipairs(cands) do
        local expiry = redis.call('ZSCORE', c.inflight, lease)
        if expiry then
          local w = u_window_start(tonumber(expiry) - inflight_lease, win)
          if u_give_back(c.dep, c.inflight, lease, w, entry.est, now, win) == 1 then what = 'fast_path' end
        end
      end
    end
  end
  status = 'cancelled'
  fields = { what }
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
      if s_parse_payload(payload) == nil or s_give_back_grant(entry, payload) then
        redis.call('HDEL', k_grants, member)
      end
    end
  end
end

-- Admit from the global head while some deployment has headroom for it. This replica's grants go straight
-- into the reply; other replicas' are recorded in the hash and their owners woken.
local next_ms = -1
local granted = 0
local woken = {}
local jobs_out = {}
local job_waits = false
local claimer_alive = false
if paused then next_ms = paused_until end
while granted < max_grants and not paused do
  local member, score = q_head(k_q, k_owners, now, {})
  if not member then break end
  local entry = q_decode(member)
  local payload
  local job_attempts = 0
  local skip = false
  if entry.owner == JOB then
    local meta = redis.call('HGET', k_jobs, member)
    if not meta then
      -- A job entry whose job is gone (finished meanwhile): drop it.
      q_remove(k_q, member)
      skip = true
    elseif job_slots <= 0 then
      -- Only a replica with a free job worker takes a job: the queue waits for one here.
      job_waits = true
      break
    else
      -- The run's lease carries this replica: it must be alive in the group from now on.
      if not claimer_alive then
        s_heartbeat()
        claimer_alive = true
      end
      local _, attempts = s_job_meta(meta)
      job_attempts = attempts
      if entry.deadline ~= 0 and entry.deadline < now then
        payload = 'expired'
      elseif attempts >= job_max then
        payload = 'exhausted'
      end
    end
  end
  if not skip then
    if payload == nil then
      -- A job's run is held by the claiming replica: its lease ends with that replica's liveness.
      local lease = s_lease(entry)
      if entry.owner == JOB then lease = entry.id .. '|' .. owner end
      local i, w = u_try_reserve(now, win, cands, order_mode, entry.est, entry.prompt, lease,
        inflight_lease)
      if i then
        payload = s_payload(cands[i].id, w)
      elseif w == -1 then
        -- No deployment can ever serve this entry (prompt or estimate too large): refuse it instead of
        -- letting it block the queue.
        payload = 'reject'
      else
        next_ms = w
        break
      end
    end
    q_remove(k_q, member)
    if entry.owner == JOB then
      if s_parse_payload(payload) ~= nil then
        job_attempts = job_attempts + 1
        redis.call('HSET', k_jobs, member, q_num(score) .. ':' .. job_attempts)
      end
      redis.call('ZADD', k_runs, q_num(now + job_lease), member)
      jobs_out[#jobs_out + 1] = member
      jobs_out[#jobs_out + 1] = payload
      jobs_out[#jobs_out + 1] = job_attempts
      job_slots = job_slots - 1
    elseif entry.owner == owner then
      mine[#mine + 1] = member
      mine[#mine + 1] = payload
    else
      q_record_grant(k_grants, member, payload)
      woken[entry.owner] = true
    end
    granted = granted + 1
  end
end
for other in pairs(woken) do
  redis.call('PUBLISH', wake_prefix .. other, group)
end
-- A job waits at the head for a free worker: wake the job workers of every replica (a claim step that
-- used all its workers wakes the others only if it took a job, so claims never wake each other in a loop).
if job_waits and (status ~= 'claimed' or #jobs_out > 0) then
  redis.call('PUBLISH', wake_prefix .. JOB, group)
end
if status == 'claimed' then
  fields[2] = #jobs_out / 3
  for _, v in ipairs(jobs_out) do fields[#fields + 1] = v end
end

if status == 'queued' then
  local rank = redis.call('ZRANK', k_q, ARGV[e + 1])
  if rank then fields[1] = rank end
end
-- Depth is read where someone uses it (queue position, pollers); -1 elsewhere, to spare a call.
local depth = -1
if status == 'queued' or status == 'polled' or status == 'restored' then depth = redis.call('ZCARD', k_q) end
local reply = { status, next_ms, depth, gen, lapsed }
for _, v in ipairs(fields) do reply[#reply + 1] = v end
for _, v in ipairs(mine) do reply[#reply + 1] = v end
return reply
