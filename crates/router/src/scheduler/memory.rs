//! Admission in memory for a single instance: the same step as `admit.lua`, under two locks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{Clock, Entry, Priority, QueueState};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use usage_tracker::{
    Candidate, CandidateOrder, Reservation, ReserveOutcome, ReserveRequest, UsageState,
};

use super::{
    lock, parse_payload, AdmissionBackend, BackendError, GrantPayload, Release, Step, StepReply,
    StepStatus,
};

/// Queue and usage state of one process. Locks are taken queue first, then usage, and never held across
/// an await.
pub(crate) struct MemoryAdmission {
    queue: Arc<Mutex<QueueState>>,
    usage: Arc<Mutex<UsageState>>,
    clock: Clock,
}

impl MemoryAdmission {
    pub(crate) fn new(
        queue: Arc<Mutex<QueueState>>,
        usage: Arc<Mutex<UsageState>>,
        clock: Clock,
    ) -> MemoryAdmission {
        MemoryAdmission {
            queue,
            usage,
            clock,
        }
    }

    /// The admission loop of `admit.lua`: grant from the global head while some deployment has headroom.
    fn admit(
        &self,
        step: &Step<'_>,
        queue: &mut QueueState,
        usage: &mut UsageState,
        now: u64,
        status: StepStatus,
    ) -> Result<StepReply, BackendError> {
        let mut next_capacity_ms = None;
        let mut removed = Vec::new();
        for _ in 0..step.settings.max_grants_per_step {
            let Some(head) = queue.head(step.group, now, &mut removed) else {
                break;
            };
            let entry = head.entry;
            let request = reserve_request(&entry, step.settings.reservation_lease, step.order);
            let payload = match usage.try_reserve(now, step.candidates, &request) {
                ReserveOutcome::Reserved(r) => {
                    format!("{}|{}", r.deployment.id, r.window_start_ms)
                }
                ReserveOutcome::Unavailable { retry_in: None } => "reject".to_owned(),
                ReserveOutcome::Unavailable {
                    retry_in: Some(wait),
                } => {
                    next_capacity_ms = Some(now + wait.as_millis() as u64);
                    break;
                }
            };
            queue.remove(step.group, &entry);
            queue.record_grant(step.group, &entry, payload);
        }
        let grants = queue
            .take_grants(step.group, step.owner)
            .into_iter()
            .map(|grant| {
                Ok((
                    grant.entry.member().to_owned(),
                    parse_payload(&grant.payload)?,
                ))
            })
            .collect::<Result<Vec<_>, BackendError>>()?;
        Ok(StepReply {
            status,
            next_capacity_ms,
            depth: queue.depth(step.group),
            grants,
        })
    }

