//! Admission in memory for a single instance: the twin of `admit_v2.lua`, line for line, under two locks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{Clock, Entry, QueueState};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use usage_tracker::{
    CandidateOrder, Outcome, Reservation, ReserveOutcome, ReserveRequest, SettleReport, UsageState,
};

use crate::error::BackendError;
use crate::lock;
use crate::step::{
    reservation_on, AdmissionBackend, CancelOutcome, Grant, GrantPayload, Release, Step, StepReply,
    Submit, SubmitOutcome,
};

/// Queue and usage state of one process. Locks are taken queue first, then usage, and never held across
/// an await.
pub struct MemoryAdmission {
    queue: Arc<Mutex<QueueState>>,
    usage: Arc<Mutex<UsageState>>,
    clock: Time,
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
        }
    }

    /// Tests: read the time from `now_ms` instead of the clock.
    pub fn with_pinned_time(mut self, now_ms: Arc<AtomicU64>) -> MemoryAdmission {
        self.clock = Time::Pinned(now_ms);
        self
    }

    /// The shared queue state (tests compare it with Redis's keys).
    pub fn queue_state(&self) -> &Arc<Mutex<QueueState>> {
        &self.queue
    }

    /// The shared usage state (tests compare it with Redis's keys).
    pub fn usage_state(&self) -> &Arc<Mutex<UsageState>> {
        &self.usage
    }

    /// `s_heartbeat`.
    fn heartbeat(step: &Step<'_>, queue: &mut QueueState, now: u64) {
        queue.heartbeat(
            step.group,
            step.owner,
            now + step.settings.queue_lease.as_millis() as u64,
        );
        queue.forget_expired_owners(step.group, now);
    }

    /// The common tail of every step: take this replica's grants, give back those of dead owners, then
    /// grant from the global head while some deployment has headroom.
    fn admit<T>(
        step: &Step<'_>,
        queue: &mut QueueState,
        usage: &mut UsageState,
        now: u64,
        outcome: T,
        read_depth: bool,
    ) -> Result<StepReply<T>, BackendError> {
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
        let mut next_capacity_ms = None;
        let mut granted = 0;
        while granted < step.settings.max_grants_per_step {
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
        })
    }
}

fn reserve_request(entry: &Entry, lease: Duration, order: CandidateOrder) -> ReserveRequest {
    let meta = entry.meta();
    ReserveRequest {
        reservation_id: entry.id().simple().to_string(),
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
        let now = self.now_ms();
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        let blocked = queue
            .head(step.group, now, &mut Vec::new())
            .is_some_and(|head| head.priority <= submit.priority);
        if !submit.force_queue && !blocked {
            let request = reserve_request(entry, step.settings.inflight_lease, step.order);
            if let ReserveOutcome::Reserved(r) = usage.try_reserve(now, step.candidates, &request) {
                return Ok(StepReply::bare(SubmitOutcome::Granted {
                    deployment_id: r.deployment.id.to_string(),
                    window_start_ms: r.window_start_ms,
                }));
            }
        }
        Self::heartbeat(step, &mut queue, now);
        let max_depth = step.settings.max_queue_depth;
        let enqueued = match queue.enqueue(step.group, submit.priority, entry, max_depth) {
            Err(e) if e.is_queue_full() => {
                queue.reap(step.group, now);
                queue.enqueue(step.group, submit.priority, entry, max_depth)
            }
            other => other,
        };
        match enqueued {
            Ok(_) => {
                let meta = entry.meta();
                let not_before_ms =
                    usage.not_before(now, step.candidates, meta.est_tokens, meta.prompt_tokens);
                let queued = SubmitOutcome::Queued {
                    position: None,
                    not_before_ms,
                };
                let mut reply = Self::admit(step, &mut queue, &mut usage, now, queued, true)?;
                if let SubmitOutcome::Queued { position, .. } = &mut reply.outcome {
                    *position = queue.position(step.group, entry);
                }
                Ok(reply)
            }
            Err(e) if e.is_queue_full() => Ok(StepReply {
                depth: Some(queue.depth(step.group)),
                ..StepReply::bare(SubmitOutcome::Full)
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn poll(&self, step: &Step<'_>) -> Result<StepReply<()>, BackendError> {
        let now = self.now_ms();
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        Self::heartbeat(step, &mut queue, now);
        Self::admit(step, &mut queue, &mut usage, now, (), true)
    }

    async fn release(
        &self,
        step: &Step<'_>,
        reservation: &Reservation,
        release: &Release,
    ) -> Result<StepReply<SettleReport>, BackendError> {
        let now = self.now_ms();
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        if !release.sent {
            usage.give_back(now, reservation);
        }
        let (outcome, actual) = if release.sent {
            (release.outcome, release.actual_tokens)
        } else {
            (Outcome::Cancelled, None)
        };
        let report = usage.settle(now, reservation, actual, outcome, release.latency.as_ref());
        Self::admit(step, &mut queue, &mut usage, now, report, false)
    }

    async fn cancel(
        &self,
        step: &Step<'_>,
        entry: &Entry,
    ) -> Result<StepReply<CancelOutcome>, BackendError> {
        let now = self.now_ms();
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
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
            let id = entry.id().simple().to_string();
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
        Self::admit(step, &mut queue, &mut usage, now, outcome, false)
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
