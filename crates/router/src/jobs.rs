//! Durable jobs (`/queue/request`): submission, reads and cancels by their creator, and this replica's job
//! workers, which take jobs granted in the queue's global order and run them through the walk.
//!
//! A job's record and state live in the store (Redis: under the group's hash tag; see
//! `admission::JobStore`). Its entry waits in the group's queue beside synchronous requests. A replica with
//! free workers runs claim steps (woken by pub/sub when a job waits at a queue's head, and every
//! [`CLAIM_EVERY`] to put back runs whose runner died), runs each granted job with the capacity already
//! reserved, renews the job's runner lease meanwhile, and finishes it with the body the synchronous route
//! would have answered (`result`) or its error.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use admission::{
    AdmissionError, Claim, GrantPayload, JobCancel, JobEnd, JobErrors, JobGrant, JobId, JobState,
    JobStore, NewJob, SubmitOutcome,
};
use queue_core::{Entry, EntryMeta, Priority, JOB_OWNER};
use serde_json::{json, Map, Value};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use usage_tracker::Reservation;

use crate::capacity::Capacity;
use crate::error::RouterError;
use crate::request::{CacheControl, Endpoint, ResponseBody, RouterRequest};
use crate::topology::{JobSettings, Topology};
use crate::walk::Walk;

/// How often a replica with free job workers runs a claim step in every group even without a wake-up: the
/// bound on how late a job whose runner died is put back (after its lease) and on a lost wake-up.
pub const CLAIM_EVERY: Duration = Duration::from_millis(500);

/// How often a long poll (`?wait=`) reads the job again.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Who asks about a job: the hash of the key it presented (never the key), and whether it is the master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobCaller {
    /// A stable, non-secret identity of the caller's key (e.g. its SHA-256 in hex).
    pub identity: String,
    /// The master key (or an open proxy): may read and cancel every job.
    pub admin: bool,
}

/// What a submit answers.
#[derive(Debug, Clone, PartialEq)]
pub struct JobTicket {
    /// The job id.
    pub id: String,
    /// Entries (jobs and synchronous requests) ahead of it in its group's queue.
    pub position: u64,
    /// Seconds until it starts: an estimate (see [`JobReport::eta`]).
    pub eta: f64,
}

/// Where a job is, as a read answers it.
#[derive(Debug, Clone, PartialEq)]
pub enum JobPhase {
    /// Waiting in the queue.
    Queued {
        /// Entries ahead of it.
        position: u64,
    },
    /// A replica runs it.
    Running,
    /// Ended: with the synchronous route's body, or with its error.
    Finished(JobOutcome),
}

/// How a finished job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// The body the synchronous route would have answered.
    Result(Value),
    /// The OpenAI error body and the HTTP status the synchronous route would have answered.
    Error {
        /// The HTTP status.
        status: u16,
        /// `{"error": {...}}`.
        body: Value,
    },
}

/// A job as its creator sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobReport {
    /// The job id.
    pub id: String,
    /// Its model group.
    pub model: String,
    /// Where it is.
    pub phase: JobPhase,
    /// Seconds until a queued job starts: its position over the rate this replica saw jobs of the group
    /// start in the last minute (one a second before it saw any). `None` unless queued.
    pub eta: Option<f64>,
    /// Runs started.
    pub attempts: u32,
    /// Epoch ms of the submission, the last run's start and the end.
    pub created_ms: u64,
    /// See `created_ms`.
    pub started_ms: Option<u64>,
    /// See `created_ms`.
    pub finished_ms: Option<u64>,
}

/// Counters of durable jobs on this replica, for metrics.
#[derive(Debug, Default)]
pub struct JobStats {
    /// Jobs submitted here.
    pub submitted: AtomicU64,
    /// Jobs refused at submission (queue full).
    pub refused: AtomicU64,
    /// Jobs this replica finished, by model group and outcome (`ok`, `error`, `cancelled` is counted
    /// where the cancel was asked).
    finished: Mutex<HashMap<(String, &'static str), u64>>,
    /// Runs started here, and the sum of their waits from submission, in ms.
    pub runs_started: AtomicU64,
    /// See `runs_started`.
    pub wait_ms_total: AtomicU64,
    /// Runs handed back (this replica stopped) and runs re-queued after a runner's lease lapsed.
    pub handed_back: AtomicU64,
    /// See `handed_back`.
    pub requeued: AtomicU64,
}

impl JobStats {
    fn finished(&self, group: &str, outcome: &'static str) {
        *self
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((group.to_owned(), outcome))
            .or_default() += 1;
    }

