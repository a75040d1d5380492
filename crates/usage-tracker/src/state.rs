//! The in-memory usage state: a synchronous mirror of the Lua fragment, driven by explicit time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::types::{
    Candidate, CandidateOrder, DeploymentRef, DeploymentStats, LatencySample, Limits, Outcome,
    Reservation, ReserveOutcome, ReserveRequest, SettleReport,
};

/// Usage counters, leases and cooldowns of every deployment, held in memory.
///
/// Each method takes the current time (`now_ms`, epoch milliseconds) and does what the function of the same
/// name in [`crate::lua::USAGE_FRAGMENT`] does in Redis, with the same results: counters of the fixed window
/// containing `now_ms`, leases alive while their expiry is after `now_ms`, usage hashes forgotten at the end of
/// the second window after the window they hold. The router composes it with queue-core's state under one lock (see
/// [`crate::MemoryUsage::shared_state`]); methods never block or allocate beyond the touched deployment.
#[derive(Debug)]
pub struct UsageState {
    window_ms: u64,
    /// Rolling windows: bucket length (ms) and buckets the span reaches back (`u_window`); `None`: fixed.
    rolling: Option<Rolling>,
    latency_ewma_alpha: f64,
    groups: HashMap<Arc<str>, HashMap<Arc<str>, DeploymentUsage>>,
}

#[derive(Debug, Default)]
struct DeploymentUsage {
    /// The `<base>:d:<id>` hash; `None` when absent.
    hash: Option<UsageHash>,
    /// The `:if` zset: reservation id -> lease expiry.
    inflight: HashMap<String, u64>,
    /// The `:cd` key: cooldown end and reason.
    cooldown: Option<(u64, String)>,
}

#[derive(Debug, Clone, Default)]
struct UsageHash {
    w: u64,
    rpm: u64,
    tpm: u64,
    ok: u64,
    fail: u64,
    lat: Option<f64>,
    ttft: Option<f64>,
    /// Rolling windows: `rb` (newest bucket folded in), `rr` and `rt` (requests and tokens of the span),
    /// `k<index>` (each bucket's requests and tokens).
    rb: Option<i64>,
    rr: u64,
    rt: u64,
    buckets: std::collections::BTreeMap<i64, (u64, u64)>,
    /// Last moment the hash exists (Redis drops a key once now > its expiry).
    expires_at: u64,
}

/// `u_window` of a rolling step: buckets of `s` ms, the span `b` buckets back from the current one.
#[derive(Debug, Clone, Copy)]
struct Rolling {
    s: u64,
    b: i64,
}

impl Rolling {
    fn new(window_ms: u64) -> Rolling {
        let s = (window_ms / 60).max(1);
        Rolling {
            s,
            b: window_ms.div_ceil(s) as i64,
        }
    }

    fn bucket(&self, now: u64) -> i64 {
        (now / self.s) as i64
    }

    /// When bucket `i` leaves the span: the start of bucket `i + b + 1`.
    fn leaves_at(&self, i: i64) -> u64 {
        u64::try_from(i + self.b + 1).unwrap_or(0) * self.s
    }
}

/// The rolling state `u_rolled` reads: the current bucket and the span's requests and tokens.
#[derive(Debug, Clone, Copy)]
struct RolledState {
    k: i64,
    rr: u64,
    rt: u64,
}

/// Whether a candidate can take a request now.
enum Blocked {
    Free,
    Never,
    Until(u64),
}

impl DeploymentUsage {
    fn hash(&self, now: u64) -> Option<&UsageHash> {
        self.hash.as_ref().filter(|h| now <= h.expires_at)
    }

    fn hash_mut(&mut self, now: u64) -> Option<&mut UsageHash> {
        if self.hash.as_ref().is_some_and(|h| now > h.expires_at) {
            self.hash = None;
        }
        self.hash.as_mut()
    }

    /// `u_usage`: rpm and tpm used in window `ws`.
    fn usage(&self, now: u64, ws: u64) -> (u64, u64) {
        match self.hash(now) {
            Some(h) if h.w == ws => (h.rpm, h.tpm),
            _ => (0, 0),
        }
    }

    /// `u_in_flight`: drops expired leases, counts the rest.
    fn in_flight(&mut self, now: u64) -> u64 {
        self.inflight.retain(|_, expiry| *expiry > now);
        self.inflight.len() as u64
    }

    /// The hash for window `ws`, created or reset as needed (latency EWMAs survive a roll), as the fragment's
    /// `u_start_window` does when a reserve or settle finds an older window: a new window's hash expires at
    /// the end of the second window after it.
    fn roll(&mut self, now: u64, ws: u64, window_ms: u64) -> &mut UsageHash {
        if self.hash.as_ref().is_some_and(|h| now > h.expires_at) {
            self.hash = None;
        }
        let h = self.hash.get_or_insert_with(|| UsageHash {
            w: ws,
            expires_at: ws + 3 * window_ms,
            ..UsageHash::default()
        });
        if h.w != ws {
            h.w = ws;
            h.rpm = 0;
            h.tpm = 0;
            h.ok = 0;
            h.fail = 0;
            h.expires_at = ws + 3 * window_ms;
        }
        h
    }

