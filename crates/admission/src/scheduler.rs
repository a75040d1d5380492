//! The replica's side of admission: [`Scheduler`] owns this replica's waiters, one poller per group with
//! local waiters, the wake-up subscription, and hands grants to the requests that wait for them.
//!
//! A request asks for capacity with [`Scheduler::acquire`]. One atomic backend step (`submit`) either reserves
//! a deployment at once, when nobody of equal or better priority waits and a deployment has headroom, or
//! enqueues the request. Waiting requests are served by one poller task per group with local waiters: each
//! `poll` step pops entries from the *global* head while capacity exists, records a grant for each entry's
//! owning replica (whichever replica that is, woken by pub/sub) and hands back this replica's grants.
//! A `release` step settles a finished request and runs the same admission loop, so freed capacity goes to
//! the head of the queue with no extra round trip.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use queue_core::{Entry, EntryMeta, Priority, Score};
use store::BackendError;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use usage_tracker::{Candidate, CandidateOrder, Outcome, Reservation, SettleReport};

use crate::error::AdmissionError;
use crate::jobs::{Claim, JobGrant, NewJob};
use crate::lock;
use crate::step::{
    reservation_on, AdmissionBackend, AdmissionSettings, Grant, GrantPayload, Place, Release,
    Restore, Step, StepReply, Submit, SubmitOutcome, JOB_WAKE,
};

/// What one request needs from admission.
#[derive(Debug, Clone)]
pub struct AdmitRequest {
    /// The model group.
    pub group: Arc<str>,
    /// Deployments of the group in the strategy's order of preference, for the fast path.
    pub candidates: Vec<Candidate>,
    /// How the candidates are walked.
    pub order: CandidateOrder,
    /// Tokens to reserve (prompt + expected completion).
    pub est_tokens: u64,
    /// Prompt tokens, checked against `max_input_tokens`.
    pub prompt_tokens: u64,
    /// Its priority.
    pub priority: Priority,
    /// When the request stops wanting service.
    pub deadline: Instant,
    /// Always wait in the queue, even when capacity is free (for `/queue/*` endpoints).
    pub force_queue: bool,
    /// A retry after an upstream failure: when cooldowns or full windows block every deployment it is
    /// refused at once (with when to retry) instead of waiting for them.
    pub retry: bool,
}

/// Candidates of a group in the strategy's order, for admission steps not tied to one request (polls,
/// releases, cancellations).
pub type GroupCandidates = Arc<dyn Fn(&str) -> Option<GroupOrder> + Send + Sync>;

/// A group's candidates and the order mode of its strategy.
pub type GroupOrder = (Arc<[Candidate]>, CandidateOrder);

type Waiter = oneshot::Sender<Result<Reservation, AdmissionError>>;

#[derive(Default)]
struct GroupState {
    /// Waiters by queue member.
    waiters: HashMap<String, Waiting>,
    poller: Option<Arc<Notify>>,
    /// The store generation the last step answered with.
    generation: Option<String>,
    /// When a step last renewed this replica's heartbeat in the group.
    last_heartbeat: Option<Instant>,
    /// A restore step is on its way.
    restoring: bool,
}

/// A local waiter and what it takes to put its entry back.
struct Waiting {
    tx: Waiter,
    /// Shared with the request's [`WaiterGuard`]: one copy of the entry per waiter.
    entry: Arc<Entry>,
    priority: Priority,
    /// Its place, once its submit step answered.
    score: Option<Score>,
}

/// Observability counters of the scheduler.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    /// Requests admitted on the fast path.
    pub fast_grants: AtomicU64,
    /// Requests that waited in the queue and were granted to this replica.
    pub queued_grants: AtomicU64,
    /// Requests that gave up waiting (timeout, disconnect).
    pub queue_timeouts: AtomicU64,
    /// Requests refused because the queue was full or capacity could not return before their deadline.
    pub refused: AtomicU64,
    /// Failed backend steps.
    pub backend_errors: AtomicU64,
    /// Sum of queue wait of requests granted from the queue, in microseconds.
    pub queue_wait_us_total: AtomicU64,
}

