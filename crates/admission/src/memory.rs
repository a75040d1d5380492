//! Admission in memory for a single instance: the twin of `admit_v2.lua`, line for line, under two locks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{Entry, QueueState, Score};
use store::{BackendError, Clock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use usage_tracker::{
    CandidateOrder, Outcome, Reservation, ReserveOutcome, ReserveRequest, SettleReport, UsageState,
};

use crate::lock;
use crate::step::{
    lease_id, reservation_on, AdmissionBackend, CancelOutcome, Grant, GrantPayload, Place, Polled,
    Release, Restore, Restored, Step, StepReply, Submit, SubmitOutcome,
};

/// Queue and usage state of one process. Locks are taken queue first, then usage, and never held across
/// an await.
pub struct MemoryAdmission {
    queue: Arc<Mutex<QueueState>>,
    usage: Arc<Mutex<UsageState>>,
    clock: Time,
    /// The `:gen` key of each group (taken after the usage lock).
    generations: Mutex<HashMap<String, String>>,
}

/// What every step reads first: the time, the store's generation and whether admission is paused.
struct Context {
    now: u64,
    generation: String,
    paused_until: Option<u64>,
    lapsed: bool,
}

/// Where the twin reads the time.
enum Time {
    Clock(Clock),
    /// Pinned by a test (the Redis twin is pinned to the same value).
    Pinned(Arc<AtomicU64>),
}

impl MemoryAdmission {
    /// Admission over shared queue and usage state (also read by the queue and usage stores).
    pub fn new(
        queue: Arc<Mutex<QueueState>>,
        usage: Arc<Mutex<UsageState>>,
        clock: Clock,
    ) -> MemoryAdmission {
        MemoryAdmission {
            queue,
            usage,
            clock: Time::Clock(clock),
            generations: Mutex::new(HashMap::new()),
        }
    }

    /// Tests: forget everything, as a Redis that restarted empty.
    pub fn lose_state(&self) {
        lock(&self.queue).clear();
        lock(&self.usage).clear();
        lock(&self.generations).clear();
    }

    /// Tests: read the time from `now_ms` instead of the clock.
    pub fn with_pinned_time(mut self, now_ms: Arc<AtomicU64>) -> MemoryAdmission {
        self.clock = Time::Pinned(now_ms);
        self
    }

    /// True while `reservation`'s in-flight lease is held here.
    pub fn holds(&self, reservation: &Reservation) -> bool {
        lock(&self.usage)
            .lease_expiry(&reservation.deployment, &reservation.id)
            .is_some()
    }

    /// The shared queue state (tests compare it with Redis's keys).
    pub fn queue_state(&self) -> &Arc<Mutex<QueueState>> {
        &self.queue
    }

    /// The shared usage state (tests compare it with Redis's keys).
    pub fn usage_state(&self) -> &Arc<Mutex<UsageState>> {
        &self.usage
    }

    /// The generation check at the top of every step of `admit_v2.lua`.
    fn context(&self, step: &Step<'_>) -> Context {
        let now = self.now_ms();
        let mut generations = lock(&self.generations);
        let (generation, paused_until) = match generations.get(step.group) {
            Some(generation) => {
                let until = generation
                    .split_once(':')
                    .and_then(|(_, until)| until.parse::<u64>().ok())
                    .filter(|until| *until > now);
                (generation.clone(), until)
            }
            None => {
                let (generation, until) = if step.generation.is_some() {
                    let until = now + step.settings.restore_pause().as_millis() as u64;
                    (format!("{now}:{until}"), Some(until))
                } else {
                    (now.to_string(), None)
                };
                generations.insert(step.group.to_owned(), generation.clone());
                (generation, until)
            }
        };
        Context {
            now,
            generation,
            paused_until,
            lapsed: false,
        }
    }

    /// `s_heartbeat`: renews this replica's liveness, forgets dead owners and ends their in-flight leases.
    fn heartbeat(
        step: &Step<'_>,
        queue: &mut QueueState,
        usage: &mut UsageState,
        cx: &mut Context,
    ) {
        if !queue.owner_alive(step.group, step.owner, cx.now) {
            cx.lapsed = true;
        }
        queue.heartbeat(
            step.group,
            step.owner,
            cx.now + step.settings.liveness().as_millis() as u64,
        );
        let dead = queue.forget_expired_owners(step.group, cx.now);
        if !dead.is_empty() {
            for c in step.candidates {
                usage.end_leases_of(&c.deployment, |holder| dead.iter().any(|d| d == holder));
            }
        }
    }

    /// The common tail of every step: take this replica's grants, give back those of dead owners, then
    /// grant from the global head while some deployment has headroom.
    fn admit<T>(
        step: &Step<'_>,
        queue: &mut QueueState,
        usage: &mut UsageState,
        cx: Context,
        outcome: T,
        read_depth: bool,
    ) -> Result<StepReply<T>, BackendError> {
        let now = cx.now;
        let mut mine = Vec::new();
        for grant in queue.grants(step.group) {
            let entry = &grant.entry;
            if entry.owner() == step.owner {
                queue.take_grant(step.group, entry);
                mine.push(Grant {
                    payload: GrantPayload::parse(&grant.payload)?,
                    entry: grant.entry,
                });
            } else if !queue.owner_alive(step.group, entry.owner(), now) {
                let forget = match GrantPayload::parse(&grant.payload) {
                    Ok(payload @ GrantPayload::Granted { .. }) => {
                        match payload.reservation(step.candidates, entry) {
                            Some(reservation) => {
                                usage.give_back(now, &reservation);
                                true
                            }
                            None => false,
                        }
                    }
                    _ => true,
                };
                if forget {
                    queue.take_grant(step.group, entry);
                }
            }
        }
        let mut next_capacity_ms = cx.paused_until;
        let mut granted = 0;
        while granted < step.settings.max_grants_per_step && cx.paused_until.is_none() {
            let Some(head) = queue.head(step.group, now, &mut Vec::new()) else {
                break;
            };
            let entry = head.entry;
            let request = reserve_request(&entry, step.settings.inflight_lease, step.order);
            let payload = match usage.try_reserve(now, step.candidates, &request) {
                ReserveOutcome::Reserved(r) => GrantPayload::Granted {
                    deployment_id: r.deployment.id.to_string(),
                    window_start_ms: r.window_start_ms,
                },
                ReserveOutcome::Unavailable { retry_in: None } => GrantPayload::Reject,
                ReserveOutcome::Unavailable {
                    retry_in: Some(wait),
                } => {
                    next_capacity_ms = Some(now + wait.as_millis() as u64);
                    break;
                }
            };
            queue.remove(step.group, &entry);
            if entry.owner() == step.owner {
                mine.push(Grant { entry, payload });
            } else {
                queue.record_grant(step.group, &entry, payload.encode());
            }
            granted += 1;
        }
        Ok(StepReply {
            outcome,
            next_capacity_ms,
            depth: read_depth.then(|| queue.depth(step.group)),
            grants: mine,
            generation: cx.generation,
            lapsed: cx.lapsed,
        })
    }
}

fn reserve_request(entry: &Entry, lease: Duration, order: CandidateOrder) -> ReserveRequest {
    let meta = entry.meta();
    ReserveRequest {
        reservation_id: lease_id(entry),
        est_tokens: meta.est_tokens,
        prompt_tokens: meta.prompt_tokens,
        lease,
        order,
    }
}

#[async_trait]
impl AdmissionBackend for MemoryAdmission {
    async fn submit(
        &self,
        step: &Step<'_>,
        submit: &Submit<'_>,
    ) -> Result<StepReply<SubmitOutcome>, BackendError> {
        let entry = submit.entry;
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        let mut cx = self.context(step);
        let now = cx.now;
        let blocked = queue
            .head(step.group, now, &mut Vec::new())
            .is_some_and(|head| head.priority <= submit.priority);
        if !submit.force_queue && !blocked && cx.paused_until.is_none() {
            let request = reserve_request(entry, step.settings.inflight_lease, step.order);
            if let ReserveOutcome::Reserved(r) = usage.try_reserve(now, step.candidates, &request) {
                let granted = SubmitOutcome::Granted {
                    deployment_id: r.deployment.id.to_string(),
                    window_start_ms: r.window_start_ms,
                };
                return Ok(StepReply::bare(granted, cx.generation));
            }
        }
        Self::heartbeat(step, &mut queue, &mut usage, &mut cx);
        let max_depth = step.settings.max_queue_depth;
        let enqueued = match queue.enqueue(step.group, submit.priority, entry, max_depth) {
            Err(e) if e.is_queue_full() => {
                queue.reap(step.group, now);
                queue.enqueue(step.group, submit.priority, entry, max_depth)
            }
            other => other,
        };
        match enqueued {
            Ok(enqueued) => {
                let meta = entry.meta();
                let not_before_ms =
                    usage.not_before(now, step.candidates, meta.est_tokens, meta.prompt_tokens);
                let queued = SubmitOutcome::Queued {
                    position: None,
                    not_before_ms,
                    score: enqueued.score,
                };
                let mut reply = Self::admit(step, &mut queue, &mut usage, cx, queued, true)?;
                if let SubmitOutcome::Queued { position, .. } = &mut reply.outcome {
                    *position = queue.position(step.group, entry);
                }
                Ok(reply)
            }
            Err(e) if e.is_queue_full() => Ok(StepReply {
                depth: Some(queue.depth(step.group)),
                lapsed: cx.lapsed,
                ..StepReply::bare(SubmitOutcome::Full, cx.generation)
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn poll(&self, step: &Step<'_>) -> Result<StepReply<Polled>, BackendError> {
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        let mut cx = self.context(step);
        Self::heartbeat(step, &mut queue, &mut usage, &mut cx);
        let polled = Polled {
            replicas: queue.live_owners(step.group),
        };
        Self::admit(step, &mut queue, &mut usage, cx, polled, true)
    }

    async fn restore(
        &self,
        step: &Step<'_>,
        restore: &Restore<'_>,
    ) -> Result<StepReply<Restored>, BackendError> {
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        let mut cx = self.context(step);
        let now = cx.now;
        Self::heartbeat(step, &mut queue, &mut usage, &mut cx);
        let start_seq = queue.seq(step.group);
        let mut seq = start_seq;
        let mut waiters = 0;
        // Entries with their place first, so the sequence resumes above every one of them.
        for placed in [true, false] {
            for (entry, place) in &restore.waiters {
                if placed != matches!(place, Place::At(_)) {
                    continue;
                }
                let wanted = !entry.deadline_passed(now)
                    && queue.owner_alive(step.group, entry.owner(), now)
                    && !queue.is_queued(step.group, entry)
                    && !queue.has_grant(step.group, entry);
                if !wanted {
                    continue;
                }
                let score = match *place {
                    Place::At(score) => {
                        seq = seq.max(u64::from(score.seq()));
                        score
                    }
                    Place::Back(priority) => {
                        seq += 1;
                        Score::new(priority, (seq % (1 << 32)) as u32)
                    }
                };
                queue.put_back(step.group, entry, score);
                waiters += 1;
            }
        }
        if seq > start_seq {
            queue.set_seq(step.group, seq);
        }
        let mut reservations = 0;
        for reservation in &restore.reservations {
            let known = step
                .candidates
                .iter()
                .any(|c| c.deployment.id == reservation.deployment.id);
            if known
                && usage
                    .lease_expiry(&reservation.deployment, &reservation.id)
                    .is_none()
            {
                usage.charge(
                    now,
                    &reservation.deployment,
                    reservation.est_tokens,
                    &reservation.id,
                    step.settings.inflight_lease,
                );
                reservations += 1;
            }
        }
        let restored = Restored {
            waiters,
            reservations,
        };
        Self::admit(step, &mut queue, &mut usage, cx, restored, true)
    }

    async fn release(
        &self,
        step: &Step<'_>,
        reservation: &Reservation,
        release: &Release,
    ) -> Result<StepReply<SettleReport>, BackendError> {
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        let cx = self.context(step);
        let now = cx.now;
        if !release.sent {
            usage.give_back(now, reservation);
        }
        let (outcome, actual) = if release.sent {
            (release.outcome, release.actual_tokens)
        } else {
            (Outcome::Cancelled, None)
        };
        let report = usage.settle(now, reservation, actual, outcome, release.latency.as_ref());
        Self::admit(step, &mut queue, &mut usage, cx, report, false)
    }

    async fn cancel(
        &self,
        step: &Step<'_>,
        entry: &Entry,
    ) -> Result<StepReply<CancelOutcome>, BackendError> {
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        let cx = self.context(step);
        let now = cx.now;
        let outcome = if queue.remove(step.group, entry) {
            CancelOutcome::Waiting
        } else if let Some(payload) = queue.take_grant(step.group, entry) {
            // Granted concurrently: give the capacity back (the request never ran).
            if let Some(reservation) = GrantPayload::parse(&payload)
                .ok()
                .and_then(|p| p.reservation(step.candidates, entry))
            {
                usage.give_back(now, &reservation);
            }
            CancelOutcome::Grant
        } else {
            // A submit the request gave up on while it was on the way may have reserved on the fast path.
            let id = lease_id(entry);
            let lease_ms = step.settings.inflight_lease.as_millis() as u64;
            let mut outcome = CancelOutcome::Absent;
            for c in step.candidates {
                let Some(expiry) = usage.lease_expiry(&c.deployment, &id) else {
                    continue;
                };
                let window_start = usage.window_start(expiry.saturating_sub(lease_ms));
                if let Some(reservation) =
                    reservation_on(step.candidates, entry, &c.deployment.id, window_start)
                {
                    if usage.give_back(now, &reservation) {
                        outcome = CancelOutcome::FastPath;
                    }
                }
            }
            outcome
        };
        Self::admit(step, &mut queue, &mut usage, cx, outcome, false)
    }

    fn start_wakeups(
        &self,
        _owner: Arc<str>,
        _wake: Arc<dyn Fn(&str) + Send + Sync>,
        _shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        // One process, one owner: every grant is handed back by the step that made it.
        None
    }

    fn now_ms(&self) -> u64 {
        match &self.clock {
            Time::Clock(clock) => clock.now_ms(),
            Time::Pinned(now) => now.load(Ordering::SeqCst),
        }
    }
}