    fn heartbeat(&self, step: &Step<'_>, queue: &mut QueueState, now: u64) {
        queue.heartbeat(
            step.group,
            step.owner,
            now + step.settings.owner_lease.as_millis() as u64,
        );
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

/// `s_not_before` of `admit.lua`: the earliest epoch ms at which some candidate could take the entry
/// (cooldowns and full windows; in-flight slots may free at any time), `None` if none ever can.
fn not_before(
    usage: &UsageState,
    now: u64,
    candidates: &[Candidate],
    entry: &Entry,
) -> Option<u64> {
    let meta = entry.meta();
    let window_end = usage.window_start(now) + usage.window_ms();
    candidates
        .iter()
        .filter(|c| {
            let l = &c.limits;
            !(l.max_input_tokens.is_some_and(|m| meta.prompt_tokens > m)
                || l.tpm.is_some_and(|t| meta.est_tokens > t)
                || l.rpm == Some(0)
                || l.max_parallel == Some(0))
        })
        .map(|c| {
            let stats = usage.stats(now, &c.deployment);
            let l = &c.limits;
            let mut at = now + stats.cooldown_remaining.map_or(0, |d| d.as_millis() as u64);
            let window_full = l.rpm.is_some_and(|r| stats.rpm_used + 1 > r)
                || l.tpm.is_some_and(|t| stats.tpm_used + meta.est_tokens > t);
            if window_full {
                at = at.max(window_end);
            }
            at
        })
        .min()
}

fn entry(member: &str) -> Result<Entry, BackendError> {
    Entry::from_member(member).map_err(|e| BackendError::Reply(e.to_string()))
}

/// The reservation a grant payload stands for, to give it back.
fn granted_reservation(
    candidates: &[Candidate],
    entry: &Entry,
    payload: &GrantPayload,
) -> Option<Reservation> {
    let GrantPayload::Granted {
        deployment_id,
        window_start_ms,
    } = payload
    else {
        return None;
    };
    super::reservation_for(
        candidates,
        &entry.id().simple().to_string(),
        deployment_id,
        *window_start_ms,
        entry.meta().est_tokens,
    )
}

#[async_trait]
impl AdmissionBackend for MemoryAdmission {
    async fn submit(
        &self,
        step: &Step<'_>,
        member: &str,
        priority: Priority,
        force_queue: bool,
        lease: Duration,
    ) -> Result<StepReply, BackendError> {
        let entry = entry(member)?;
        let now = self.clock.now_ms();
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        self.heartbeat(step, &mut queue, now);
        let mut removed = Vec::new();
        let blocked = queue
            .head(step.group, now, &mut removed)
            .is_some_and(|head| head.priority <= priority);
        if !force_queue && !blocked {
            let request = reserve_request(&entry, lease, step.order);
            if let ReserveOutcome::Reserved(r) = usage.try_reserve(now, step.candidates, &request) {
                return Ok(StepReply {
                    status: StepStatus::Granted(GrantPayload::Granted {
                        deployment_id: r.deployment.id.to_string(),
                        window_start_ms: r.window_start_ms,
                    }),
                    next_capacity_ms: None,
                    depth: queue.depth(step.group),
                    grants: Vec::new(),
                });
            }
        }
        let max_depth = step.settings.max_queue_depth;
        let enqueued = match queue.enqueue(step.group, priority, &entry, max_depth) {
            Err(e) if e.is_queue_full() => {
                queue.reap(step.group, now);
                queue.enqueue(step.group, priority, &entry, max_depth)
            }
            other => other,
        };
        match enqueued {
            Ok(enqueued) => {
                let status = StepStatus::Queued {
                    position: Some(enqueued.position),
                    not_before_ms: not_before(&usage, now, step.candidates, &entry),
                };
                self.admit(step, &mut queue, &mut usage, now, status)
            }
            Err(e) if e.is_queue_full() => Ok(StepReply {
                status: StepStatus::Full,
                next_capacity_ms: None,
                depth: queue.depth(step.group),
                grants: Vec::new(),
            }),
            Err(e) => Err(BackendError::Reply(e.to_string())),
        }
    }

    async fn poll(&self, step: &Step<'_>) -> Result<StepReply, BackendError> {
        let now = self.clock.now_ms();
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        self.heartbeat(step, &mut queue, now);
        self.admit(step, &mut queue, &mut usage, now, StepStatus::Polled)
    }

    async fn release(
        &self,
        step: &Step<'_>,
        reservation: &Reservation,
        release: &Release,
    ) -> Result<StepReply, BackendError> {
        let now = self.clock.now_ms();
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        self.heartbeat(step, &mut queue, now);
        if !release.sent {
            usage.give_back(now, reservation);
        }
        let report = usage.settle(
            now,
            reservation,
            release.actual_tokens,
            release.outcome,
            release.latency.as_ref(),
        );
        let status = StepStatus::Released(report);
        self.admit(step, &mut queue, &mut usage, now, status)
    }

    async fn cancel(&self, step: &Step<'_>, member: &str) -> Result<StepReply, BackendError> {
        let entry = entry(member)?;
        let now = self.clock.now_ms();
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        self.heartbeat(step, &mut queue, now);
        let found = if queue.remove(step.group, &entry) {
            true
        } else if let Some(payload) = queue.take_grant(step.group, &entry) {
            let payload = parse_payload(&payload)?;
            if let Some(reservation) = granted_reservation(step.candidates, &entry, &payload) {
                usage.give_back(now, &reservation);
                usage.settle(
                    now,
                    &reservation,
                    None,
                    usage_tracker::Outcome::Cancelled,
                    None,
                );
            }
            true
        } else {
            false
        };
        self.admit(
            step,
            &mut queue,
            &mut usage,
            now,
            StepStatus::Cancelled(found),
        )
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
        self.clock.now_ms()
    }
}