    /// `u_start_window` of a rolling step (rpm and tpm are fixed windows' fields, left alone): the hash for
    /// fixed window `fw` of the ok/fail counts, created or reset as needed.
    fn roll_counts(&mut self, now: u64, fw: u64, window_ms: u64) -> &mut UsageHash {
        if self.hash.as_ref().is_some_and(|h| now > h.expires_at) {
            self.hash = None;
        }
        let h = self.hash.get_or_insert_with(|| UsageHash {
            w: fw,
            expires_at: fw + 3 * window_ms,
            ..UsageHash::default()
        });
        if h.w != fw {
            h.w = fw;
            h.ok = 0;
            h.fail = 0;
        }
        h.expires_at = fw + 3 * window_ms;
        h
    }

    /// `u_rolled`: the span's requests and tokens at `now`; unless `read_only`, buckets that left the span
    /// are folded out and deleted and `rb` moves to the current bucket.
    fn rolled(&mut self, now: u64, r: Rolling, read_only: bool) -> RolledState {
        let k = r.bucket(now);
        let Some(h) = self.hash_mut(now) else {
            return RolledState { k, rr: 0, rt: 0 };
        };
        let (st, gone) = span(h, k, r);
        if !read_only && h.rb.is_some_and(|rb| rb < k) {
            if let Some((lo, last)) = gone {
                let doomed: Vec<i64> = h.buckets.range(lo..=last).map(|(i, _)| *i).collect();
                for i in doomed {
                    h.buckets.remove(&i);
                }
            }
            h.rb = Some(k);
            h.rr = st.rr;
            h.rt = st.rt;
        }
        st
    }

    /// `u_rolled(..., read_only = true)`: the span's requests and tokens without folding anything.
    fn rolled_read_only(&self, now: u64, r: Rolling) -> RolledState {
        let k = r.bucket(now);
        match self.hash(now) {
            Some(h) => span(h, k, r).0,
            None => RolledState { k, rr: 0, rt: 0 },
        }
    }

    /// `u_rolling_free_at`: when the span will have lost `need_r` requests and `need_t` tokens from its
    /// oldest buckets.
    fn rolling_free_at(
        &self,
        now: u64,
        st: RolledState,
        r: Rolling,
        need_r: u64,
        need_t: u64,
    ) -> u64 {
        let (mut gone_r, mut gone_t) = (0u64, 0u64);
        if let Some(h) = self.hash(now) {
            for (i, (br, bt)) in h.buckets.range(st.k - r.b..=st.k) {
                gone_r += br;
                gone_t += bt;
                if gone_r >= need_r && gone_t >= need_t {
                    return r.leaves_at(*i);
                }
            }
        }
        if need_r == 0 && need_t == 0 {
            return r.leaves_at(st.k - r.b);
        }
        r.leaves_at(st.k)
    }

    fn cooldown_remaining(&self, now: u64) -> Option<u64> {
        self.cooldown
            .as_ref()
            .and_then(|(until, _)| (*until > now).then(|| until - now))
    }

    /// `u_blocked_until`.
    /// `u_used`: rpm and tpm used at `now` (fixed window `ws`, or the rolling span, pruned).
    fn used(
        &mut self,
        now: u64,
        ws: u64,
        rolling: Option<Rolling>,
    ) -> (u64, u64, Option<RolledState>) {
        match rolling {
            None => {
                let (r, t) = self.usage(now, ws);
                (r, t, None)
            }
            Some(r) => {
                let st = self.rolled(now, r, false);
                (st.rr, st.rt, Some(st))
            }
        }
    }

    /// When rpm/tpm headroom for `est` more tokens returns, if they are over (`u_blocked_until`'s and
    /// `u_not_before`'s window part): the fixed window's end or the moment the rolling span lost enough.
    #[allow(clippy::too_many_arguments)]
    fn over_until(
        &self,
        limits: &Limits,
        now: u64,
        ws: u64,
        window_ms: u64,
        rolling: Option<Rolling>,
        used: (u64, u64, Option<RolledState>),
        est: u64,
    ) -> Option<u64> {
        let (rpm_used, tpm_used, st) = used;
        let over_r = limits.rpm.is_some_and(|rpm| rpm_used + 1 > rpm);
        let over_t = limits
            .tpm
            .is_some_and(|tpm| tpm_used.saturating_add(est) > tpm);
        if !(over_r || over_t) {
            return None;
        }
        match (rolling, st) {
            (Some(r), Some(st)) => {
                let need_r = if over_r {
                    (rpm_used + 1).saturating_sub(limits.rpm.unwrap_or(0))
                } else {
                    0
                };
                let need_t = if over_t {
                    tpm_used
                        .saturating_add(est)
                        .saturating_sub(limits.tpm.unwrap_or(0))
                } else {
                    0
                };
                Some(self.rolling_free_at(now, st, r, need_r, need_t))
            }
            _ => Some(ws + window_ms),
        }
    }