    /// Jobs finished by (model group, outcome).
    pub fn finished_by_group(&self) -> Vec<((String, &'static str), u64)> {
        let mut all: Vec<_> = self
            .finished
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        all.sort();
        all
    }
}

/// A job a worker of this replica runs.
struct Running {
    id: JobId,
    entry: Entry,
    task: tokio::task::AbortHandle,
}

/// Durable jobs on one replica.
pub(crate) struct Jobs {
    topology: Arc<Topology>,
    walk: Arc<Walk>,
    capacity: Arc<Capacity>,
    store: Arc<dyn JobStore>,
    settings: JobSettings,
    running: Mutex<HashMap<String, Running>>,
    workers: TaskTracker,
    /// Cancelled when this replica stops taking jobs.
    stop: CancellationToken,
    /// A shutdown began waiting for the running jobs (a second one hands them back).
    draining: std::sync::atomic::AtomicBool,
    /// A worker ended: claim again.
    kick: Notify,
    /// A job finished here: long polls on this replica look again at once.
    finished: Notify,
    /// Job starts this replica saw in the last minute, by group (for `eta`).
    starts: Mutex<HashMap<String, VecDeque<Instant>>>,
    stats: Arc<JobStats>,
    claimer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn admission_error(e: AdmissionError) -> RouterError {
    match e {
        AdmissionError::Backend(e) => RouterError::Backend(e),
        AdmissionError::ShuttingDown => RouterError::ShuttingDown,
        other => RouterError::Internal(other.to_string()),
    }
}

impl Jobs {
    pub(crate) fn new(
        topology: Arc<Topology>,
        walk: Arc<Walk>,
        capacity: Arc<Capacity>,
        store: Arc<dyn JobStore>,
    ) -> Arc<Jobs> {
        let settings = topology.policy().queue.jobs;
        Arc::new(Jobs {
            topology,
            walk,
            capacity,
            store,
            settings,
            running: Mutex::new(HashMap::new()),
            workers: TaskTracker::new(),
            stop: CancellationToken::new(),
            draining: std::sync::atomic::AtomicBool::new(false),
            kick: Notify::new(),
            finished: Notify::new(),
            starts: Mutex::new(HashMap::new()),
            stats: Arc::new(JobStats::default()),
            claimer: Mutex::new(None),
        })
    }

    /// Starts this replica's job workers (none with `job_workers: 0`).
    pub(crate) fn start(self: &Arc<Self>) {
        if self.settings.workers == 0 {
            return;
        }
        let jobs = self.clone();
        *lock(&self.claimer) = Some(tokio::spawn(async move { jobs.claim_loop().await }));
    }

    pub(crate) fn stats(&self) -> Arc<JobStats> {
        self.stats.clone()
    }

    /// Jobs running on this replica now.
    pub(crate) fn running(&self) -> usize {
        lock(&self.running).len()
    }

    /// Checks `req` like the synchronous route and enqueues it as a job of `caller`.
    pub(crate) async fn submit(
        &self,
        req: RouterRequest,
        caller: &JobCaller,
    ) -> Result<JobTicket, RouterError> {
        let prepared = self.walk.prepare_job(&req).await?;
        let group: Arc<str> = Arc::from(prepared.group.as_str());
        let id = JobId::new(&group);
        let created = now_ms();
        let deadline_ms = prepared
            .timeout
            .map_or(0, |t| created.saturating_add(millis(t)));
        let entry = Entry::new(
            id.key(),
            JOB_OWNER,
            EntryMeta {
                est_tokens: prepared.est_tokens,
                prompt_tokens: prepared.prompt_tokens,
                deadline_ms,
            },
        )
        .map_err(|e| RouterError::Internal(e.to_string()))?;
        let record = [
            ("caller", caller.identity.clone()),
            ("created_ms", created.to_string()),
            ("deadline_ms", deadline_ms.to_string()),
            ("endpoint", req.endpoint.name().to_owned()),
            ("model", req.model.clone()),
            ("group", group.to_string()),
            ("priority", prepared.priority.get().to_string()),
            ("cache", cache_json(&req.cache).to_string()),
            ("overrides", u8::from(req.overrides_allowed).to_string()),
            ("body", Value::Object(req.body).to_string()),
        ];
        let job = NewJob {
            entry: &entry,
            priority: prepared.priority,
            record: &record,
            ttl: self.settings.ttl + prepared.timeout.unwrap_or_default(),
        };
        let outcome = self
            .capacity
            .scheduler()
            .submit_job(&group, &job)
            .await
            .map_err(admission_error)?;
        match outcome {
            SubmitOutcome::Queued { position, .. } => {
                self.stats.submitted.fetch_add(1, Ordering::Relaxed);
                let position = position.unwrap_or(0);
                Ok(JobTicket {
                    id: id.to_string(),
                    position,
                    eta: self.eta(&group, position),
                })
            }
            SubmitOutcome::Full => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                Err(RouterError::QueueFull {
                    group: group.to_string(),
                    retry_after: Some(
                        self.topology
                            .policy()
                            .queue
                            .polling_interval
                            .max(Duration::from_secs(1)),
                    ),
                })
            }
            SubmitOutcome::Granted { .. } => Err(RouterError::Internal(
                "a job was granted on the fast path".into(),
            )),
        }
    }

