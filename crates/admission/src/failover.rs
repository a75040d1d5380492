//! Fail-open admission (`redis_failure_mode: open`): Redis while it answers; while it does not, this
//! replica's share of every limit, in memory.
//!
//! Steps go to Redis. When Redis does not answer (timeout, refused or broken connection), the step runs on a
//! memory twin whose candidates carry `limit / live replicas` (the replicas the last Redis poll saw), so the
//! fleet as a whole stays near its limits; Redis is tried again at most once per probe interval, and every
//! step goes back to it as soon as it answers. The switch changes the generation a replica sees, so the
//! scheduler's restore puts the waiters and in-flight reservations into whichever store is in use (waiters
//! at their place), as after a Redis restart.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use queue_core::Entry;
use store::{BackendError, BackendErrorKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use usage_tracker::{Candidate, Limits, Reservation, SettleReport};

use crate::jobs::{Claim, Claimed, JobCancel, JobEnd, JobErrors, JobId, JobStore, JobView, NewJob};
use crate::lock;
use crate::memory::MemoryAdmission;
use crate::redis::RedisAdmission;
use crate::step::{
    lease_id, AdmissionBackend, CancelOutcome, GrantPayload, Polled, Release, Restore, Restored,
    Step, StepReply, Submit, SubmitOutcome,
};

/// Redis with a memory fallback for outages.
pub struct FailoverAdmission {
    redis: RedisAdmission,
    memory: MemoryAdmission,
    /// While Redis is down: when to try it again.
    retry_at: Mutex<Option<Instant>>,
    probe_every: Duration,
    down: AtomicBool,
    /// Live replicas the last Redis poll saw (at least 1).
    replicas: Arc<AtomicU64>,
    /// Reservations made in memory during an outage (released there).
    local: Mutex<HashSet<String>>,
}

impl FailoverAdmission {
    /// Redis first; `memory` serves this replica's share of the limits while Redis does not answer. Redis
    /// is tried again every `probe_every` during an outage.
    pub fn new(
        redis: RedisAdmission,
        memory: MemoryAdmission,
        probe_every: Duration,
    ) -> FailoverAdmission {
        let replicas = redis.live_replicas();
        FailoverAdmission {
            redis,
            memory,
            retry_at: Mutex::new(None),
            probe_every,
            down: AtomicBool::new(false),
            replicas,
            local: Mutex::new(HashSet::new()),
        }
    }

    /// True while steps run in memory.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    /// The Redis twin.
    pub(crate) fn redis(&self) -> &RedisAdmission {
        &self.redis
    }

    /// The memory twin serving while Redis does not answer.
    pub(crate) fn memory(&self) -> &MemoryAdmission {
        &self.memory
    }

    /// Whether this step should try Redis.
    fn try_redis(&self) -> bool {
        match *lock(&self.retry_at) {
            None => true,
            Some(at) => Instant::now() >= at,
        }
    }

    /// Runs `step` on Redis when it is worth trying; `None` when the step must run in memory.
    async fn on_redis<T, F>(&self, step: F) -> Option<Result<StepReply<T>, BackendError>>
    where
        F: std::future::Future<Output = Result<StepReply<T>, BackendError>>,
    {
        if !self.try_redis() {
            return None;
        }
        match step.await {
            Err(e) if e.is_retryable() => {
                *lock(&self.retry_at) = Some(Instant::now() + self.probe_every);
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "Redis does not answer: admitting with this replica's share of every limit in memory (redis_failure_mode: open): {e}"
                    );
                }
                None
            }
            other => {
                if other.is_ok() {
                    *lock(&self.retry_at) = None;
                    if self.down.swap(false, Ordering::Relaxed) {
                        tracing::warn!(
                            "Redis answers again: admission is shared across replicas again"
                        );
                    }
                }
                Some(other)
            }
        }
    }

    /// The candidates with this replica's share of each limit.
    fn share(&self, candidates: &[Candidate]) -> Vec<Candidate> {
        let n = self.replicas.load(Ordering::Relaxed).max(1);
        let part = |limit: u64| if limit == 0 { 0 } else { (limit / n).max(1) };
        candidates
            .iter()
            .map(|c| Candidate {
                deployment: c.deployment.clone(),
                limits: Limits {
                    rpm: c.limits.rpm.map(part),
                    tpm: c.limits.tpm.map(part),
                    max_parallel: c
                        .limits
                        .max_parallel
                        .map(|p| u32::try_from(part(u64::from(p))).unwrap_or(u32::MAX)),
                    ..c.limits
                },
            })
            .collect()
    }

    /// Notes the reservations a memory step made, so their releases go to memory.
    fn note_local<T>(&self, reply: &StepReply<T>) {
        let mut local = lock(&self.local);
        for grant in &reply.grants {
            if matches!(grant.payload, GrantPayload::Granted { .. }) {
                local.insert(lease_id(&grant.entry));
            }
        }
    }
}

/// `step` with other candidates.
fn with_candidates<'a>(step: &Step<'a>, candidates: &'a [Candidate]) -> Step<'a> {
    Step {
        owner: step.owner,
        group: step.group,
        candidates,
        order: step.order,
        settings: step.settings,
        generation: step.generation,
    }
}