    /// `u_blocked_until`.
    #[allow(clippy::too_many_arguments)]
    fn blocked(
        &mut self,
        limits: &Limits,
        now: u64,
        ws: u64,
        window_ms: u64,
        rolling: Option<Rolling>,
        est: u64,
        prompt: u64,
    ) -> (Blocked, Option<RolledState>) {
        if limits.max_input_tokens.is_some_and(|max| prompt > max)
            || limits.tpm.is_some_and(|tpm| est > tpm)
            || limits.rpm == Some(0)
            || limits.max_parallel == Some(0)
        {
            return (Blocked::Never, None);
        }
        let mut until = self.cooldown_remaining(now).map_or(0, |left| now + left);
        let used = self.used(now, ws, rolling);
        let st = used.2;
        if let Some(t) = self.over_until(limits, now, ws, window_ms, rolling, used, est) {
            until = until.max(t);
        }
        if let Some(max) = limits.max_parallel {
            let max = u64::from(max);
            let n = self.in_flight(now);
            if n >= max {
                let mut expiries: Vec<u64> = self.inflight.values().copied().collect();
                expiries.sort_unstable();
                // The expiry that brings the count below max.
                until = until.max(expiries[(n - max) as usize]);
            }
        }
        if until == 0 {
            (Blocked::Free, st)
        } else {
            (Blocked::Until(until), st)
        }
    }
}

