//! Priority admission: the fast path, the per-group pollers, grants, cancellation and release.
//!
//! A request asks for capacity with [`Scheduler::acquire`]. One atomic backend step (`submit`) either reserves
//! a deployment at once, when nobody of equal or better priority waits and a deployment has headroom, or
//! enqueues the request. Waiting requests are served by one poller task per group with local waiters: each
//! `poll` step pops entries from the *global* head while capacity exists, records a grant for each entry's
//! owning replica (whichever replica that is, woken by pub/sub) and hands back this replica's grants.
//! A `release` step settles a finished request and runs the same admission loop, so freed capacity goes to
//! the head of the queue with no extra round trip.

mod memory;
mod redis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use queue_core::Priority;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use usage_tracker::{Candidate, CandidateOrder, LatencySample, Outcome, Reservation, SettleReport};

pub(crate) use self::memory::MemoryAdmission;
pub(crate) use self::redis::RedisAdmission;

/// Tuning of the scheduler, from the router settings.
#[derive(Debug, Clone)]
pub(crate) struct SchedulerSettings {
    /// Longest a poller sleeps between admission steps while it has waiters.
    pub(crate) polling_interval: Duration,
    /// How long this replica's queue entries live without a heartbeat.
    pub(crate) owner_lease: Duration,
    /// In-flight lease of a reservation granted from the queue.
    pub(crate) reservation_lease: Duration,
    /// Most entries waiting per group (0 = unbounded).
    pub(crate) max_queue_depth: u64,
    /// Most grants one admission step hands out.
    pub(crate) max_grants_per_step: u32,
}

/// What one request needs from admission.
#[derive(Debug, Clone)]
pub(crate) struct AdmitRequest {
    pub(crate) group: Arc<str>,
    /// Deployments of the group in the strategy's order of preference, for the fast path.
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) order: CandidateOrder,
    pub(crate) est_tokens: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) priority: Priority,
    /// When the request stops wanting service.
    pub(crate) deadline: Instant,
    /// Always wait in the queue, even when capacity is free (for `/queue/*` endpoints).
    pub(crate) force_queue: bool,
    /// In-flight lease of a fast-path reservation.
    pub(crate) lease: Duration,
    /// A retry after an upstream failure: when cooldowns or full windows block every deployment it is
    /// refused at once (with when to retry) instead of waiting for them.
    pub(crate) retry: bool,
}

/// A finished (or abandoned) request's settlement.
#[derive(Debug, Clone)]
pub(crate) struct Release {
    /// Whether the request reached the upstream; one that never did gives its capacity back whole
    /// (request count, tokens and in-flight slot).
    pub(crate) sent: bool,
    pub(crate) outcome: Outcome,
    /// Tokens the upstream reported; `None` keeps the estimate.
    pub(crate) actual_tokens: Option<u64>,
    pub(crate) latency: Option<LatencySample>,
}

/// Candidates of a group in the strategy's order, for admission steps not tied to one request (polls,
/// releases, cancellations).
pub(crate) type GroupCandidates = Arc<dyn Fn(&str) -> Option<GroupOrder> + Send + Sync>;

/// A group's candidates and the order mode of its strategy.
pub(crate) type GroupOrder = (Arc<[Candidate]>, CandidateOrder);

/// Why admission failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdmissionError {
    #[error("the queue of model group `{group}` is full ({depth} requests waiting)")]
    QueueFull { group: Arc<str>, depth: u64 },
    #[error("request timed out after waiting {waited:?} in the queue of model group `{group}`")]
    QueueTimeout { group: Arc<str>, waited: Duration },
    #[error("no deployment of model group `{group}` can ever serve this request (its prompt or token estimate exceeds every deployment's limits)")]
    NeverFits { group: Arc<str> },
    #[error("no deployment of model group `{group}` has capacity before the request's deadline")]
    NoCapacityBeforeDeadline {
        group: Arc<str>,
        retry_after: Duration,
    },
    #[error("the router is shutting down")]
    ShuttingDown,
    #[error("admission backend: {0}")]
    Backend(#[from] BackendError),
}

/// A failed backend step.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackendError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Redis(String),
    #[error("unexpected reply: {0}")]
    Reply(String),
}

/// What the backend hands back for one queue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GrantPayload {
    /// Capacity reserved on a deployment in the window starting at `window_start_ms`.
    Granted {
        deployment_id: String,
        window_start_ms: u64,
    },
    /// No deployment of the group can ever serve the entry.
    Reject,
}

