-- job_v1: the steps on one durable job's record that need no admission (start, read, finish, cancel, renew,
-- hand back). Appended to queue-core's QUEUE_FRAGMENT (q_num, q_decode). Its memory twin is
-- admission::memory (MemoryAdmission's JobStore); admit_v2 creates the record (a job's submit) and grants
-- jobs (claim). The job's state lives in the group's keys: its entry in the queue while it waits, its member
-- in the job runs zset while a runner holds it, its "<score>:<attempts>" in the jobs hash until it finishes.
--
-- KEYS: [1] the job's record hash, [2] jobs hash, [3] job runs zset, [4] queue zset (the group's hash tag)
-- ARGV: [1] mode: "start" | "read" | "finish" | "cancel" | "renew" | "hand_back"
--       [2] member (the job's queue member; "read" and "cancel" take it from the record)
--       [3] now ms (-1: Redis TIME; tests pin it)
--       start:     [4] attempt
--       read:      [4] timeout error JSON (a queued job whose deadline passed is finished with it, 408),
--                  [5] lost error JSON (a job the store lost the state of, 500), [6] record expiry ms
--       finish:    [4] HTTP status, [5] "result" | "error", [6] body JSON, [7] record expiry ms
--       cancel:    [4] cancelled error JSON, [5] HTTP status of it, [6] record expiry ms
--       renew:     [4] runner lease expiry (epoch ms)
--       hand_back: [4] wake channel, [5] group
-- Reply, decoded by admission::redis (JobView, JobCancel, bool):
--   start:     { "absent" } | { "finished" } | { "started", field1, value1, ... }
--   read:      { "absent" } | { state, position (-1 unless queued), field1, value1, ... }, state one of
--              "queued", "running", "finished"
--   finish:    { "finished" } (finished now) | { "ignored" } (finished before, or the record expired: then
--              what is left of the job in the group's keys goes)
--   cancel:    { "absent" } | { "finished" } | { "cancelled", was running (0/1) }
--   renew:     { "renewed" } | { "lost" } (the run is no longer held: lapsed and put back, or finished)
--   hand_back: { "handed_back" } | { "absent" }
local mode = ARGV[1]
local member = ARGV[2]
local now = tonumber(ARGV[3])
if now < 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local k_rec, k_jobs, k_runs, k_q = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- Finishes the job: the record keeps the answer for `ttl` ms; the queue entry, the run and the jobs field go.
local function j_finish(m, code, kind, body, ttl)
  local other = 'error'
  if kind == 'error' then other = 'result' end
  redis.call('HSET', k_rec, 'status', 'finished', 'finished_ms', q_num(now), 'status_code', code, kind, body)
  redis.call('HDEL', k_rec, other)
  redis.call('PEXPIRE', k_rec, ttl)
  redis.call('ZREM', k_q, m)
  redis.call('ZREM', k_runs, m)
  redis.call('HDEL', k_jobs, m)
end

local function j_record(reply)
  local all = redis.call('HGETALL', k_rec)
  for _, v in ipairs(all) do reply[#reply + 1] = v end
  return reply
end

if mode == 'start' then
  local status = redis.call('HGET', k_rec, 'status')
  if not status then return { 'absent' } end
  if status == 'finished' then return { 'finished' } end
  redis.call('HSET', k_rec, 'started_ms', q_num(now), 'attempts', ARGV[4])
  return j_record({ 'started' })
elseif mode == 'read' then
  local status = redis.call('HGET', k_rec, 'status')
  if not status then return { 'absent' } end
  if status ~= 'finished' then
    local m = redis.call('HGET', k_rec, 'member')
    local entry = q_decode(m or '')
    if redis.call('ZSCORE', k_q, m or '') then
      if entry and entry.deadline ~= 0 and entry.deadline < now then
        j_finish(m, '408', 'error', ARGV[4], ARGV[6])
        return j_record({ 'finished', -1 })
      end
      return j_record({ 'queued', redis.call('ZRANK', k_q, m) })
    elseif redis.call('HEXISTS', k_jobs, m or '') == 1 then
      return j_record({ 'running', -1 })
    else
      -- Neither waiting, running nor finished: the store lost the job's state (a restart without AOF, a
      -- failover). Finish it, so a client's poll loop ends.
      j_finish(m or '', '500', 'error', ARGV[5], ARGV[6])
      return j_record({ 'finished', -1 })
    end
  end
  return j_record({ 'finished', -1 })
elseif mode == 'finish' then
  local status = redis.call('HGET', k_rec, 'status')
  if status == 'finished' then return { 'ignored' } end
  if not status then
    -- The record expired: what is left of the job in the group's keys goes.
    redis.call('ZREM', k_q, member)
    redis.call('ZREM', k_runs, member)
    redis.call('HDEL', k_jobs, member)
    return { 'ignored' }
  end
  j_finish(member, ARGV[4], ARGV[5], ARGV[6], ARGV[7])
  return { 'finished' }
elseif mode == 'cancel' then
  local status = redis.call('HGET', k_rec, 'status')
  if not status then return { 'absent' } end
  if status == 'finished' then return { 'finished' } end
  local m = redis.call('HGET', k_rec, 'member') or ''
  local running = 0
  if redis.call('ZSCORE', k_runs, m) then running = 1 end
  j_finish(m, ARGV[5], 'error', ARGV[4], ARGV[6])
  return { 'cancelled', running }
elseif mode == 'renew' then
  if redis.call('ZSCORE', k_runs, member) then
    redis.call('ZADD', k_runs, ARGV[4], member)
    return { 'renewed' }
  end
  return { 'lost' }
elseif mode == 'hand_back' then
  if not redis.call('ZSCORE', k_runs, member) then return { 'absent' } end
  redis.call('ZREM', k_runs, member)
  local meta = redis.call('HGET', k_jobs, member)
  if meta then
    local sep = string.find(meta, ':', 1, true)
    local score = string.sub(meta, 1, sep - 1)
    local attempts = tonumber(string.sub(meta, sep + 1))
    -- The run was stopped, not failed: it does not count against the attempt cap.
    if attempts > 0 then attempts = attempts - 1 end
    redis.call('HSET', k_jobs, member, score .. ':' .. attempts)
    redis.call('ZADD', k_q, score, member)
    redis.call('PUBLISH', ARGV[4], ARGV[5])
  end
  return { 'handed_back' }
end
return redis.error_reply('job_v1: unknown mode ' .. tostring(mode))