impl UsageState {
    /// Empty state counting in fixed windows of `window` (at least 1 ms), folding latency samples into the
    /// EWMAs with weight `latency_ewma_alpha`.
    pub fn new(window: Duration, latency_ewma_alpha: f64) -> UsageState {
        UsageState {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1),
            rolling: None,
            latency_ewma_alpha,
            groups: HashMap::new(),
        }
    }

    /// The same state counting rpm and tpm over a rolling window (`u_window(ms, true)`): buckets of
    /// `max(1, window / 60)` ms, so no stretch of one window holds more than a limit. The ok/fail counts of
    /// the cooldown policy stay per fixed window.
    pub fn rolling(mut self, rolling: bool) -> UsageState {
        self.rolling = rolling.then(|| Rolling::new(self.window_ms));
        self
    }

    /// Whether rpm and tpm count over a rolling window.
    pub fn is_rolling(&self) -> bool {
        self.rolling.is_some()
    }

    /// The window length in milliseconds.
    pub fn window_ms(&self) -> u64 {
        self.window_ms
    }

    /// The stamp of a reservation made at `now_ms` (`u_window_start`): the start of the fixed window
    /// containing it, or of its rolling bucket.
    pub fn window_start(&self, now_ms: u64) -> u64 {
        match self.rolling {
            Some(r) => now_ms - now_ms % r.s,
            None => now_ms - now_ms % self.window_ms,
        }
    }

    /// Start of the fixed window containing `now_ms` (the window of the ok/fail counts in both modes).
    fn fixed_start(&self, now_ms: u64) -> u64 {
        now_ms - now_ms % self.window_ms
    }

    fn slot(&self, deployment: &DeploymentRef) -> Option<&DeploymentUsage> {
        self.groups.get(&deployment.group)?.get(&deployment.id)
    }

    fn slot_mut(&mut self, deployment: &DeploymentRef) -> &mut DeploymentUsage {
        self.groups
            .entry(Arc::clone(&deployment.group))
            .or_default()
            .entry(Arc::clone(&deployment.id))
            .or_default()
    }

    /// `u_try_reserve`: reserves on the first candidate (in `request.order`) with headroom.
    ///
    /// `Unavailable { retry_in }` is the `next_ms` of the fragment minus `now_ms`. Candidates are not
    /// validated here (see [`crate::UsageOps::reserve`]).
    pub fn try_reserve(
        &mut self,
        now_ms: u64,
        candidates: &[Candidate],
        request: &ReserveRequest,
    ) -> ReserveOutcome {
        let ws = self.window_start(now_ms);
        let window_ms = self.window_ms;
        let rolling = self.rolling;
        let mut order: Vec<(u32, u64, usize)> = Vec::with_capacity(candidates.len());
        for (i, c) in candidates.iter().enumerate() {
            let metric = match request.order {
                CandidateOrder::AsGiven => 0,
                CandidateOrder::LowestTpm if rolling.is_some() => {
                    self.slot_mut(&c.deployment).used(now_ms, ws, rolling).1
                }
                CandidateOrder::LowestTpm => self
                    .slot(&c.deployment)
                    .map_or(0, |s| s.usage(now_ms, ws).1),
                CandidateOrder::FewestInFlight => self.slot_mut(&c.deployment).in_flight(now_ms),
            };
            order.push((c.limits.tier, metric, i));
        }
        if request.order != CandidateOrder::AsGiven {
            order.sort_unstable();
        }
        let mut next_ms: Option<u64> = None;
        for (_, _, i) in order {
            let c = &candidates[i];
            let slot = self.slot_mut(&c.deployment);
            let (blocked, _) = slot.blocked(
                &c.limits,
                now_ms,
                ws,
                window_ms,
                rolling,
                request.est_tokens,
                request.prompt_tokens,
            );
            match blocked {
                Blocked::Free => {
                    let mut reservation = self.charge(
                        now_ms,
                        &c.deployment,
                        request.est_tokens,
                        &request.reservation_id,
                        request.lease,
                    );
                    reservation.candidate_index = i;
                    return ReserveOutcome::Reserved(reservation);
                }
                Blocked::Until(t) => next_ms = Some(next_ms.map_or(t, |n| n.min(t))),
                Blocked::Never => {}
            }
        }
        ReserveOutcome::Unavailable {
            retry_in: next_ms.map(|t| Duration::from_millis(t.saturating_sub(now_ms))),
        }
    }

    /// Forgets every counter, lease and cooldown, as a store that lost its state (tests of recovery).
    pub fn clear(&mut self) {
        self.groups.clear();
    }

    /// `u_charge`: charges the deployment unconditionally (rpm + 1 and tpm + `est_tokens` in the current
    /// window, an in-flight lease `reservation_id` until `now_ms + lease`): the reserve of
    /// [`Self::try_reserve`], and how a reservation the store lost is re-registered.
    pub fn charge(
        &mut self,
        now_ms: u64,
        deployment: &DeploymentRef,
        est_tokens: u64,
        reservation_id: &str,
        lease: Duration,
    ) -> Reservation {
        let ws = self.window_start(now_ms);
        let window_ms = self.window_ms;
        let fw = self.fixed_start(now_ms);
        let rolling = self.rolling;
        let slot = self.slot_mut(deployment);
        match rolling {
            None => {
                let h = slot.roll(now_ms, ws, window_ms);
                h.rpm += 1;
                h.tpm = h.tpm.saturating_add(est_tokens);
            }
            Some(r) => {
                let st = slot.rolled(now_ms, r, false);
                let h = slot.roll_counts(now_ms, fw, window_ms);
                let bucket = h.buckets.entry(st.k).or_insert((0, 0));
                bucket.0 += 1;
                bucket.1 = bucket.1.saturating_add(est_tokens);
                h.rb = Some(st.k);
                h.rr = st.rr + 1;
                h.rt = st.rt.saturating_add(est_tokens);
            }
        }
        let lease_ms = crate::types::duration_ms(lease);
        slot.inflight
            .insert(reservation_id.to_owned(), now_ms + lease_ms);
        Reservation {
            id: reservation_id.to_owned(),
            deployment: deployment.clone(),
            window_start_ms: ws,
            est_tokens,
            candidate_index: 0,
        }
    }

    /// `u_release`: ends the lease and, if the deployment is still in window `window_start_ms`, corrects
    /// its TPM by `actual_tokens - est_tokens` (never below 0; `None` keeps the estimate). Returns whether
    /// the lease was still held.
    pub fn release(
        &mut self,
        now_ms: u64,
        deployment: &DeploymentRef,
        reservation_id: &str,
        window_start_ms: u64,
        est_tokens: u64,
        actual_tokens: Option<u64>,
    ) -> bool {
        let slot = self.slot_mut(deployment);
        let held = slot.inflight.remove(reservation_id).is_some();
        if let Some(actual) = actual_tokens.filter(|a| *a != est_tokens) {
            if let Some(h) = slot.hash_mut(now_ms).filter(|h| h.w == window_start_ms) {
                let corrected = i128::from(h.tpm) + i128::from(actual) - i128::from(est_tokens);
                h.tpm = u64::try_from(corrected.max(0)).unwrap_or(u64::MAX);
            }
        }
        held
    }

    /// `u_give_back`: for a reservation whose request never reached the upstream, the lease ends and, while
    /// still in its window, its request and its estimated tokens come back. Only the call that ends the
    /// lease gives anything back (racing give-backs count once); returns whether it did.
    pub fn give_back(&mut self, now_ms: u64, reservation: &Reservation) -> bool {
        let rolling = self.rolling;
        let slot = self.slot_mut(&reservation.deployment);
        if slot.inflight.remove(&reservation.id).is_none() {
            return false;
        }
        match rolling {
            None => {
                if let Some(h) = slot
                    .hash_mut(now_ms)
                    .filter(|h| h.w == reservation.window_start_ms)
                {
                    h.rpm = h.rpm.saturating_sub(1);
                    h.tpm = h.tpm.saturating_sub(reservation.est_tokens);
                }
            }
            Some(r) => {
                let kb = (reservation.window_start_ms / r.s) as i64;
                let st = slot.rolled(now_ms, r, false);
                if kb >= st.k - r.b && kb <= st.k {
                    let h = slot.hash.get_or_insert_with(UsageHash::default);
                    let (br, bt) = h.buckets.get(&kb).copied().unwrap_or((0, 0));
                    let (dr, dt) = (br.min(1), bt.min(reservation.est_tokens));
                    h.rr = st.rr.saturating_sub(dr);
                    h.rt = st.rt.saturating_sub(dt);
                    h.buckets.insert(kb, (br - dr, bt - dt));
                }
            }
        }
        true
    }

    /// `u_settle`: releases the reservation, counts the outcome in the current window and folds the
    /// latency sample into the EWMAs.
    pub fn settle(
        &mut self,
        now_ms: u64,
        reservation: &Reservation,
        actual_tokens: Option<u64>,
        outcome: Outcome,
        latency: Option<&LatencySample>,
    ) -> SettleReport {
        let Some(r) = self.rolling else {
            self.release(
                now_ms,
                &reservation.deployment,
                &reservation.id,
                reservation.window_start_ms,
                reservation.est_tokens,
                actual_tokens,
            );
            let ws = self.window_start(now_ms);
            let window_ms = self.window_ms;
            let alpha = self.latency_ewma_alpha;
            let h = self
                .slot_mut(&reservation.deployment)
                .roll(now_ms, ws, window_ms);
            return count_outcome(h, outcome, latency, alpha);
        };
        let fw = self.fixed_start(now_ms);
        let window_ms = self.window_ms;
        let alpha = self.latency_ewma_alpha;
        let slot = self.slot_mut(&reservation.deployment);
        slot.inflight.remove(&reservation.id);
        let kb = (reservation.window_start_ms / r.s) as i64;
        let st = slot.rolled(now_ms, r, false);
        // The correction, computed from the hash as it was read (`u_settle` reads, then writes once).
        let correction = actual_tokens
            .filter(|a| *a != reservation.est_tokens)
            .and_then(|actual| {
                let delta = i128::from(actual) - i128::from(reservation.est_tokens);
                let bucket = |i: i64| {
                    slot.hash(now_ms)
                        .and_then(|h| h.buckets.get(&i).copied())
                        .unwrap_or((0, 0))
                };
                if kb >= st.k - r.b && kb <= st.k {
                    // Still in the span: the bucket it was admitted in holds the actual count.
                    let (br, bt) = bucket(kb);
                    let nt = u64::try_from((i128::from(bt) + delta).max(0)).unwrap_or(u64::MAX);
                    let rt = i128::from(st.rt) + i128::from(nt) - i128::from(bt);
                    Some((kb, (br, nt), u64::try_from(rt.max(0)).unwrap_or(u64::MAX)))
                } else if delta > 0 {
                    // Settled after its bucket left the span: the excess is debt in the current bucket.
                    let (br, bt) = bucket(st.k);
                    let debt = u64::try_from(delta).unwrap_or(u64::MAX);
                    Some((
                        st.k,
                        (br, bt.saturating_add(debt)),
                        st.rt.saturating_add(debt),
                    ))
                } else {
                    None
                }
            });
        let h = slot.roll_counts(now_ms, fw, window_ms);
        if let Some((i, value, rt)) = correction {
            h.buckets.insert(i, value);
            h.rt = rt;
        }
        count_outcome(h, outcome, latency, alpha)
    }

    /// `u_renew`: extends a live lease to `now_ms + lease`; false if it already ended or expired.
    pub fn renew(&mut self, now_ms: u64, reservation: &Reservation, lease: Duration) -> bool {
        let slot = self.slot_mut(&reservation.deployment);
        match slot.inflight.get_mut(&reservation.id) {
            Some(expiry) if *expiry > now_ms => {
                *expiry = now_ms + crate::types::duration_ms(lease);
                true
            }
            _ => false,
        }
    }

    /// Puts the deployment in cooldown until `now_ms + duration` (a zero duration lifts it).
    pub fn cooldown(
        &mut self,
        now_ms: u64,
        deployment: &DeploymentRef,
        duration: Duration,
        reason: &str,
    ) {
        let ms = crate::types::duration_ms(duration);
        let slot = self.slot_mut(deployment);
        slot.cooldown = (ms > 0).then(|| (now_ms + ms, reason.to_owned()));
    }

    /// Remaining cooldown of the deployment, if it is cooling down.
    pub fn cooldown_remaining(&self, now_ms: u64, deployment: &DeploymentRef) -> Option<Duration> {
        self.slot(deployment)?
            .cooldown_remaining(now_ms)
            .map(Duration::from_millis)
    }

    /// The reason given for the deployment's current cooldown.
    pub fn cooldown_reason(&self, now_ms: u64, deployment: &DeploymentRef) -> Option<&str> {
        let slot = self.slot(deployment)?;
        slot.cooldown_remaining(now_ms)?;
        slot.cooldown.as_ref().map(|(_, reason)| reason.as_str())
    }

    /// `u_stats`: usage and health of the deployment (read only).
    pub fn stats(&self, now_ms: u64, deployment: &DeploymentRef) -> DeploymentStats {
        let mut stats = DeploymentStats::empty(Arc::clone(&deployment.id));
        let Some(slot) = self.slot(deployment) else {
            return stats;
        };
        if let Some(h) = slot.hash(now_ms) {
            if h.w == self.fixed_start(now_ms) {
                stats.rpm_used = h.rpm;
                stats.tpm_used = h.tpm;
                stats.successes_in_window = h.ok;
                stats.failures_in_window = h.fail;
            }
            stats.latency_ms_per_token = h.lat;
            stats.ttft_ms = h.ttft;
        }
        if let Some(r) = self.rolling {
            let st = slot.rolled_read_only(now_ms, r);
            stats.rpm_used = st.rr;
            stats.tpm_used = st.rt;
        }
        stats.in_flight = slot.inflight.values().filter(|e| **e > now_ms).count() as u64;
        stats.cooldown_remaining = slot.cooldown_remaining(now_ms).map(Duration::from_millis);
        stats
    }
}