#[async_trait]
impl AdmissionBackend for FailoverAdmission {
    async fn submit(
        &self,
        step: &Step<'_>,
        submit: &Submit<'_>,
    ) -> Result<StepReply<SubmitOutcome>, BackendError> {
        if let Some(reply) = self.on_redis(self.redis.submit(step, submit)).await {
            return reply;
        }
        let share = self.share(step.candidates);
        let reply = self
            .memory
            .submit(&with_candidates(step, &share), submit)
            .await?;
        if matches!(reply.outcome, SubmitOutcome::Granted { .. }) {
            lock(&self.local).insert(lease_id(submit.entry));
        }
        self.note_local(&reply);
        Ok(reply)
    }

    async fn poll(&self, step: &Step<'_>) -> Result<StepReply<Polled>, BackendError> {
        if let Some(reply) = self.on_redis(self.redis.poll(step)).await {
            return reply;
        }
        let share = self.share(step.candidates);
        let reply = self.memory.poll(&with_candidates(step, &share)).await?;
        self.note_local(&reply);
        Ok(reply)
    }

    async fn restore(
        &self,
        step: &Step<'_>,
        restore: &Restore<'_>,
    ) -> Result<StepReply<Restored>, BackendError> {
        if let Some(reply) = self.on_redis(self.redis.restore(step, restore)).await {
            return reply;
        }
        let share = self.share(step.candidates);
        let reply = self
            .memory
            .restore(&with_candidates(step, &share), restore)
            .await?;
        self.note_local(&reply);
        Ok(reply)
    }

    async fn release(
        &self,
        step: &Step<'_>,
        reservation: &Reservation,
        release: &Release,
    ) -> Result<StepReply<SettleReport>, BackendError> {
        let share = self.share(step.candidates);
        let memory_step = with_candidates(step, &share);
        if lock(&self.local).remove(&reservation.id) {
            let reply = self
                .memory
                .release(&memory_step, reservation, release)
                .await?;
            self.note_local(&reply);
            // A restore after the outage may have re-registered it in Redis too: end it there as well.
            if self.try_redis() {
                let _ = self
                    .on_redis(self.redis.release(step, reservation, release))
                    .await;
            }
            return Ok(reply);
        }
        // A reservation restored into memory during an outage is held in both stores: end it in memory
        // too (a no-op where memory never held it).
        if self.memory.holds(reservation) {
            let reply = self
                .memory
                .release(&memory_step, reservation, release)
                .await?;
            self.note_local(&reply);
        }
        match self
            .on_redis(self.redis.release(step, reservation, release))
            .await
        {
            Some(reply) => reply,
            None => {
                // Redis keeps the reservation until its in-flight lease ends.
                Err(BackendError::new(
                    BackendErrorKind::Connection,
                    "Redis does not answer; the reservation ends with its in-flight lease",
                ))
            }
        }
    }

    async fn cancel(
        &self,
        step: &Step<'_>,
        entry: &Entry,
    ) -> Result<StepReply<CancelOutcome>, BackendError> {
        let share = self.share(step.candidates);
        let local = self
            .memory
            .cancel(&with_candidates(step, &share), entry)
            .await?;
        self.note_local(&local);
        match self.on_redis(self.redis.cancel(step, entry)).await {
            Some(Ok(mut reply)) => {
                if reply.outcome == CancelOutcome::Absent {
                    reply.outcome = local.outcome;
                }
                reply.grants.extend(local.grants);
                Ok(reply)
            }
            Some(Err(e)) => Err(e),
            None => Ok(local),
        }
    }

    /// Jobs are durable only in Redis: while it does not answer, submitting and claiming them fails (the
    /// client gets 503 with Retry-After; queued jobs wait in Redis).
    async fn submit_job(
        &self,
        step: &Step<'_>,
        job: &NewJob<'_>,
    ) -> Result<StepReply<SubmitOutcome>, BackendError> {
        self.redis.submit_job(step, job).await
    }

    async fn claim(
        &self,
        step: &Step<'_>,
        claim: &Claim,
    ) -> Result<StepReply<Claimed>, BackendError> {
        self.redis.claim(step, claim).await
    }

    fn start_wakeups(
        &self,
        owner: Arc<str>,
        wake: Arc<dyn Fn(&str) + Send + Sync>,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        self.redis.start_wakeups(owner, wake, shutdown)
    }

    fn now_ms(&self) -> u64 {
        self.redis.now_ms()
    }
}

/// Jobs live in Redis only (see [`FailoverAdmission::submit_job`]).
#[async_trait]
impl JobStore for FailoverAdmission {
    async fn start_job(
        &self,
        id: &JobId,
        entry: &Entry,
        attempts: u32,
    ) -> Result<Option<std::collections::HashMap<String, String>>, BackendError> {
        self.redis.start_job(id, entry, attempts).await
    }

    async fn read_job(
        &self,
        id: &JobId,
        errors: JobErrors<'_>,
        ttl: Duration,
    ) -> Result<Option<JobView>, BackendError> {
        self.redis.read_job(id, errors, ttl).await
    }

    async fn finish_job(
        &self,
        id: &JobId,
        entry: &Entry,
        end: &JobEnd<'_>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.redis.finish_job(id, entry, end, ttl).await
    }

    async fn cancel_job(
        &self,
        id: &JobId,
        error: &str,
        status: u16,
        ttl: Duration,
    ) -> Result<JobCancel, BackendError> {
        self.redis.cancel_job(id, error, status, ttl).await
    }

    async fn renew_job(
        &self,
        id: &JobId,
        entry: &Entry,
        expiry_ms: u64,
    ) -> Result<bool, BackendError> {
        self.redis.renew_job(id, entry, expiry_ms).await
    }

    async fn hand_back_job(&self, id: &JobId, entry: &Entry) -> Result<bool, BackendError> {
        self.redis.hand_back_job(id, entry).await
    }
}