/// Admission for one replica: owns its waiters, pollers and wake-up subscription.
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    owner: Arc<str>,
    backend: Arc<dyn AdmissionBackend>,
    settings: AdmissionSettings,
    candidates: GroupCandidates,
    groups: Mutex<HashMap<Arc<str>, GroupState>>,
    /// This replica's in-flight reservations by id (re-registered when the store loses them).
    in_flight: Mutex<HashMap<String, Reservation>>,
    /// Whether the last step reached the store (state changes are logged once).
    store_up: std::sync::atomic::AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shutdown: CancellationToken,
    stats: Arc<SchedulerStats>,
    /// Groups where a job waits for a worker (woken by pub/sub, or by a memory step), and the signal.
    job_wakeups: Mutex<HashSet<Arc<str>>>,
    job_notify: Arc<Notify>,
}

impl Scheduler {
    /// A scheduler for replica `owner` on `backend`.
    pub fn new(
        owner: Arc<str>,
        backend: Arc<dyn AdmissionBackend>,
        settings: AdmissionSettings,
        candidates: GroupCandidates,
    ) -> Scheduler {
        let inner = Arc::new(Inner {
            owner: owner.clone(),
            backend: backend.clone(),
            settings,
            candidates,
            groups: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            store_up: std::sync::atomic::AtomicBool::new(true),
            tasks: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
            stats: Arc::new(SchedulerStats::default()),
            job_wakeups: Mutex::new(HashSet::new()),
            job_notify: Arc::new(Notify::new()),
        });
        let weak = Arc::downgrade(&inner);
        let wake: Arc<dyn Fn(&str) + Send + Sync> = Arc::new(move |group: &str| {
            if let Some(inner) = weak.upgrade() {
                inner.wake(group);
            }
        });
        if let Some(task) = backend.start_wakeups(owner, wake, inner.shutdown.clone()) {
            lock(&inner.tasks).push(task);
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let heartbeat =
                runtime.spawn(heartbeats(Arc::downgrade(&inner), inner.shutdown.clone()));
            lock(&inner.tasks).push(heartbeat);
        }
        Scheduler { inner }
    }