impl UsageState {
    /// `u_not_before`: the earliest epoch ms at which some candidate could take a request of `est_tokens`
    /// (`prompt_tokens` of them prompt): `now_ms` when one has rpm/tpm headroom and no cooldown, else the
    /// earliest cooldown end or window roll; `None` if no candidate ever can. In-flight slots are not
    /// counted (they may free at any moment), so it is a lower bound.
    pub fn not_before(
        &mut self,
        now_ms: u64,
        candidates: &[Candidate],
        est_tokens: u64,
        prompt_tokens: u64,
    ) -> Option<u64> {
        let ws = self.window_start(now_ms);
        let window_ms = self.window_ms;
        let rolling = self.rolling;
        let mut best: Option<u64> = None;
        for c in candidates {
            let l = &c.limits;
            if l.max_input_tokens.is_some_and(|m| prompt_tokens > m)
                || l.tpm.is_some_and(|t| est_tokens > t)
                || l.rpm == Some(0)
                || l.max_parallel == Some(0)
            {
                continue;
            }
            let cooldown = self
                .slot(&c.deployment)
                .and_then(|s| s.cooldown_remaining(now_ms))
                .unwrap_or(0);
            let mut at = now_ms + cooldown;
            let slot = self.slot_mut(&c.deployment);
            let used = slot.used(now_ms, ws, rolling);
            if let Some(t) = slot.over_until(l, now_ms, ws, window_ms, rolling, used, est_tokens) {
                at = at.max(t);
            }
            best = Some(best.map_or(at, |b| b.min(at)));
        }
        best
    }