    /// The job `id` as `caller` may see it; waits up to `wait` for it to finish.
    pub(crate) async fn read(
        &self,
        id: &str,
        caller: &JobCaller,
        wait: Duration,
    ) -> Result<JobReport, RouterError> {
        let job_id = self.parse(id)?;
        let until = Instant::now() + wait;
        loop {
            let report = self.read_once(&job_id, caller).await?;
            if matches!(report.phase, JobPhase::Finished(_)) || Instant::now() >= until {
                return Ok(report);
            }
            // Jobs finished by this replica wake the poll at once; others are seen within WAIT_POLL.
            let finished = self.finished.notified();
            tokio::select! {
                () = tokio::time::sleep(WAIT_POLL.min(until.saturating_duration_since(Instant::now()))) => {}
                () = finished => {}
                () = self.stop.cancelled() => return Ok(report),
            }
        }
    }

    /// Cancels job `id` of `caller`: a queued job never runs; a running one's result is discarded.
    pub(crate) async fn cancel(
        &self,
        id: &str,
        caller: &JobCaller,
    ) -> Result<JobReport, RouterError> {
        let job_id = self.parse(id)?;
        // The ownership check: another key's job is not found.
        self.read_once(&job_id, caller).await?;
        let cancelled = RouterError::JobCancelled;
        let outcome = self
            .store
            .cancel_job(
                &job_id,
                &cancelled.body().to_string(),
                cancelled.status_code(),
                self.settings.ttl,
            )
            .await
            .map_err(RouterError::Backend)?;
        match outcome {
            JobCancel::Cancelled { .. } => {
                self.stats.finished(job_id.group(), "cancelled");
                self.read_once(&job_id, caller).await
            }
            JobCancel::Finished => Err(RouterError::JobFinished { id: id.to_owned() }),
            JobCancel::Absent => Err(RouterError::JobNotFound { id: id.to_owned() }),
        }
    }

    fn parse(&self, id: &str) -> Result<JobId, RouterError> {
        let shown: String = id.chars().take(200).collect();
        let job_id: JobId = id
            .parse()
            .map_err(|_| RouterError::InvalidJobId { id: shown.clone() })?;
        if self.topology.group(job_id.group()).is_none() {
            return Err(RouterError::JobNotFound { id: shown });
        }
        Ok(job_id)
    }