    /// The replica id this scheduler owns queue entries as.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// This replica's in-flight reservations (for lease renewal).
    pub fn held(&self) -> Vec<Reservation> {
        lock(&self.inner.in_flight).values().cloned().collect()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> Arc<SchedulerStats> {
        self.inner.stats.clone()
    }

    /// Reserves capacity for a request in global priority order, waiting in the queue when needed; returns
    /// the reservation and the time spent waiting.
    ///
    /// Dropping the returned future (client gone) cancels the queue entry; a grant that raced with the
    /// cancellation is given back.
    pub async fn acquire(
        &self,
        request: AdmitRequest,
    ) -> Result<(Reservation, Duration), AdmissionError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(AdmissionError::ShuttingDown);
        }
        let started = Instant::now();
        let remaining = request.deadline.saturating_duration_since(started);
        let deadline_ms = inner.backend.now_ms() + remaining.as_millis() as u64;
        let meta = EntryMeta {
            est_tokens: request.est_tokens,
            prompt_tokens: request.prompt_tokens,
            deadline_ms,
        };
        // A version 7 id carries its creation time: /queue/status reads a waiter's age from it.
        let entry = Arc::new(
            Entry::new(uuid::Uuid::now_v7(), &*inner.owner, meta)
                .map_err(|e| AdmissionError::Backend(e.into()))?,
        );
        let (tx, rx) = oneshot::channel();
        let generation = {
            let mut groups = lock(&inner.groups);
            let state = groups.entry(request.group.clone()).or_default();
            state.waiters.insert(
                entry.member().to_owned(),
                Waiting {
                    tx,
                    entry: Arc::clone(&entry),
                    priority: request.priority,
                    score: None,
                },
            );
            state.generation.clone()
        };
        let mut guard = WaiterGuard {
            inner: inner.clone(),
            group: request.group.clone(),
            entry: Some(entry),
            rx,
            armed: true,
        };
        let step = inner.step(
            &request.group,
            &request.candidates,
            request.order,
            generation.as_deref(),
        );
        let Some(entry) = guard.entry.as_ref() else {
            return Err(AdmissionError::ShuttingDown);
        };
        let submit = Submit {
            entry,
            priority: request.priority,
            force_queue: request.force_queue,
        };
        let submitted =
            tokio::time::timeout_at(request.deadline, inner.backend.submit(&step, &submit)).await;
        let reply = match submitted {
            Err(_) => {
                return Err(AdmissionError::QueueTimeout {
                    group: request.group.clone(),
                    waited: started.elapsed(),
                })
            }
            Ok(Err(e)) => {
                inner.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
            Ok(Ok(reply)) => reply,
        };
        let mut reply = reply;
        inner.observe(&request.group, &mut reply);
        match reply.outcome {
            SubmitOutcome::Granted {
                deployment_id,
                window_start_ms,
            } => {
                let reservation = guard.entry.as_ref().and_then(|entry| {
                    reservation_on(&request.candidates, entry, &deployment_id, window_start_ms)
                });
                guard.disarm();
                inner.stats.fast_grants.fetch_add(1, Ordering::Relaxed);
                let reservation = reservation.ok_or_else(|| {
                    BackendError::reply(format!("grant names unknown deployment {deployment_id}"))
                })?;
                inner.hold(&reservation);
                Ok((reservation, Duration::ZERO))
            }
            SubmitOutcome::Full => {
                guard.disarm();
                inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(AdmissionError::QueueFull {
                    group: request.group.clone(),
                    depth: reply.depth.unwrap_or(0),
                })
            }
            SubmitOutcome::Queued {
                not_before_ms,
                score,
                ..
            } => {
                if let Some(entry) = &guard.entry {
                    inner.placed(&request.group, entry, score);
                }
                // Capacity cannot return before the deadline (or, for a retry, is blocked by cooldowns or
                // full windows): refuse now rather than wait only to time out (the guard cancels the entry).
                let now_ms = inner.backend.now_ms();
                let refuse = |t: &u64| *t > deadline_ms || (request.retry && *t > now_ms);
                if let Some(not_before) = not_before_ms.filter(refuse) {
                    inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                    let retry_after = Duration::from_millis(not_before.saturating_sub(now_ms));
                    return Err(AdmissionError::NoCapacityBeforeDeadline {
                        group: request.group.clone(),
                        retry_after,
                    });
                }
                inner.ensure_poller(&request.group);
                let granted = tokio::time::timeout_at(request.deadline, &mut guard.rx).await;
                match granted {
                    Ok(Ok(Ok(reservation))) => {
                        guard.disarm();
                        inner.hold(&reservation);
                        let waited = started.elapsed();
                        inner.stats.queued_grants.fetch_add(1, Ordering::Relaxed);
                        inner
                            .stats
                            .queue_wait_us_total
                            .fetch_add(waited.as_micros() as u64, Ordering::Relaxed);
                        Ok((reservation, waited))
                    }
                    Ok(Ok(Err(e))) => {
                        guard.disarm();
                        Err(e)
                    }
                    Ok(Err(_)) => {
                        guard.disarm();
                        Err(AdmissionError::ShuttingDown)
                    }
                    Err(_) => {
                        inner.stats.queue_timeouts.fetch_add(1, Ordering::Relaxed);
                        // Dropping the guard cancels the entry and gives back a grant that raced with us.
                        drop(guard);
                        Err(AdmissionError::QueueTimeout {
                            group: request.group.clone(),
                            waited: started.elapsed(),
                        })
                    }
                }
            }
        }
    }