    /// `u_end_leases_of`: ends the in-flight leases of `deployment` whose holder (the part of the
    /// reservation id after its first `|`) `is_holder` names; the window's counters stay. Returns how many.
    pub fn end_leases_of(
        &mut self,
        deployment: &DeploymentRef,
        is_holder: impl Fn(&str) -> bool,
    ) -> usize {
        let Some(slot) = self
            .groups
            .get_mut(&deployment.group)
            .and_then(|g| g.get_mut(&deployment.id))
        else {
            return 0;
        };
        let before = slot.inflight.len();
        slot.inflight.retain(|id, _| {
            !id.split_once('|')
                .is_some_and(|(_, holder)| is_holder(holder))
        });
        before - slot.inflight.len()
    }

    /// The expiry of in-flight lease `reservation_id` as stored (`ZSCORE`): an expired lease not yet
    /// dropped included.
    pub fn lease_expiry(&self, deployment: &DeploymentRef, reservation_id: &str) -> Option<u64> {
        self.slot(deployment)?.inflight.get(reservation_id).copied()
    }

    /// The stored state of one deployment at `now_ms` (the usage hash while it exists, the leases), in the
    /// form both twins can be read into: the twin property tests compare it with what Redis holds.
    pub fn snapshot(&self, now_ms: u64, deployment: &DeploymentRef) -> UsageSnapshot {
        let Some(slot) = self.slot(deployment) else {
            return UsageSnapshot::default();
        };
        UsageSnapshot {
            window: slot.hash(now_ms).map(|h| WindowSnapshot {
                window_start_ms: h.w,
                rpm: h.rpm,
                tpm: h.tpm,
                ok: h.ok,
                fail: h.fail,
                latency_ms_per_token: h.lat.map(|v| format!("{v:.4}")),
                ttft_ms: h.ttft.map(|v| format!("{v:.4}")),
                rolling: RollingSnapshot {
                    newest_bucket: h.rb,
                    requests: h.rr,
                    tokens: h.rt,
                    buckets: h.buckets.clone(),
                },
            }),
            leases: slot
                .inflight
                .iter()
                .map(|(id, expiry)| (id.clone(), *expiry))
                .collect(),
        }
    }
}