    async fn read_once(&self, id: &JobId, caller: &JobCaller) -> Result<JobReport, RouterError> {
        let timeout = RouterError::QueueTimeout {
            group: id.group().to_owned(),
            waited: Duration::ZERO,
        };
        let lost = RouterError::Internal(
            "the store lost this job's state (a restart without persistence, or a failover)".into(),
        );
        let (timeout, lost) = (timeout.body().to_string(), lost.body().to_string());
        let errors = JobErrors {
            timeout: &timeout,
            lost: &lost,
        };
        let not_found = || RouterError::JobNotFound { id: id.to_string() };
        let view = self
            .store
            .read_job(id, errors, self.settings.ttl)
            .await
            .map_err(RouterError::Backend)?
            .ok_or_else(not_found)?;
        let record = view.record;
        let owner = record.get("caller").map(String::as_str);
        if !caller.admin && owner != Some(caller.identity.as_str()) {
            return Err(not_found());
        }
        let number = |k: &str| record.get(k).and_then(|v| v.parse::<u64>().ok());
        let phase = match view.state {
            JobState::Queued { position } => JobPhase::Queued { position },
            JobState::Running => JobPhase::Running,
            JobState::Finished => {
                let parse = |k: &str| {
                    record
                        .get(k)
                        .and_then(|v| serde_json::from_str::<Value>(v).ok())
                };
                match (parse("result"), parse("error")) {
                    (Some(result), _) => JobPhase::Finished(JobOutcome::Result(result)),
                    (None, error) => JobPhase::Finished(JobOutcome::Error {
                        status: number("status_code")
                            .and_then(|s| u16::try_from(s).ok())
                            .unwrap_or(500),
                        body: error.unwrap_or_else(|| lost_body(id)),
                    }),
                }
            }
        };
        let eta = match phase {
            JobPhase::Queued { position } => Some(self.eta(id.group(), position)),
            _ => None,
        };
        Ok(JobReport {
            id: id.to_string(),
            model: record.get("model").cloned().unwrap_or_default(),
            phase,
            eta,
            attempts: number("attempts")
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(0),
            created_ms: number("created_ms").unwrap_or(0),
            started_ms: number("started_ms"),
            finished_ms: number("finished_ms"),
        })
    }

    /// Seconds until a job at `position` starts, from the rate jobs of `group` started here lately.
    fn eta(&self, group: &str, position: u64) -> f64 {
        let mut starts = lock(&self.starts);
        let seen = starts.entry(group.to_owned()).or_default();
        let horizon = Duration::from_secs(60);
        while seen.front().is_some_and(|t| t.elapsed() > horizon) {
            seen.pop_front();
        }
        let rate = match seen.front() {
            Some(first) if seen.len() > 1 => {
                seen.len() as f64 / first.elapsed().as_secs_f64().max(1.0)
            }
            _ => 1.0,
        };
        ((position as f64 + 1.0) / rate * 10.0).round() / 10.0
    }

    fn started(&self, group: &str) {
        let mut starts = lock(&self.starts);
        let seen = starts.entry(group.to_owned()).or_default();
        seen.push_back(Instant::now());
        if seen.len() > 10_000 {
            seen.pop_front();
        }
    }

    /// Claims jobs while workers are free: on a wake-up for a group, when a worker ends, and every
    /// [`CLAIM_EVERY`] in every group.
    async fn claim_loop(self: Arc<Self>) {
        let notify = self.capacity.scheduler().job_notify();
        let mut tick = tokio::time::interval(CLAIM_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let all = tokio::select! {
                _ = tick.tick() => true,
                () = self.kick.notified() => true,
                () = notify.notified() => false,
                () = self.stop.cancelled() => return,
            };
            let woken = self.capacity.scheduler().take_job_wakeups();
            let groups: Vec<Arc<str>> = if all {
                self.topology
                    .groups()
                    .map(|g| Arc::from(g.name.as_str()))
                    .collect()
            } else {
                woken
            };
            for group in groups {
                if self.stop.is_cancelled() {
                    return;
                }
                let free = self
                    .settings
                    .workers
                    .saturating_sub(u32::try_from(self.running()).unwrap_or(u32::MAX));
                if free == 0 {
                    break;
                }
                let claim = Claim {
                    slots: free,
                    job_lease: self.settings.lease,
                    max_attempts: self.settings.max_attempts,
                };
                match self.capacity.scheduler().claim_jobs(&group, &claim).await {
                    Ok(granted) => {
                        for (grant, reservation) in granted {
                            self.spawn_run(group.clone(), grant, reservation);
                        }
                    }
                    Err(e) => tracing::debug!(group = %group, "claiming jobs failed: {e}"),
                }
            }
        }
    }

    fn spawn_run(
        self: &Arc<Self>,
        group: Arc<str>,
        grant: JobGrant,
        reservation: Option<Reservation>,
    ) {
        let id = JobId::of_entry(&grant.entry, &group);
        let key = id.to_string();
        let entry = grant.entry.clone();
        let jobs = self.clone();
        let done = key.clone();
        // The map entry is made before the task can end (and remove it).
        let mut running = lock(&self.running);
        let task = self.workers.spawn(async move {
            jobs.run(&group, grant, reservation).await;
            lock(&jobs.running).remove(&done);
            jobs.kick.notify_one();
        });
        running.insert(
            key,
            Running {
                id,
                entry,
                task: task.abort_handle(),
            },
        );
    }