    /// Enqueues a durable job with its record (one backend step); answers `Queued` (with its position) or
    /// `Full`.
    pub async fn submit_job(
        &self,
        group: &Arc<str>,
        job: &NewJob<'_>,
    ) -> Result<SubmitOutcome, AdmissionError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(AdmissionError::ShuttingDown);
        }
        let Some((candidates, order)) = (inner.candidates)(group) else {
            return Err(BackendError::reply(format!("job for unknown model group {group}")).into());
        };
        let generation = inner.generation(group);
        let step = inner.step(group, &candidates, order, generation.as_deref());
        let mut reply = match inner.backend.submit_job(&step, job).await {
            Ok(reply) => reply,
            Err(e) => {
                inner.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        inner.observe(group, &mut reply);
        if matches!(reply.outcome, SubmitOutcome::Full) {
            inner.stats.refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(reply.outcome)
    }

    /// A claim step for a replica with `claim.slots` free job workers: the jobs granted to it, each with
    /// its reservation (held by this replica until released) when it got one.
    pub async fn claim_jobs(
        &self,
        group: &Arc<str>,
        claim: &Claim,
    ) -> Result<Vec<(JobGrant, Option<Reservation>)>, AdmissionError> {
        let inner = &self.inner;
        let Some((candidates, order)) = (inner.candidates)(group) else {
            return Ok(Vec::new());
        };
        let generation = inner.generation(group);
        let step = inner.step(group, &candidates, order, generation.as_deref());
        let mut reply = match inner.backend.claim(&step, claim).await {
            Ok(reply) => reply,
            Err(e) => {
                inner.step_failed(group, &e);
                return Err(e.into());
            }
        };
        inner.observe(group, &mut reply);
        let granted = std::mem::take(&mut reply.outcome.jobs);
        Ok(granted
            .into_iter()
            .map(|grant| {
                let reservation = grant
                    .payload
                    .reservation(&candidates, &grant.entry)
                    .map(|r| Reservation {
                        id: crate::step::job_lease_id(&grant.entry, &inner.owner),
                        ..r
                    });
                if let Some(reservation) = &reservation {
                    inner.hold(reservation);
                    inner.stats.queued_grants.fetch_add(1, Ordering::Relaxed);
                }
                (grant, reservation)
            })
            .collect())
    }

    /// Signalled when a job waits for a worker in some group; [`Scheduler::take_job_wakeups`] names them.
    pub fn job_notify(&self) -> Arc<Notify> {
        self.inner.job_notify.clone()
    }

    /// The groups where a job waited for a worker since the last call.
    pub fn take_job_wakeups(&self) -> Vec<Arc<str>> {
        lock(&self.inner.job_wakeups).drain().collect()
    }

    /// Forgets a reservation this replica no longer holds (a job run that was handed back: its
    /// in-flight lease lapses or is given back by the release that follows).
    pub fn forget(&self, reservation: &Reservation) {
        lock(&self.inner.in_flight).remove(&reservation.id);
    }

    /// Settles a request and admits waiting requests into the freed capacity (one backend step).
    pub async fn release(
        &self,
        reservation: &Reservation,
        release: &Release,
    ) -> Result<SettleReport, AdmissionError> {
        let inner = &self.inner;
        let group: Arc<str> = reservation.deployment.group.clone();
        let Some((candidates, order)) = (inner.candidates)(&group) else {
            return Err(
                BackendError::reply(format!("release for unknown model group {group}")).into(),
            );
        };
        lock(&inner.in_flight).remove(&reservation.id);
        let generation = inner.generation(&group);
        let step = inner.step(&group, &candidates, order, generation.as_deref());
        let mut reply = match inner.backend.release(&step, reservation, release).await {
            Ok(reply) => reply,
            Err(e) => {
                inner.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        inner.observe(&group, &mut reply);
        Ok(reply.outcome)
    }

    /// Stops pollers and wake-ups and cancels this replica's queued entries so other replicas proceed.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.shutdown.cancel();
        let tasks: Vec<JoinHandle<()>> = lock(&inner.tasks).drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
        let waiting: Vec<(Arc<str>, Waiting)> = lock(&inner.groups)
            .iter_mut()
            .flat_map(|(group, state)| {
                state
                    .waiters
                    .drain()
                    .map(|(_, waiting)| (group.clone(), waiting))
            })
            .collect();
        for (group, waiting) in waiting {
            inner.cancel_entry(&group, &waiting.entry).await;
            let _ = waiting.tx.send(Err(AdmissionError::ShuttingDown));
        }
    }
}

impl Inner {
    fn step<'a>(
        &'a self,
        group: &'a str,
        candidates: &'a [Candidate],
        order: CandidateOrder,
        generation: Option<&'a str>,
    ) -> Step<'a> {
        Step {
            owner: &self.owner,
            group,
            candidates,
            order,
            settings: &self.settings,
            generation,
        }
    }

    /// Counts a failed step of a background task; logs once per outage, not once per step.
    fn step_failed(&self, group: &str, e: &BackendError) {
        self.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
        if e.is_retryable() {
            if self.store_up.swap(false, Ordering::Relaxed) {
                tracing::warn!(group = %group, "the admission store does not answer (waiting requests keep their place and are put back when it answers): {e}");
            }
        } else {
            tracing::warn!(group = %group, "admission step failed: {e}");
        }
    }

    /// The store generation this replica last saw for `group`.
    fn generation(&self, group: &str) -> Option<String> {
        lock(&self.groups)
            .get(group)
            .and_then(|state| state.generation.clone())
    }

    /// Records a reservation this replica holds until its release.
    fn hold(&self, reservation: &Reservation) {
        lock(&self.in_flight).insert(reservation.id.clone(), reservation.clone());
    }

    /// Records a waiter's place (its submit step answered).
    fn placed(&self, group: &str, entry: &Entry, score: Score) {
        if let Some(waiting) = lock(&self.groups)
            .get_mut(group)
            .and_then(|state| state.waiters.get_mut(entry.member()))
        {
            waiting.score = Some(score);
        }
    }

    /// What every step's reply says besides its outcome: hands the grants to local waiters, and when the
    /// store lost its state (a new generation) or this replica's heartbeat had lapsed, starts a restore.
    fn observe<T>(self: &Arc<Self>, group: &Arc<str>, reply: &mut StepReply<T>) {
        if !self.store_up.swap(true, Ordering::Relaxed) {
            tracing::warn!("the admission store answers again");
        }
        let grants = std::mem::take(&mut reply.grants);
        let restore = {
            let mut groups = lock(&self.groups);
            let state = groups.entry(group.clone()).or_default();
            let store_lost = state
                .generation
                .as_deref()
                .is_some_and(|known| known != reply.generation);
            if state.generation.as_deref() != Some(reply.generation.as_str()) {
                state.generation = Some(reply.generation.clone());
            }
            // A lapse matters only to waiters whose entries were in the queue already.
            let lapsed = reply.lapsed && state.waiters.values().any(|w| w.score.is_some());
            let previous = state.last_heartbeat.replace(Instant::now());
            let start = (store_lost || lapsed) && !state.restoring;
            if start {
                state.restoring = true;
            }
            start.then_some((store_lost, previous))
        };
        self.deliver(group, grants);
        if let Some((store_lost, last_heartbeat)) = restore {
            tracing::warn!(
                group = %group,
                store_lost,
                "admission state lost (store restarted or flushed, or this replica's heartbeat lapsed): restoring waiters and in-flight reservations"
            );
            let inner = self.clone();
            let group = group.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime
                    .spawn(async move { inner.restore(&group, store_lost, last_heartbeat).await });
            }
        }
    }

    /// Puts back this replica's waiters (at their place while `queue_lease` since the last heartbeat has
    /// not passed) and, when the store lost its state, its in-flight reservations.
    async fn restore(self: &Arc<Self>, group: &Arc<str>, store_lost: bool, last: Option<Instant>) {
        let keep_place = last.is_none_or(|t| t.elapsed() <= self.settings.queue_lease);
        let waiters: Vec<(Arc<Entry>, Place)> = lock(&self.groups)
            .get(group)
            .map(|state| {
                state
                    .waiters
                    .values()
                    .filter(|w| !w.tx.is_closed())
                    .filter_map(|w| {
                        let score = w.score?;
                        let place = if keep_place {
                            Place::At(score)
                        } else {
                            Place::Back(w.priority)
                        };
                        Some((Arc::clone(&w.entry), place))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let reservations: Vec<Reservation> = if store_lost {
            lock(&self.in_flight)
                .values()
                .filter(|r| r.deployment.group == *group)
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        let result = match (self.candidates)(group) {
            Some((candidates, order)) => {
                let generation = self.generation(group);
                let step = self.step(group, &candidates, order, generation.as_deref());
                let restore = Restore {
                    waiters: waiters.iter().map(|(e, p)| (&**e, *p)).collect(),
                    reservations: reservations.iter().collect(),
                };
                Some(self.backend.restore(&step, &restore).await)
            }
            None => None,
        };
        if let Some(state) = lock(&self.groups).get_mut(group) {
            state.restoring = false;
        }
        match result {
            Some(Ok(mut reply)) => {
                tracing::info!(
                    group = %group,
                    waiters = reply.outcome.waiters,
                    reservations = reply.outcome.reservations,
                    "restored admission state"
                );
                reply.lapsed = false;
                self.observe(group, &mut reply);
            }
            Some(Err(e)) => {
                self.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(group = %group, "restoring admission state failed (retried at the next step): {e}");
                if let Some(state) = lock(&self.groups).get_mut(group) {
                    // The next step that sees the new generation tries again.
                    if store_lost {
                        state.generation = None;
                    }
                }
            }
            None => {}
        }
    }

    /// Hands grants to local waiters; a grant nobody waits for any more is given back.
    fn deliver(self: &Arc<Self>, group: &Arc<str>, grants: Vec<Grant>) {
        if grants.is_empty() {
            return;
        }
        let candidates = (self.candidates)(group);
        let mut orphans = Vec::new();
        {
            let mut groups = lock(&self.groups);
            let state = groups.entry(group.clone()).or_default();
            for Grant { entry, payload } in grants {
                let waiter = state.waiters.remove(entry.member()).map(|w| w.tx);
                let reservation = candidates
                    .as_ref()
                    .and_then(|(candidates, _)| payload.reservation(candidates, &entry));
                match (waiter, payload, reservation) {
                    (Some(waiter), GrantPayload::Reject, _) => {
                        let _ = waiter.send(Err(AdmissionError::NeverFits {
                            group: group.clone(),
                        }));
                    }
                    (Some(waiter), _, Some(reservation)) => {
                        if let Err(Ok(reservation)) = waiter.send(Ok(reservation)) {
                            orphans.push(reservation);
                        }
                    }
                    (None, _, Some(reservation)) => orphans.push(reservation),
                    (None, GrantPayload::Reject, None) => {}
                    (waiter, payload, None) => {
                        tracing::warn!(group = %group, "grant {payload:?} names an unknown deployment");
                        if let Some(waiter) = waiter {
                            let _ = waiter.send(Err(AdmissionError::Backend(BackendError::reply(
                                "grant names an unknown deployment",
                            ))));
                        }
                    }
                }
            }
        }
        for reservation in orphans {
            self.spawn_give_back(reservation);
        }
    }

    /// Gives back a reservation whose request is gone (it never reached the upstream).
    fn spawn_give_back(self: &Arc<Self>, reservation: Reservation) {
        let inner = self.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let group = reservation.deployment.group.clone();
            let Some((candidates, order)) = (inner.candidates)(&group) else {
                return;
            };
            let release = Release {
                sent: false,
                outcome: Outcome::Cancelled,
                actual_tokens: None,
                latency: None,
            };
            let generation = inner.generation(&group);
            let step = inner.step(&group, &candidates, order, generation.as_deref());
            match inner.backend.release(&step, &reservation, &release).await {
                Ok(mut reply) => inner.observe(&group, &mut reply),
                Err(e) => {
                    inner.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group = %group, "giving back an unused grant failed (its lease expires): {e}");
                }
            }
        });
    }

    /// Removes a queue entry, or takes back its grant if it was granted concurrently.
    async fn cancel_entry(self: &Arc<Self>, group: &Arc<str>, entry: &Entry) {
        let Some((candidates, order)) = (self.candidates)(group) else {
            return;
        };
        let generation = self.generation(group);
        let step = self.step(group, &candidates, order, generation.as_deref());
        match self.backend.cancel(&step, entry).await {
            Ok(mut reply) => self.observe(group, &mut reply),
            Err(e) => {
                self.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(group = %group, "cancelling a queue entry failed (the queue lease or a later grant cleans it up): {e}");
            }
        }
    }

    fn wake(&self, group: &str) {
        if let Some(job_group) = group.strip_prefix(JOB_WAKE) {
            lock(&self.job_wakeups).insert(Arc::from(job_group));
            self.job_notify.notify_one();
            return;
        }
        if let Some(notify) = lock(&self.groups)
            .get(group)
            .and_then(|state| state.poller.clone())
        {
            notify.notify_one();
        }
    }

    fn ensure_poller(self: &Arc<Self>, group: &Arc<str>) {
        let notify = {
            let mut groups = lock(&self.groups);
            let state = groups.entry(group.clone()).or_default();
            // A running poller needs no nudge: the submit step that queued this request already admitted
            // what capacity allowed.
            if state.poller.is_some() {
                return;
            }
            let notify = Arc::new(Notify::new());
            state.poller = Some(notify.clone());
            notify
        };
        let inner = self.clone();
        let group = group.clone();
        let task = tokio::spawn(async move { inner.run_poller(group, notify).await });
        let mut tasks = lock(&self.tasks);
        tasks.retain(|task| !task.is_finished());
        tasks.push(task);
    }

    /// One poller per group with local waiters: admission steps until no local waiter is left. Its Redis
    /// load is one step per polling interval or event, whatever the number of waiters.
    async fn run_poller(self: Arc<Self>, group: Arc<str>, notify: Arc<Notify>) {
        loop {
            // The poll is also this replica's heartbeat in the group.
            let mut sleep_for = self.settings.polling_interval.min(self.settings.heartbeat);
            if let Some((candidates, order)) = (self.candidates)(&group) {
                let generation = self.generation(&group);
                let step = self.step(&group, &candidates, order, generation.as_deref());
                match self.backend.poll(&step).await {
                    Ok(mut reply) => {
                        if let Some(next) = reply.next_capacity_ms {
                            let until = next.saturating_sub(self.backend.now_ms()).max(1);
                            sleep_for = sleep_for.min(Duration::from_millis(until));
                        }
                        self.observe(&group, &mut reply);
                    }
                    Err(e) => self.step_failed(&group, &e),
                }
            }
            {
                let mut groups = lock(&self.groups);
                let state = groups.entry(group.clone()).or_default();
                state.waiters.retain(|_, waiting| !waiting.tx.is_closed());
                if state.waiters.is_empty() {
                    state.poller = None;
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(sleep_for) => {}
                _ = notify.notified() => {}
                _ = self.shutdown.cancelled() => return,
            }
        }
    }
}

/// Removes a waiter that gives up (timeout, dropped future) and cancels its queue entry; a grant that
/// reached the waiter's channel but was never read is given back.
struct WaiterGuard {
    inner: Arc<Inner>,
    group: Arc<str>,
    /// `None` only once the drop handed it to the cancelling task.
    entry: Option<Arc<Entry>>,
    rx: oneshot::Receiver<Result<Reservation, AdmissionError>>,
    armed: bool,
}

impl WaiterGuard {
    fn forget_waiter(&self) {
        if let (Some(state), Some(entry)) =
            (lock(&self.inner.groups).get_mut(&self.group), &self.entry)
        {
            drop(state.waiters.remove(entry.member()));
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
        self.forget_waiter();
    }
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.forget_waiter();
        self.rx.close();
        if let Ok(Ok(reservation)) = self.rx.try_recv() {
            self.inner.spawn_give_back(reservation);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(entry) = self.entry.take() else {
            return;
        };
        let inner = self.inner.clone();
        let group = self.group.clone();
        runtime.spawn(async move { inner.cancel_entry(&group, &entry).await });
    }
}

/// This replica's heartbeat where it has requests in flight but no poller (a poller's steps are the
/// heartbeat where it has waiters): a poll step per group every `heartbeat`. It keeps the replica alive in
/// the group and notices at once when the store lost its state, so the in-flight reservations are
/// re-registered within the restore pause.
async fn heartbeats(inner: std::sync::Weak<Inner>, shutdown: CancellationToken) {
    loop {
        let Some(period) = inner.upgrade().map(|i| i.settings.heartbeat) else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut groups: Vec<Arc<str>> = lock(&inner.in_flight)
            .values()
            .map(|r| r.deployment.group.clone())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        groups.retain(|g| {
            lock(&inner.groups)
                .get(g)
                .is_none_or(|state| state.poller.is_none())
        });
        for group in groups {
            let Some((candidates, order)) = (inner.candidates)(&group) else {
                continue;
            };
            let generation = inner.generation(&group);
            let step = inner.step(&group, &candidates, order, generation.as_deref());
            match inner.backend.poll(&step).await {
                Ok(mut reply) => inner.observe(&group, &mut reply),
                Err(e) => inner.step_failed(&group, &e),
            }
        }
    }
}