/// One deployment's stored usage, as [`UsageState::snapshot`] reads it (and a test reads Redis's keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageSnapshot {
    /// The usage hash, `None` when absent.
    pub window: Option<WindowSnapshot>,
    /// In-flight leases as stored (expired ones not yet dropped included): reservation id -> expiry.
    pub leases: std::collections::BTreeMap<String, u64>,
}

/// The usage hash's fields (`w`, `rpm`, `tpm`, `ok`, `fail`, `lat`, `ttft`; EWMAs as stored, `%.4f`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSnapshot {
    /// `w`: start of the window the counters belong to.
    pub window_start_ms: u64,
    /// `rpm`.
    pub rpm: u64,
    /// `tpm`.
    pub tpm: u64,
    /// `ok`.
    pub ok: u64,
    /// `fail`.
    pub fail: u64,
    /// `lat`.
    pub latency_ms_per_token: Option<String>,
    /// `ttft`.
    pub ttft_ms: Option<String>,
    /// The rolling window's fields (all empty in fixed mode).
    pub rolling: RollingSnapshot,
}

/// The rolling window's fields of a usage hash: `rb`, `rr`, `rt` and the `k<index>` buckets
/// (`"<requests>,<tokens>"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollingSnapshot {
    /// `rb`: the newest bucket folded in.
    pub newest_bucket: Option<i64>,
    /// `rr`: requests in the span (0 when absent).
    pub requests: u64,
    /// `rt`: tokens in the span (0 when absent).
    pub tokens: u64,
    /// `k<index>`: requests and tokens by bucket index.
    pub buckets: std::collections::BTreeMap<i64, (u64, u64)>,
}

/// The arithmetic of `u_rolled`: the span's requests and tokens at bucket `k`, and the buckets that left it
/// since `rb` (first and last index), if any.
fn span(h: &UsageHash, k: i64, r: Rolling) -> (RolledState, Option<(i64, i64)>) {
    let mut st = RolledState {
        k,
        rr: h.rr,
        rt: h.rt,
    };
    let Some(rb) = h.rb.filter(|rb| *rb < k) else {
        return (st, None);
    };
    let (lo_old, lo_new) = (rb - r.b, k - r.b);
    if lo_new <= lo_old {
        return (st, None);
    }
    let last = rb.min(lo_new - 1);
    if lo_new > rb {
        st.rr = 0;
        st.rt = 0;
    } else {
        let (gone_r, gone_t) = h
            .buckets
            .range(lo_old..=last)
            .fold((0u64, 0u64), |(a, b), (_, (r, t))| (a + r, b + t));
        st.rr = st.rr.saturating_sub(gone_r);
        st.rt = st.rt.saturating_sub(gone_t);
    }
    (st, Some((lo_old, last)))
}

/// The tail of `u_settle`: the outcome counted in the hash's fixed window, the latency sample folded in.
fn count_outcome(
    h: &mut UsageHash,
    outcome: Outcome,
    latency: Option<&LatencySample>,
    alpha: f64,
) -> SettleReport {
    match outcome {
        Outcome::Success => h.ok += 1,
        Outcome::Failure(_) => h.fail += 1,
        Outcome::Cancelled => {}
    }
    let lat = latency.and_then(LatencySample::ms_per_token);
    let ttft = latency.and_then(LatencySample::ttft_ms);
    if let Some(sample) = lat {
        h.lat = Some(ewma(h.lat, sample, alpha));
    }
    if let Some(sample) = ttft {
        h.ttft = Some(ewma(h.ttft, sample, alpha));
    }
    SettleReport {
        requests_in_window: h.ok + h.fail,
        failures_in_window: h.fail,
    }
}