    /// Runs one granted job to its end (or hands it back when this replica stops).
    async fn run(&self, group: &Arc<str>, grant: JobGrant, reservation: Option<Reservation>) {
        let id = JobId::of_entry(&grant.entry, group);
        let entry = &grant.entry;
        let end = match grant.payload {
            GrantPayload::Expired => Err(RouterError::QueueTimeout {
                group: group.to_string(),
                waited: Duration::from_millis(now_ms().saturating_sub(entry.meta().deadline_ms)),
            }),
            GrantPayload::Exhausted => Err(RouterError::JobAttemptsExhausted {
                attempts: grant.attempts,
            }),
            GrantPayload::Reject => Err(RouterError::NoDeploymentAvailable {
                group: group.to_string(),
                retry_after: None,
                reason: "no deployment can ever take this request (tokens above its limits)"
                    .to_owned(),
            }),
            GrantPayload::Granted { .. } => {
                let Some(reservation) = reservation else {
                    self.finish(
                        &id,
                        entry,
                        Err(RouterError::Internal(
                            "the job's grant names an unknown deployment".into(),
                        )),
                    )
                    .await;
                    return;
                };
                self.capacity.adopt(&reservation);
                let record = match self.store.start_job(&id, entry, grant.attempts).await {
                    Ok(Some(record)) => record,
                    Ok(None) => {
                        // Cancelled (or gone) meanwhile.
                        self.capacity.give_back(&reservation).await;
                        let _ = self
                            .store
                            .finish_job(
                                &id,
                                entry,
                                &JobEnd {
                                    status: 499,
                                    ok: false,
                                    body: "{}",
                                },
                                self.settings.ttl,
                            )
                            .await;
                        return;
                    }
                    Err(e) => {
                        // Its runner lease lapses and another claim puts it back.
                        tracing::warn!(job = %id, "starting a job failed: {e}");
                        self.capacity.give_back(&reservation).await;
                        return;
                    }
                };
                self.stats.runs_started.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(job = %id, attempts = grant.attempts, "job run started");
                let created = record
                    .get("created_ms")
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                self.stats
                    .wait_ms_total
                    .fetch_add(now_ms().saturating_sub(created), Ordering::Relaxed);
                self.started(group);
                match request_of(&record, entry) {
                    Err(e) => {
                        self.capacity.give_back(&reservation).await;
                        Err(e)
                    }
                    Ok(req) => {
                        let renewing = self.renew_while_running(&id, entry);
                        let result = tokio::select! {
                            result = self.walk.completion_granted(req, Some(reservation)) => result,
                            () = renewing => Err(RouterError::Internal("the job's runner lease was lost".into())),
                        };
                        match result {
                            Ok(response) => match response.body {
                                ResponseBody::Json(v) => Ok(v),
                                ResponseBody::Stream(_) => Err(RouterError::Internal(
                                    "a job was answered with a stream".into(),
                                )),
                            },
                            Err(e) => Err(e),
                        }
                    }
                }
            }
        };
        if matches!(end, Err(RouterError::ShuttingDown)) {
            self.hand_back(&id, entry).await;
            return;
        }
        self.finish(&id, entry, end).await;
    }

    /// Renews the job's runner lease every third of it; never returns while the store answers (a renewal
    /// that finds the run no longer held keeps going: the job may have been put back while the store was
    /// unreachable, and this run's answer still counts if it comes first).
    async fn renew_while_running(&self, id: &JobId, entry: &Entry) {
        let every = self.settings.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let expiry = now_ms().saturating_add(millis(self.settings.lease));
            if let Err(e) = self.store.renew_job(id, entry, expiry).await {
                tracing::warn!(job = %id, "renewing a job's runner lease failed: {e}");
            }
        }
    }