/// Status of one backend step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StepStatus {
    /// Fast path: reserved at once.
    Granted(GrantPayload),
    Queued {
        position: Option<u64>,
        /// Epoch ms before which no deployment can take this request (cooldowns, full windows).
        not_before_ms: Option<u64>,
    },
    Full,
    Polled,
    Released(SettleReport),
    /// `true` when the entry was still waiting or its grant was taken back.
    Cancelled(bool),
}

/// Reply of one atomic backend step.
#[derive(Debug, Clone)]
pub(crate) struct StepReply {
    pub(crate) status: StepStatus,
    /// Epoch ms when capacity may return for the head of the queue.
    pub(crate) next_capacity_ms: Option<u64>,
    pub(crate) depth: u64,
    /// This replica's grants: (member, payload).
    pub(crate) grants: Vec<(String, GrantPayload)>,
}

/// One atomic admission step, implemented by Redis (one Lua script) and in memory (one lock).
#[async_trait]
pub(crate) trait AdmissionBackend: Send + Sync + 'static {
    async fn submit(
        &self,
        step: &Step<'_>,
        member: &str,
        priority: Priority,
        force_queue: bool,
        lease: Duration,
    ) -> Result<StepReply, BackendError>;
    async fn poll(&self, step: &Step<'_>) -> Result<StepReply, BackendError>;
    async fn release(
        &self,
        step: &Step<'_>,
        reservation: &Reservation,
        release: &Release,
    ) -> Result<StepReply, BackendError>;
    async fn cancel(&self, step: &Step<'_>, member: &str) -> Result<StepReply, BackendError>;
    /// Starts delivering wake-ups for this owner: `wake(group)` is called when another replica granted
    /// capacity to one of our entries. Memory needs none.
    fn start_wakeups(
        &self,
        owner: Arc<str>,
        wake: Arc<dyn Fn(&str) + Send + Sync>,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>>;
    /// Epoch milliseconds on the backend's clock.
    fn now_ms(&self) -> u64;
}

/// The group-wide arguments of every step.
#[derive(Debug)]
pub(crate) struct Step<'a> {
    pub(crate) owner: &'a str,
    pub(crate) group: &'a str,
    pub(crate) candidates: &'a [Candidate],
    pub(crate) order: CandidateOrder,
    pub(crate) settings: &'a SchedulerSettings,
}

/// Queue entry member: `<id>|<owner>|<est>|<prompt>|<deadline_ms>` (queue-core's encoding).
fn encode_member(id: &str, owner: &str, est: u64, prompt: u64, deadline_ms: u64) -> String {
    format!("{id}|{owner}|{est}|{prompt}|{deadline_ms}")
}

fn member_field(member: &str, index: usize) -> &str {
    member.split('|').nth(index).unwrap_or("")
}

/// `<deployment_id>|<window_start_ms>` or `reject`.
fn parse_payload(payload: &str) -> Result<GrantPayload, BackendError> {
    if payload == "reject" {
        return Ok(GrantPayload::Reject);
    }
    let (deployment_id, window) = payload
        .rsplit_once('|')
        .ok_or_else(|| BackendError::Reply(format!("bad grant payload {payload}")))?;
    let window_start_ms = window
        .parse()
        .map_err(|_| BackendError::Reply(format!("bad grant window {payload}")))?;
    Ok(GrantPayload::Granted {
        deployment_id: deployment_id.to_owned(),
        window_start_ms,
    })
}

/// The reservation a grant stands for.
fn reservation_for(
    candidates: &[Candidate],
    id: &str,
    deployment_id: &str,
    window_start_ms: u64,
    est_tokens: u64,
) -> Option<Reservation> {
    let index = candidates
        .iter()
        .position(|c| &*c.deployment.id == deployment_id)?;
    Some(Reservation {
        id: id.to_owned(),
        deployment: candidates[index].deployment.clone(),
        window_start_ms,
        est_tokens,
        candidate_index: index,
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Waiter = oneshot::Sender<Result<Reservation, AdmissionError>>;

#[derive(Default)]
struct GroupState {
    waiters: HashMap<String, Waiter>,
    poller: Option<Arc<Notify>>,
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
pub(crate) struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    owner: Arc<str>,
    backend: Arc<dyn AdmissionBackend>,
    settings: SchedulerSettings,
    candidates: GroupCandidates,
    groups: Mutex<HashMap<Arc<str>, GroupState>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    shutdown: CancellationToken,
    stats: Arc<SchedulerStats>,
}

impl Scheduler {
    /// A scheduler for replica `owner` on `backend`.
    pub(crate) fn new(
        owner: Arc<str>,
        backend: Arc<dyn AdmissionBackend>,
        settings: SchedulerSettings,
        candidates: GroupCandidates,
    ) -> Scheduler {
        let inner = Arc::new(Inner {
            owner: owner.clone(),
            backend: backend.clone(),
            settings,
            candidates,
            groups: Mutex::new(HashMap::new()),
            tasks: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
            stats: Arc::new(SchedulerStats::default()),
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
        Scheduler { inner }
    }

    /// The replica id this scheduler owns queue entries as.
    pub(crate) fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Counters for metrics.
    pub(crate) fn stats(&self) -> Arc<SchedulerStats> {
        self.inner.stats.clone()
    }

    /// Reserves capacity for a request in global priority order, waiting in the queue when needed; returns
    /// the reservation and the time spent waiting.
    ///
    /// Dropping the returned future (client gone) cancels the queue entry; a grant that raced with the
    /// cancellation is given back.
    pub(crate) async fn acquire(
        &self,
        request: AdmitRequest,
    ) -> Result<(Reservation, Duration), AdmissionError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(AdmissionError::ShuttingDown);
        }
        let started = Instant::now();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let remaining = request.deadline.saturating_duration_since(started);
        let deadline_ms = inner.backend.now_ms() + remaining.as_millis() as u64;
        let member = encode_member(
            &id,
            &inner.owner,
            request.est_tokens,
            request.prompt_tokens,
            deadline_ms,
        );
        let (tx, rx) = oneshot::channel();
        lock(&inner.groups)
            .entry(request.group.clone())
            .or_default()
            .waiters
            .insert(member.clone(), tx);
        let mut guard = WaiterGuard {
            inner: inner.clone(),
            group: request.group.clone(),
            member,
            rx,
            armed: true,
        };
        let step = inner.step(&request.group, &request.candidates, request.order);
        let submitted = tokio::time::timeout_at(
            request.deadline,
            inner.backend.submit(
                &step,
                &guard.member,
                request.priority,
                request.force_queue,
                request.lease,
            ),
        )
        .await;
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
        inner.deliver(&request.group, reply.grants);
        match reply.status {
            StepStatus::Granted(GrantPayload::Granted {
                deployment_id,
                window_start_ms,
            }) => {
                guard.disarm();
                inner.stats.fast_grants.fetch_add(1, Ordering::Relaxed);
                let reservation = reservation_for(
                    &request.candidates,
                    &id,
                    &deployment_id,
                    window_start_ms,
                    request.est_tokens,
                )
                .ok_or_else(|| {
                    BackendError::Reply(format!("grant names unknown deployment {deployment_id}"))
                })?;
                Ok((reservation, Duration::ZERO))
            }
            StepStatus::Full => {
                guard.disarm();
                inner.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(AdmissionError::QueueFull {
                    group: request.group.clone(),
                    depth: reply.depth,
                })
            }
            StepStatus::Queued { not_before_ms, .. } => {
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
            other => Err(BackendError::Reply(format!("unexpected submit status {other:?}")).into()),
        }
    }

    /// Settles a request and admits waiting requests into the freed capacity (one backend step).
    pub(crate) async fn release(
        &self,
        reservation: &Reservation,
        release: &Release,
    ) -> Result<SettleReport, AdmissionError> {
        let inner = &self.inner;
        let group: Arc<str> = reservation.deployment.group.clone();
        let Some((candidates, order)) = (inner.candidates)(&group) else {
            return Err(
                BackendError::Reply(format!("release for unknown model group {group}")).into(),
            );
        };
        let step = inner.step(&group, &candidates, order);
        let reply = match inner.backend.release(&step, reservation, release).await {
            Ok(reply) => reply,
            Err(e) => {
                inner.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        inner.deliver(&group, reply.grants);
        match reply.status {
            StepStatus::Released(report) => Ok(report),
            other => {
                Err(BackendError::Reply(format!("unexpected release status {other:?}")).into())
            }
        }
    }

    /// Stops pollers and wake-ups and cancels this replica's queued entries so other replicas proceed.
    pub(crate) async fn shutdown(&self) {
        let inner = &self.inner;
        inner.shutdown.cancel();
        let tasks: Vec<JoinHandle<()>> = lock(&inner.tasks).drain(..).collect();
        for task in tasks {
            let _ = task.await;
        }
        let waiting: Vec<(Arc<str>, String, Waiter)> = lock(&inner.groups)
            .iter_mut()
            .flat_map(|(group, state)| {
                state
                    .waiters
                    .drain()
                    .map(|(member, waiter)| (group.clone(), member, waiter))
            })
            .collect();
        for (group, member, waiter) in waiting {
            inner.cancel_entry(&group, &member).await;
            let _ = waiter.send(Err(AdmissionError::ShuttingDown));
        }
    }
}

impl Inner {
    fn step<'a>(
        &'a self,
        group: &'a str,
        candidates: &'a [Candidate],
        order: CandidateOrder,
    ) -> Step<'a> {
        Step {
            owner: &self.owner,
            group,
            candidates,
            order,
            settings: &self.settings,
        }
    }

    /// Hands grants to local waiters; a grant nobody waits for any more is given back.
    fn deliver(self: &Arc<Self>, group: &Arc<str>, grants: Vec<(String, GrantPayload)>) {
        if grants.is_empty() {
            return;
        }
        let candidates = (self.candidates)(group);
        let mut orphans = Vec::new();
        {
            let mut groups = lock(&self.groups);
            let state = groups.entry(group.clone()).or_default();
            for (member, payload) in grants {
                let waiter = state.waiters.remove(&member);
                let reservation = match (&payload, &candidates) {
                    (
                        GrantPayload::Granted {
                            deployment_id,
                            window_start_ms,
                        },
                        Some((candidates, _)),
                    ) => reservation_for(
                        candidates,
                        member_field(&member, 0),
                        deployment_id,
                        *window_start_ms,
                        member_field(&member, 2).parse().unwrap_or(0),
                    ),
                    _ => None,
                };
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
                            let _ = waiter.send(Err(AdmissionError::Backend(BackendError::Reply(
                                "grant names an unknown deployment".into(),
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
            let step = inner.step(&group, &candidates, order);
            match inner.backend.release(&step, &reservation, &release).await {
                Ok(reply) => inner.deliver(&group, reply.grants),
                Err(e) => {
                    inner.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group = %group, "giving back an unused grant failed (its lease expires): {e}");
                }
            }
        });
    }

    /// Removes a queue entry, or takes back its grant if it was granted concurrently.
    async fn cancel_entry(self: &Arc<Self>, group: &Arc<str>, member: &str) {
        let Some((candidates, order)) = (self.candidates)(group) else {
            return;
        };
        let step = self.step(group, &candidates, order);
        match self.backend.cancel(&step, member).await {
            Ok(reply) => self.deliver(group, reply.grants),
            Err(e) => {
                self.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(group = %group, "cancelling a queue entry failed (the owner lease or a later grant cleans it up): {e}");
            }
        }
    }

    fn wake(&self, group: &str) {
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
            let mut sleep_for = self.settings.polling_interval;
            if let Some((candidates, order)) = (self.candidates)(&group) {
                let step = self.step(&group, &candidates, order);
                match self.backend.poll(&step).await {
                    Ok(reply) => {
                        if let Some(next) = reply.next_capacity_ms {
                            let until = next.saturating_sub(self.backend.now_ms()).max(1);
                            sleep_for = sleep_for.min(Duration::from_millis(until));
                        }
                        self.deliver(&group, reply.grants);
                    }
                    Err(e) => {
                        self.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(group = %group, "admission step failed: {e}");
                    }
                }
            }
            {
                let mut groups = lock(&self.groups);
                let state = groups.entry(group.clone()).or_default();
                state.waiters.retain(|_, waiter| !waiter.is_closed());
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
    member: String,
    rx: oneshot::Receiver<Result<Reservation, AdmissionError>>,
    armed: bool,
}

impl WaiterGuard {
    fn disarm(&mut self) {
        self.armed = false;
        if let Some(state) = lock(&self.inner.groups).get_mut(&self.group) {
            state.waiters.remove(&self.member);
        }
    }
}

impl Drop for WaiterGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        drop(
            lock(&self.inner.groups)
                .get_mut(&self.group)
                .and_then(|state| state.waiters.remove(&self.member)),
        );
        self.rx.close();
        if let Ok(Ok(reservation)) = self.rx.try_recv() {
            self.inner.spawn_give_back(reservation);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let inner = self.inner.clone();
        let group = self.group.clone();
        let member = std::mem::take(&mut self.member);
        runtime.spawn(async move { inner.cancel_entry(&group, &member).await });
    }
}