/// The EWMA step of `u_ewma`, rounded to 4 decimals as the fragment stores it.
fn ewma(current: Option<f64>, sample: f64, alpha: f64) -> f64 {
    let v = current.map_or(sample, |c| c + alpha * (sample - c));
    format!("{v:.4}").parse().unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u64 = 1000;
    const T0: u64 = 1_700_000_000_000; // a window start

    fn cand(id: &str, limits: Limits) -> Candidate {
        Candidate {
            deployment: DeploymentRef::new("g", id),
            limits,
        }
    }

    fn req(id: &str, est: u64) -> ReserveRequest {
        ReserveRequest {
            reservation_id: id.to_owned(),
            est_tokens: est,
            prompt_tokens: 0,
            lease: Duration::from_millis(500),
            order: CandidateOrder::AsGiven,
        }
    }

    fn reserved(outcome: ReserveOutcome) -> Reservation {
        match outcome {
            ReserveOutcome::Reserved(r) => r,
            other => panic!("expected a reservation, got {other:?}"),
        }
    }

    #[test]
    fn give_back_counts_once() {
        let mut s = UsageState::new(Duration::from_millis(W), 0.5);
        let c = [cand("a", Limits::default())];
        reserved(s.try_reserve(T0 + 10, &c, &req("kept", 7)));
        let r = reserved(s.try_reserve(T0 + 10, &c, &req("unsent", 5)));
        assert!(s.give_back(T0 + 20, &r));
        assert!(
            !s.give_back(T0 + 30, &r),
            "a second give-back of one reservation"
        );
        let stats = s.stats(T0 + 30, &c[0].deployment);
        assert_eq!((stats.rpm_used, stats.tpm_used, stats.in_flight), (1, 7, 1));
    }

    #[test]
    fn window_roll_resets_counters_and_keeps_latency() {
        let mut s = UsageState::new(Duration::from_millis(W), 0.5);
        let c = [cand(
            "a",
            Limits {
                rpm: Some(1),
                ..Limits::default()
            },
        )];
        let r = reserved(s.try_reserve(T0 + 10, &c, &req("r1", 5)));
        assert_eq!(r.window_start_ms, T0);
        assert_eq!(
            s.try_reserve(T0 + 20, &c, &req("r2", 5)),
            ReserveOutcome::Unavailable {
                retry_in: Some(Duration::from_millis(980))
            }
        );
        let sample = LatencySample {
            total: Duration::from_millis(100),
            ttft: None,
            output_tokens: 10,
        };
        s.settle(T0 + 30, &r, Some(3), Outcome::Success, Some(&sample));
        let r2 = reserved(s.try_reserve(T0 + W, &c, &req("r2", 5)));
        assert_eq!(r2.window_start_ms, T0 + W);
        let stats = s.stats(T0 + W, &c[0].deployment);
        assert_eq!(
            (stats.rpm_used, stats.tpm_used, stats.successes_in_window),
            (1, 5, 0)
        );
        assert_eq!(stats.latency_ms_per_token, Some(10.0));
        // A settle of last window's reservation does not touch this window's TPM.
        s.release(T0 + W + 1, &c[0].deployment, "r1", T0, 5, Some(0));
        assert_eq!(s.stats(T0 + W + 1, &c[0].deployment).tpm_used, 5);
    }

    #[test]
    fn usage_is_forgotten_at_the_end_of_the_second_window_after_its_own() {
        let mut s = UsageState::new(Duration::from_millis(W), 0.5);
        let c = [cand("a", Limits::default())];
        let r = reserved(s.try_reserve(T0, &c, &req("r1", 5)));
        let sample = LatencySample {
            total: Duration::from_millis(100),
            ttft: None,
            output_tokens: 10,
        };
        s.settle(T0 + 100, &r, None, Outcome::Success, Some(&sample));
        let d = &c[0].deployment;
        // At least two windows after the last write, and no longer than the end of the second window after
        // the one written: window start + 3 windows.
        assert_eq!(s.stats(T0 + 3 * W, d).latency_ms_per_token, Some(10.0));
        assert_eq!(s.stats(T0 + 3 * W + 1, d).latency_ms_per_token, None);
    }

    #[test]
    fn leases_expire_after_their_expiry() {
        let mut s = UsageState::new(Duration::from_millis(W), 0.5);
        let c = [cand(
            "a",
            Limits {
                max_parallel: Some(1),
                ..Limits::default()
            },
        )];
        let r = reserved(s.try_reserve(T0, &c, &req("r1", 1)));
        assert_eq!(
            s.try_reserve(T0 + 499, &c, &req("r2", 1)),
            ReserveOutcome::Unavailable {
                retry_in: Some(Duration::from_millis(1))
            }
        );
        assert!(
            !s.renew(T0 + 500, &r, Duration::from_secs(1)),
            "expired at its expiry"
        );
        reserved(s.try_reserve(T0 + 500, &c, &req("r2", 1)));
    }
}

#[cfg(test)]
mod rolling_tests {
    use super::*;

    #[test]
    fn capacity_returns_when_the_oldest_admission_leaves() {
        let t0: u64 = 1_700_000_000_000;
        let mut s = UsageState::new(Duration::from_millis(1000), 0.5).rolling(true);
        let c = [Candidate {
            deployment: DeploymentRef::new("g", "a"),
            limits: Limits {
                rpm: Some(3),
                ..Limits::default()
            },
        }];
        let req = |id: &str| ReserveRequest {
            reservation_id: id.to_owned(),
            est_tokens: 0,
            prompt_tokens: 0,
            lease: Duration::from_secs(60),
            order: CandidateOrder::AsGiven,
        };
        for (t, id) in [(0, "a"), (634, "b"), (817, "c")] {
            assert!(
                matches!(
                    s.try_reserve(t0 + t, &c, &req(id)),
                    ReserveOutcome::Reserved(_)
                ),
                "{id}"
            );
        }
        let blocked = s.try_reserve(t0 + 817, &c, &req("d"));
        assert!(
            matches!(blocked, ReserveOutcome::Unavailable { .. }),
            "{blocked:?}"
        );
        let later = s.try_reserve(t0 + 1032, &c, &req("d"));
        assert!(matches!(later, ReserveOutcome::Reserved(_)), "{later:?}");
    }
}