    async fn finish(&self, id: &JobId, entry: &Entry, end: Result<Value, RouterError>) {
        let (status, ok, body, outcome) = match &end {
            Ok(v) => (200, true, v.to_string(), "ok"),
            Err(e) => (e.status_code(), false, e.body().to_string(), "error"),
        };
        let job_end = JobEnd {
            status,
            ok,
            body: &body,
        };
        tracing::debug!(job = %id, status, "job run ended");
        match self
            .store
            .finish_job(id, entry, &job_end, self.settings.ttl)
            .await
        {
            Ok(true) => {
                self.stats.finished(id.group(), outcome);
                self.finished.notify_waiters();
            }
            Ok(false) => {}
            // The runner lease lapses; the job runs again (at-least-once).
            Err(e) => tracing::warn!(job = %id, "finishing a job failed: {e}"),
        }
    }

    async fn hand_back(&self, id: &JobId, entry: &Entry) {
        match self.store.hand_back_job(id, entry).await {
            Ok(held) => {
                self.stats.handed_back.fetch_add(1, Ordering::Relaxed);
                tracing::info!(job = %id, held, "job handed back at its place in the queue");
            }
            Err(e) => {
                tracing::warn!(job = %id, "handing a job back failed (its runner lease lapses): {e}")
            }
        }
    }

    /// Stops claiming jobs (running ones go on).
    pub(crate) fn stop_claiming(&self) {
        self.stop.cancel();
    }

    /// Stops taking jobs. Running jobs go on; the first call waits for them, a later call (the grace
    /// period ran out) stops the rest and hands them back at their place.
    pub(crate) async fn shutdown(&self) {
        let first = !self.draining.swap(true, Ordering::SeqCst);
        self.stop.cancel();
        let claimer = lock(&self.claimer).take();
        if let Some(claimer) = claimer {
            let _ = claimer.await;
        }
        self.workers.close();
        if first {
            self.workers.wait().await;
            return;
        }
        let left: Vec<Running> = lock(&self.running).drain().map(|(_, r)| r).collect();
        for job in left {
            job.task.abort();
            self.hand_back(&job.id, &job.entry).await;
        }
    }
}

/// A finished job whose record has no error body.
fn lost_body(id: &JobId) -> Value {
    json!({"error": {"message": format!("job {id} ended without an answer"), "type": "server_error", "param": null, "code": null}})
}

/// The cache control as the body's `cache` object.
fn cache_json(c: &CacheControl) -> Value {
    let mut m = Map::new();
    if c.no_cache {
        m.insert("no-cache".into(), Value::Bool(true));
    }
    if c.no_store {
        m.insert("no-store".into(), Value::Bool(true));
    }
    if let Some(t) = c.ttl {
        m.insert("ttl".into(), json!(t.as_secs_f64()));
    }
    if let Some(t) = c.s_maxage {
        m.insert("s-maxage".into(), json!(t.as_secs_f64()));
    }
    Value::Object(m)
}

/// The request a job's record describes, with what is left of its deadline as its timeout.
fn request_of(
    record: &HashMap<String, String>,
    entry: &Entry,
) -> Result<RouterRequest, RouterError> {
    let bad = |what: &str| RouterError::Internal(format!("the job's record has no valid {what}"));
    let endpoint = match record.get("endpoint").map(String::as_str) {
        Some("chat_completions") => Endpoint::ChatCompletions,
        Some("completions") => Endpoint::Completions,
        Some("embeddings") => Endpoint::Embeddings,
        _ => return Err(bad("endpoint")),
    };
    let body = match record.get("body").map(|b| serde_json::from_str::<Value>(b)) {
        Some(Ok(Value::Object(body))) => body,
        _ => return Err(bad("body")),
    };
    let mut req = RouterRequest::new(endpoint, body)?;
    if let Some(model) = record.get("model") {
        req.model.clone_from(model);
    }
    req.priority = record
        .get("priority")
        .and_then(|p| p.parse::<u32>().ok())
        .and_then(|p| Priority::new(p).ok());
    req.cache = match record
        .get("cache")
        .map(|c| serde_json::from_str::<Value>(c))
    {
        Some(Ok(v)) => CacheControl::from_json(&v)?,
        _ => CacheControl::default(),
    };
    req.overrides_allowed = record.get("overrides").map(String::as_str) == Some("1");
    let deadline = entry.meta().deadline_ms;
    if deadline != 0 {
        let left = deadline.saturating_sub(now_ms());
        if left == 0 {
            return Err(RouterError::QueueTimeout {
                group: record.get("group").cloned().unwrap_or_default(),
                waited: Duration::ZERO,
            });
        }
        req.timeout = Some(Duration::from_millis(left));
    }
    Ok(req)
}
