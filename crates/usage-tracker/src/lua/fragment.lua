-- usage-tracker fragment (usage_tracker::lua::USAGE_FRAGMENT), contract version 1.
--
-- Defines only `local function`s prefixed `u_`: no top-level code, no KEYS/ARGV access. Composite scripts
-- compute `now` (epoch ms from Redis TIME) once and pass it in; every key is a parameter. All keys of one
-- call belong to one model group and so share one Cluster hash tag.
--
-- Keys per deployment (see store::Keyspace):
--   dep      <base>:d:<id>      HASH  w (fixed window start ms), rpm, tpm (fixed windows), ok, fail (current
--                                     fixed window only, both modes), lat (EWMA ms per output token), ttft
--                                     (EWMA ms), n (latency samples); rolling windows: rb (newest bucket
--                                     folded in), rr, rt (requests and tokens of the span), k<index> =
--                                     "<requests>,<tokens>" per bucket of the span.
--                                     Expires at the end of the second window after window w (set when the
--                                     window rolls), so at least 2 windows after the last reserve or settle.
--   inflight <base>:d:<id>:if   ZSET  reservation id -> lease expiry (epoch ms). A lease is alive while
--                                     expiry > now; expired leases are removed before in-flight is counted.
--   cd       <base>:d:<id>:cd   STRING cooldown reason, with PX expiry = cooldown end.
--
-- Limits are numbers; -1 means "no limit". A limit of 0 for rpm or max_parallel means the deployment never
-- takes requests, as does tpm < est or max_input_tokens < prompt: such a candidate is skipped and never
-- contributes a "capacity returns at" time.
--
-- Windows: every function taking `win` takes u_window(ms, rolling) (or u_window_spec("<ms>" | "<ms>r")):
-- fixed windows aligned to the clock, or a rolling window of 60 buckets (see u_window). The reservation
-- stamp (`window_start` below) is the fixed window's start, or the rolling bucket's.
--
-- Functions:
--
-- u_parse_candidates(keys, argv, key_off, argv_off, n) -> array of candidate tables.
--   Candidate i reads keys[key_off + 3(i-1) + 1..3] = dep, inflight, cd and
--   argv[argv_off + 6(i-1) + 1..6] = deployment_id, rpm, tpm, max_parallel, max_input_tokens, tier.
--   Candidate table fields: dep, inflight, cd, id, rpm, tpm, max_parallel, max_input, tier (numbers).
--
-- u_window_start(now, win) -> the stamp of a reservation made at now: its fixed window's or bucket's start.
--
-- u_try_reserve(now, win, cands, order_mode, est, prompt, res_id, lease_ms)
--   -> i, window_start   (i = 1-based index into cands of the reserved deployment)
--   -> false, next_ms    (absolute epoch ms when capacity may return: the earliest over candidates of the
--                         latest of their blockers - cooldown end, window roll for rpm/tpm, the in-flight
--                         lease expiry that brings them under max_parallel; -1 if no candidate can ever fit)
--   Walks candidates in order_mode order (0 = as given; 1 = lowest current-window tpm first; 2 = fewest in
--   flight first; modes 1 and 2 sort stably by (tier, metric, given index)) and reserves on the first that
--   is not cooling down, accepts `prompt` (max_input_tokens) and has rpm, tpm and max_parallel headroom.
--   Reserve = one HSET of rpm + 1 and tpm + est (from the counters just read; on a window roll also w, ok
--   and fail, and the hash's expiry) + ZADD inflight (now + lease_ms) res_id (always, so least-busy ordering
--   sees in-flight counts) + the in-flight key's expiry kept at least lease_ms away.
--   Every redis.call costs a few microseconds inside a script (more than the command itself), so the fast
--   path makes as few as it can: TIME and the queue head are the caller's, then PTTL, HMGET, HSET, ZADD,
--   PTTL here (plus ZREMRANGEBYSCORE and ZCARD with a max_parallel limit or order mode 2, PEXPIREAT on a
--   window roll, PEXPIRE when the in-flight key's expiry runs short).
--
-- u_charge(c, now, win, est, res_id, lease_ms[, rpm_used, tpm_used, current]) -> window start
--   Charges candidate c unconditionally: rpm + 1 and tpm + est in the current window (one HSET, or a new
--   window) and an in-flight lease res_id until now + lease_ms. The reserve of u_try_reserve, and how a
--   reservation the store lost is re-registered. The usage of the current window may be passed in (as
--   u_blocked_until read it) to spare the HMGET. Twin: UsageState::charge.
--
-- u_not_before(cands, now, win, est, prompt) -> epoch ms
--   The earliest moment some candidate could take a request of `est` tokens and `prompt` prompt tokens:
--   `now` when one has rpm/tpm headroom and no cooldown, else the earliest cooldown end or window roll; -1
--   if no candidate ever can. In-flight slots are not counted (they may free at any moment). A lower bound:
--   entries ahead in the queue may take that capacity first. Twin: UsageState::not_before.
--
-- u_release(k_dep, k_inflight, res_id, window_start, est, actual) -> 1 if the lease was still held, else 0
--   (fixed windows).
--   Ends the in-flight lease (ZREM) and, when the hash's `w` still equals window_start and actual >= 0,
--   corrects tpm by (actual - est), never below 0. actual = -1 means "not known: keep the estimate".
--
-- u_give_back(k_dep, k_inflight, res_id, window_start, est, now, win) -> 1 if given back, 0 if the lease was gone
--   For a reservation whose request never reached the upstream: ends its in-flight lease and, while still in
--   window_start, its request and its estimated tokens come back (never below 0). Idempotent: only the call
--   that ends the lease gives anything back, so racing give-backs of one reservation count once.
--
-- u_settle(k_dep, k_inflight, res_id, window_start, est, actual, outcome, now, win, lat, ttft, alpha)
--   -> requests_in_window, failures_in_window
--   u_release, then (rolling the window if needed) counts the outcome in the current window
--   (outcome 1 = success -> ok, 2 = failure -> fail, 0 = cancelled -> neither) and folds the latency
--   samples into the EWMAs: lat = ms per output token, ttft = ms to first token, each -1 when absent;
--   alpha = EWMA weight of the new sample; EWMAs are stored as "%.4f" strings. requests_in_window = ok +
--   fail after counting. Three calls: ZREM, HMGET, HSET (plus PEXPIREAT when the window rolls).
--
-- u_renew(k_inflight, res_id, now, lease_ms) -> 1 if the lease was alive and now expires at now + lease_ms,
--   0 if it had already ended or expired (an ended lease is never revived).
--
-- u_end_leases_of(k_inflight, holders) -> n ended
--   Ends the in-flight leases whose holder is a key of table `holders` (the holder is the part of the
--   reservation id after its first '|'; ids without one have none). For replicas found dead: their requests
--   may have reached the upstream, so the window's counters stay as they are. Reads every lease of the key:
--   callers run it only when a holder died. Twin: UsageState::end_leases_of.
--
-- u_stats(c, now, win) -> {rpm, tpm, in_flight, lat, ttft, cooldown_ms, ok, fail} for candidate-like
--   table c (fields dep, inflight, cd): current-window counters (0 after a roll), live leases, EWMAs as
--   strings (false when unknown), cooldown remaining ms (-2 none, -1 no expiry). Read only.
--
-- Rolling windows: a settle corrects the tokens of the bucket the reservation was stamped in while it is in
-- the span; tokens above the estimate settled after that are debt in the current bucket. A give-back takes
-- the request and its estimate out of its bucket while it is in the span.
--
-- The helpers these use (u_int, u_usage, u_used, u_rolled, u_rolling_free_at, u_bucket, u_in_flight, u_extend_ttl, u_start_window, u_blocked_until,
-- u_ewma) are not part of the contract.

local function u_parse_candidates(keys, argv, key_off, argv_off, n)
  local cands = {}
  for i = 1, n do
    local k = key_off + 3 * (i - 1)
    local a = argv_off + 6 * (i - 1)
    cands[i] = {
      dep = keys[k + 1],
      inflight = keys[k + 2],
      cd = keys[k + 3],
      id = argv[a + 1],
      rpm = tonumber(argv[a + 2]),
      tpm = tonumber(argv[a + 3]),
      max_parallel = tonumber(argv[a + 4]),
      max_input = tonumber(argv[a + 5]),
      tier = tonumber(argv[a + 6]),
    }
  end
  return cands
end

-- The usage window of a step: { ms = its length, s = bucket length in ms (0: fixed windows aligned to the
-- clock), b = buckets the rolling span reaches back }. Rolling: buckets of s = max(1, floor(ms / 60)) ms; at
-- a time t in bucket k the span counted is buckets k - b .. k with b = ceil(ms / s), which covers (t - ms, t]
-- and less than one bucket more. So no stretch of ms milliseconds ever holds more admissions (or reserved
-- tokens) than the limit, and capacity comes back less than one bucket after the oldest admission in the
-- window leaves it.
local function u_window(window_ms, rolling)
  if not rolling then return { ms = window_ms, s = 0, b = 0 } end
  local s = math.max(1, math.floor(window_ms / 60))
  return { ms = window_ms, s = s, b = math.ceil(window_ms / s) }
end

-- The window of a step's window argument: "<ms>" (fixed windows) or "<ms>r" (rolling).
local function u_window_spec(spec)
  local ms, mode = string.match(spec, '^(%d+)(r?)$')
  return u_window(tonumber(ms), mode == 'r')
end

-- Start of the fixed window containing now (the window of ok/fail counts in both modes).
local function u_fixed_start(now, win)
  return now - (now % win.ms)
end

-- The stamp of a reservation made at now: the start of its fixed window, or of its rolling bucket.
local function u_window_start(now, win)
  if win.s > 0 then return now - (now % win.s) end
  return now - (now % win.ms)
end

-- Integers as decimal strings: Redis would otherwise format large Lua numbers in exponent notation.
local function u_int(x)
  return string.format('%d', x)
end

-- rpm and tpm used in fixed window ws (0 when the hash belongs to an older window or is absent), and
-- whether the hash is window ws's.
local function u_usage(k_dep, ws)
  local f = redis.call('HMGET', k_dep, 'w', 'rpm', 'tpm')
  if tonumber(f[1]) ~= ws then
    return 0, 0, false
  end
  return tonumber(f[2]) or 0, tonumber(f[3]) or 0, true
end

-- A rolling bucket's value "<requests>,<tokens>" as two numbers (0, 0 when absent).
local function u_bucket(v)
  if not v then return 0, 0 end
  local r, t = string.match(v, '^(%d+),(%d+)$')
  return tonumber(r) or 0, tonumber(t) or 0
end

local function u_bucket_value(r, t)
  return u_int(r) .. ',' .. u_int(t)
end

-- The rolling state of k_dep at now: { k = current bucket, rr, rt = requests and tokens in the span, x =
-- the values of the `extra` fields, in order }. Buckets that left the span are folded out of rr and rt and
-- deleted, and rb moves to k (an HMGET and an HDEL of the buckets that left, one HSET), unless read_only.
local function u_rolled(k_dep, now, win, extra, read_only)
  local k = math.floor(now / win.s)
  local v = redis.call('HMGET', k_dep, 'rb', 'rr', 'rt', unpack(extra))
  local x = {}
  for i = 1, #extra do x[i] = v[i + 3] end
  local st = { k = k, rr = tonumber(v[2]) or 0, rt = tonumber(v[3]) or 0, x = x }
  local rb = tonumber(v[1])
  if rb == nil or rb >= k then return st end
  local lo_old, lo_new = rb - win.b, k - win.b
  if lo_new > lo_old then
    local names = {}
    for i = lo_old, math.min(rb, lo_new - 1) do names[#names + 1] = 'k' .. u_int(i) end
    if lo_new > rb then
      st.rr, st.rt = 0, 0
    else
      local gone = redis.call('HMGET', k_dep, unpack(names))
      for i = 1, #names do
        local r, t = u_bucket(gone[i])
        st.rr, st.rt = st.rr - r, st.rt - t
      end
      if st.rr < 0 then st.rr = 0 end
      if st.rt < 0 then st.rt = 0 end
    end
    if not read_only then redis.call('HDEL', k_dep, unpack(names)) end
  end
  if not read_only then
    redis.call('HSET', k_dep, 'rb', u_int(k), 'rr', u_int(st.rr), 'rt', u_int(st.rt))
  end
  return st
end

-- When the span (state st) will have lost need_r requests and need_t tokens from its oldest buckets, in
-- epoch ms: bucket i leaves the span when bucket i + b + 1 begins.
local function u_rolling_free_at(k_dep, st, win, need_r, need_t)
  local lo = st.k - win.b
  local names = {}
  for i = lo, st.k do names[#names + 1] = 'k' .. u_int(i) end
  local v = redis.call('HMGET', k_dep, unpack(names))
  local r_gone, t_gone = 0, 0
  for j = 1, #names do
    local r, t = u_bucket(v[j])
    r_gone, t_gone = r_gone + r, t_gone + t
    if r_gone >= need_r and t_gone >= need_t then
      return (lo + j + win.b) * win.s
    end
  end
  return (st.k + win.b + 1) * win.s
end

-- rpm and tpm used by candidate c at now, and what its charge reuses (fixed: whether the hash is window
-- ws's; rolling: u_rolled's state, with the current bucket and `w` read along).
local function u_used(c, now, ws, win)
  if win.s == 0 then
    return u_usage(c.dep, ws)
  end
  local st = u_rolled(c.dep, now, win, { 'k' .. u_int(math.floor(now / win.s)), 'w' }, false)
  return st.rr, st.rt, st
end

-- Live leases after dropping the expired ones.
local function u_in_flight(k_inflight, now)
  redis.call('ZREMRANGEBYSCORE', k_inflight, '-inf', u_int(now))
  return redis.call('ZCARD', k_inflight)
end

-- Keeps key's expiry at least ms away. Never shortens (other leases in the key may outlive this one); when it
-- extends, it extends to twice ms, so back-to-back calls mostly cost the PTTL alone. At least 1 ms (PEXPIRE 0
-- deletes).
local function u_extend_ttl(key, ms)
  if ms < 1 then ms = 1 end
  if redis.call('PTTL', key) < ms then
    redis.call('PEXPIRE', key, u_int(2 * ms))
  end
end

-- Starts fixed window ws in hash k_dep: w = ws, rpm and tpm as given (left alone when rpm is nil: rolling
-- windows keep their own fields), ok and fail as given, plus the name/value list `more` (optional; latency
-- EWMAs not named survive), expiring at the end of the second window after ws.
local function u_start_window(k_dep, ws, window_ms, rpm, tpm, ok, fail, more)
  local args = { 'w', u_int(ws), 'ok', u_int(ok), 'fail', u_int(fail) }
  if rpm ~= nil then
    args[#args + 1] = 'rpm'
    args[#args + 1] = u_int(rpm)
    args[#args + 1] = 'tpm'
    args[#args + 1] = u_int(tpm)
  end
  for _, v in ipairs(more or {}) do args[#args + 1] = v end
  redis.call('HSET', k_dep, unpack(args))
  redis.call('PEXPIREAT', k_dep, u_int(ws + 3 * window_ms))
end

-- 0 when c can take the request now, -1 when it never can, else the epoch ms when its last blocker ends.
local function u_blocked_until(c, now, ws, win, est, prompt)
  if c.max_input >= 0 and prompt > c.max_input then return -1 end
  if c.tpm >= 0 and est > c.tpm then return -1 end
  if c.rpm == 0 or c.max_parallel == 0 then return -1 end
  local until_ms = 0
  local cd = redis.call('PTTL', c.cd)
  if cd == -1 then return -1 end
  if cd > 0 then until_ms = now + cd end
  local rpm_used, tpm_used, current = u_used(c, now, ws, win)
  local over_r = c.rpm > 0 and rpm_used + 1 > c.rpm
  local over_t = c.tpm >= 0 and tpm_used + est > c.tpm
  if over_r or over_t then
    if win.s == 0 then
      until_ms = math.max(until_ms, ws + win.ms)
    else
      local need_r, need_t = 0, 0
      if over_r then need_r = rpm_used + 1 - c.rpm end
      if over_t then need_t = tpm_used + est - c.tpm end
      until_ms = math.max(until_ms, u_rolling_free_at(c.dep, current, win, need_r, need_t))
    end
  end
  if c.max_parallel > 0 then
    local n = u_in_flight(c.inflight, now)
    if n >= c.max_parallel then
      local r = redis.call('ZRANGE', c.inflight, n - c.max_parallel, n - c.max_parallel, 'WITHSCORES')
      until_ms = math.max(until_ms, tonumber(r[2]))
    end
  end
  return until_ms, rpm_used, tpm_used, current
end

local function u_charge(c, now, win, est, res_id, lease_ms, rpm_used, tpm_used, current)
  local ws = u_window_start(now, win)
  if rpm_used == nil then rpm_used, tpm_used, current = u_used(c, now, ws, win) end
  if win.s == 0 then
    if current then
      redis.call('HSET', c.dep, 'rpm', u_int(rpm_used + 1), 'tpm', u_int(tpm_used + est))
    else
      u_start_window(c.dep, ws, win.ms, 1, est, 0, 0)
    end
  else
    local st = current
    local r, t = u_bucket(st.x[1])
    local counts = { 'rb', u_int(st.k), 'rr', u_int(st.rr + 1), 'rt', u_int(st.rt + est),
      'k' .. u_int(st.k), u_bucket_value(r + 1, t + est) }
    local fw = u_fixed_start(now, win)
    if tonumber(st.x[2]) == fw then
      redis.call('HSET', c.dep, unpack(counts))
    else
      u_start_window(c.dep, fw, win.ms, nil, nil, 0, 0, counts)
    end
  end
  redis.call('ZADD', c.inflight, u_int(now + lease_ms), res_id)
  u_extend_ttl(c.inflight, lease_ms)
  return ws
end

local function u_try_reserve(now, win, cands, order_mode, est, prompt, res_id, lease_ms)
  local ws = u_window_start(now, win)
  local order = {}
  for i = 1, #cands do
    local m = 0
    if order_mode == 1 then
      local _, tpm_used = u_used(cands[i], now, ws, win)
      m = tpm_used
    elseif order_mode == 2 then
      m = u_in_flight(cands[i].inflight, now)
    end
    order[i] = { i = i, tier = cands[i].tier, m = m }
  end
  if order_mode == 1 or order_mode == 2 then
    table.sort(order, function(a, b)
      if a.tier ~= b.tier then return a.tier < b.tier end
      if a.m ~= b.m then return a.m < b.m end
      return a.i < b.i
    end)
  end
  local next_ms = -1
  for _, o in ipairs(order) do
    local c = cands[o.i]
    local blocked, rpm_used, tpm_used, current = u_blocked_until(c, now, ws, win, est, prompt)
    if blocked == 0 then
      u_charge(c, now, win, est, res_id, lease_ms, rpm_used, tpm_used, current)
      return o.i, ws
    elseif blocked > 0 and (next_ms < 0 or blocked < next_ms) then
      next_ms = blocked
    end
  end
  return false, next_ms
end

local function u_not_before(cands, now, win, est, prompt)
  local ws = u_window_start(now, win)
  local best = -1
  for _, c in ipairs(cands) do
    local fits = not ((c.max_input >= 0 and prompt > c.max_input) or (c.tpm >= 0 and est > c.tpm)
      or c.rpm == 0 or c.max_parallel == 0)
    local at = now
    if fits then
      local cd = redis.call('PTTL', c.cd)
      if cd == -1 then fits = false elseif cd > 0 then at = now + cd end
    end
    if fits then
      local rpm_used, tpm_used, st = u_used(c, now, ws, win)
      local over_r = c.rpm > 0 and rpm_used + 1 > c.rpm
      local over_t = c.tpm >= 0 and tpm_used + est > c.tpm
      if over_r or over_t then
        if win.s == 0 then
          at = math.max(at, ws + win.ms)
        else
          local need_r, need_t = 0, 0
          if over_r then need_r = rpm_used + 1 - c.rpm end
          if over_t then need_t = tpm_used + est - c.tpm end
          at = math.max(at, u_rolling_free_at(c.dep, st, win, need_r, need_t))
        end
      end
      if best == -1 or at < best then best = at end
    end
  end
  return best
end

local function u_release(k_dep, k_inflight, res_id, window_start, est, actual)
  local held = redis.call('ZREM', k_inflight, res_id)
  if actual >= 0 and actual ~= est then
    local f = redis.call('HMGET', k_dep, 'w', 'tpm')
    if tonumber(f[1]) == window_start then
      local tpm = (tonumber(f[2]) or 0) + actual - est
      if tpm < 0 then tpm = 0 end
      redis.call('HSET', k_dep, 'tpm', u_int(tpm))
    end
  end
  return held
end

local function u_give_back(k_dep, k_inflight, res_id, window_start, est, now, win)
  if redis.call('ZREM', k_inflight, res_id) == 0 then
    return 0
  end
  if win == nil or win.s == 0 then
    local f = redis.call('HMGET', k_dep, 'w', 'rpm', 'tpm')
    if tonumber(f[1]) == window_start then
      local rpm = math.max((tonumber(f[2]) or 0) - 1, 0)
      local tpm = math.max((tonumber(f[3]) or 0) - est, 0)
      redis.call('HSET', k_dep, 'rpm', u_int(rpm), 'tpm', u_int(tpm))
    end
    return 1
  end
  local kb = math.floor(window_start / win.s)
  local st = u_rolled(k_dep, now, win, { 'k' .. u_int(kb) }, false)
  if kb >= st.k - win.b and kb <= st.k then
    local r, t = u_bucket(st.x[1])
    local dr, dt = math.min(1, r), math.min(est, t)
    redis.call('HSET', k_dep, 'rr', u_int(math.max(st.rr - dr, 0)), 'rt', u_int(math.max(st.rt - dt, 0)),
      'k' .. u_int(kb), u_bucket_value(r - dr, t - dt))
  end
  return 1
end

-- The EWMA `cur` (a stored string, false when absent) moved towards `sample`, as stored.
local function u_ewma(cur, sample, alpha)
  local v = sample
  cur = tonumber(cur)
  if cur then v = cur + alpha * (sample - cur) end
  return string.format('%.4f', v)
end

local function u_settle(k_dep, k_inflight, res_id, window_start, est, actual, outcome, now, win, lat, ttft, alpha)
  redis.call('ZREM', k_inflight, res_id)
  local ws = u_fixed_start(now, win)
  local f, st, kb
  if win.s == 0 then
    f = redis.call('HMGET', k_dep, 'w', 'tpm', 'ok', 'fail', 'lat', 'ttft', 'n')
  else
    kb = math.floor(window_start / win.s)
    local k = math.floor(now / win.s)
    st = u_rolled(k_dep, now, win, { 'w', 'tpm', 'ok', 'fail', 'lat', 'ttft', 'n', 'k' .. u_int(kb),
      'k' .. u_int(k) }, false)
    f = st.x
  end
  -- Counters of an older window (a tpm correction for it included) are reset by the roll.
  local rolled = tonumber(f[1]) ~= ws
  local ok, fail = 0, 0
  if not rolled then ok, fail = tonumber(f[3]) or 0, tonumber(f[4]) or 0 end
  local fields = {}
  local function put(name, value)
    fields[#fields + 1] = name
    fields[#fields + 1] = value
  end
  if win.s == 0 then
    if not rolled and actual >= 0 and actual ~= est and ws == window_start then
      local tpm = (tonumber(f[2]) or 0) + actual - est
      if tpm < 0 then tpm = 0 end
      put('tpm', u_int(tpm))
    end
  elseif actual >= 0 and actual ~= est then
    local delta = actual - est
    if kb >= st.k - win.b and kb <= st.k then
      -- Still in the span: the bucket it was admitted in holds the actual count.
      local r, t = u_bucket(f[8])
      local nt = math.max(t + delta, 0)
      put('k' .. u_int(kb), u_bucket_value(r, nt))
      put('rt', u_int(math.max(st.rt + nt - t, 0)))
    elseif delta > 0 then
      -- Settled after its bucket left the span: the tokens above the estimate are debt in the current one.
      local r, t = u_bucket(f[9])
      put('k' .. u_int(st.k), u_bucket_value(r, t + delta))
      put('rt', u_int(st.rt + delta))
    end
  end
  if outcome == 1 then
    ok = ok + 1
    if not rolled then put('ok', u_int(ok)) end
  elseif outcome == 2 then
    fail = fail + 1
    if not rolled then put('fail', u_int(fail)) end
  end
  if lat >= 0 then put('lat', u_ewma(f[5], lat, alpha)) end
  if ttft >= 0 then put('ttft', u_ewma(f[6], ttft, alpha)) end
  if lat >= 0 or ttft >= 0 then put('n', u_int((tonumber(f[7]) or 0) + 1)) end
  if rolled then
    if win.s == 0 then
      u_start_window(k_dep, ws, win.ms, 0, 0, ok, fail, fields)
    else
      u_start_window(k_dep, ws, win.ms, nil, nil, ok, fail, fields)
    end
  elseif #fields > 0 then
    redis.call('HSET', k_dep, unpack(fields))
  end
  return ok + fail, fail
end

local function u_renew(k_inflight, res_id, now, lease_ms)
  local expiry = tonumber(redis.call('ZSCORE', k_inflight, res_id))
  if not expiry or expiry <= now then return 0 end
  redis.call('ZADD', k_inflight, u_int(now + lease_ms), res_id)
  u_extend_ttl(k_inflight, lease_ms)
  return 1
end

local function u_end_leases_of(k_inflight, holders)
  local ended = {}
  for _, m in ipairs(redis.call('ZRANGE', k_inflight, 0, -1)) do
    local sep = string.find(m, '|', 1, true)
    if sep and holders[string.sub(m, sep + 1)] then ended[#ended + 1] = m end
  end
  -- unpack is bounded by Lua's C stack: end them in batches.
  for i = 1, #ended, 500 do
    redis.call('ZREM', k_inflight, unpack(ended, i, math.min(i + 499, #ended)))
  end
  return #ended
end

local function u_stats(c, now, win)
  local f = redis.call('HMGET', c.dep, 'w', 'rpm', 'tpm', 'ok', 'fail', 'lat', 'ttft')
  local rpm, tpm, ok, fail = 0, 0, 0, 0
  if tonumber(f[1]) == u_fixed_start(now, win) then
    rpm, tpm = tonumber(f[2]) or 0, tonumber(f[3]) or 0
    ok, fail = tonumber(f[4]) or 0, tonumber(f[5]) or 0
  end
  if win.s > 0 then
    local st = u_rolled(c.dep, now, win, {}, true)
    rpm, tpm = st.rr, st.rt
  end
  local in_flight = redis.call('ZCOUNT', c.inflight, '(' .. u_int(now), '+inf')
  local cd = redis.call('PTTL', c.cd)
  return { rpm, tpm, in_flight, f[6] or false, f[7] or false, cd, ok, fail }
end
