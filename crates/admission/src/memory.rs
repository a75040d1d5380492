//! Admission in memory for a single instance: the twin of `admit_v2.lua`, line for line, under two locks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use queue_core::{Entry, QueueState, Score};

use crate::jobs::{
    Claim, Claimed, JobCancel, JobEnd, JobErrors, JobGrant, JobId, JobState, JobStore, JobView,
    NewJob,
};
use store::{BackendError, Clock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use usage_tracker::{
    CandidateOrder, Outcome, Reservation, ReserveOutcome, ReserveRequest, SettleReport, UsageState,
};

use crate::lock;
use crate::step::{
    job_lease_id, lease_id, reservation_on, AdmissionBackend, CancelOutcome, Grant, GrantPayload,
    Place, Polled, Release, Restore, Restored, Step, StepReply, Submit, SubmitOutcome, JOB_WAKE,
};

/// Queue and usage state of one process. Locks are taken queue first, then usage, and never held across
/// an await.
pub struct MemoryAdmission {
    queue: Arc<Mutex<QueueState>>,
    usage: Arc<Mutex<UsageState>>,
    clock: Time,
    /// The `:gen` key of each group (taken after the usage lock).
    generations: Mutex<HashMap<String, String>>,
    /// Durable jobs: the `:jobs` and `:jobruns` keys of each group and the job records (taken after the
    /// usage lock, before the generations).
    jobs: Mutex<Jobs>,
    /// Called (with [`JOB_WAKE`] + group) when a job waits at a queue's head for a worker.
    job_wake: Mutex<Option<Wake>>,
}

/// A wake-up callback (the scheduler's).
type Wake = Arc<dyn Fn(&str) + Send + Sync>;

/// The twin of the job keys: per group the jobs hash and the job runs zset, and the records.
#[derive(Debug, Default)]
struct Jobs {
    groups: HashMap<String, GroupJobs>,
    /// Records by (group, job key): fields and expiry (epoch ms).
    records: HashMap<(String, String), (HashMap<String, String>, u64)>,
    /// Submits since the last sweep of expired records.
    since_sweep: u32,
}

/// One group's `:jobs` (member -> (score, attempts)) and `:jobruns` (member -> runner lease expiry).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupJobs {
    /// A live job's member -> its place and the runs started.
    pub jobs: BTreeMap<String, (u64, u32)>,
    /// A running job's member -> its runner's lease expiry (epoch ms).
    pub runs: BTreeMap<String, u64>,
}

impl Jobs {
    fn group(&mut self, group: &str) -> &mut GroupJobs {
        self.groups.entry(group.to_owned()).or_default()
    }

    /// The record of `id`, if it has not expired at `now`.
    fn record(&mut self, id: &JobId, now: u64) -> Option<&mut HashMap<String, String>> {
        let key = (id.group().to_owned(), id.key().simple().to_string());
        if self.records.get(&key).is_some_and(|(_, exp)| *exp <= now) {
            self.records.remove(&key);
        }
        self.records.get_mut(&key).map(|(fields, _)| fields)
    }

    /// `j_finish` of `job_v1.lua`.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        queue: &mut QueueState,
        id: &JobId,
        member: &str,
        now: u64,
        status: u16,
        ok: bool,
        body: &str,
        ttl: Duration,
    ) {
        let key = (id.group().to_owned(), id.key().simple().to_string());
        if let Some((fields, expiry)) = self.records.get_mut(&key) {
            let (kind, other) = if ok {
                ("result", "error")
            } else {
                ("error", "result")
            };
            fields.insert("status".into(), "finished".into());
            fields.insert("finished_ms".into(), now.to_string());
            fields.insert("status_code".into(), status.to_string());
            fields.insert(kind.into(), body.to_owned());
            fields.remove(other);
            *expiry = now + millis(ttl);
        }
        if let Ok(entry) = Entry::from_member(member) {
            queue.remove(id.group(), &entry);
        }
        let g = self.group(id.group());
        g.runs.remove(member);
        g.jobs.remove(member);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
            jobs: Mutex::new(Jobs::default()),
            job_wake: Mutex::new(None),
        }
    }

    /// Tests: the jobs hash and job runs zset of `group` (compared with Redis's keys).
    pub fn group_jobs(&self, group: &str) -> GroupJobs {
        lock(&self.jobs)
            .groups
            .get(group)
            .cloned()
            .unwrap_or_default()
    }

    /// Durable jobs of `group` queued or running, and running (`HLEN` of `:jobs`, `ZCARD` of `:jobruns`).
    pub(crate) fn job_counts(&self, group: &str) -> (u64, u64) {
        lock(&self.jobs)
            .groups
            .get(group)
            .map_or((0, 0), |g| (g.jobs.len() as u64, g.runs.len() as u64))
    }

    /// Job records held (expired ones included until swept).
    pub fn job_records(&self) -> usize {
        lock(&self.jobs).records.len()
    }

    /// Tests: forget everything, as a Redis that restarted empty.
    pub fn lose_state(&self) {
        lock(&self.queue).clear();
        lock(&self.usage).clear();
        lock(&self.generations).clear();
        *lock(&self.jobs) = Jobs::default();
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
    #[allow(clippy::too_many_arguments)]
    fn admit<T>(
        &self,
        step: &Step<'_>,
        queue: &mut QueueState,
        usage: &mut UsageState,
        jobs: &mut Jobs,
        claim: Option<(&Claim, &mut Vec<JobGrant>)>,
        mut cx: Context,
        outcome: T,
        read_depth: bool,
    ) -> Result<StepReply<T>, BackendError> {
        let now = cx.now;
        let mut claimer_alive = false;
        let (mut slots, mut claimed) = match claim {
            Some((claim, out)) => (claim.slots, Some((claim, out))),
            None => (0, None),
        };
        let mut job_waits = false;
        let mut jobs_granted = 0;
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
            let mut payload = None;
            let mut job_attempts = 0;
            if entry.is_job() {
                let meta = jobs.group(step.group).jobs.get(entry.member()).copied();
                let Some((_, attempts)) = meta else {
                    // A job entry whose job is gone (finished meanwhile): drop it.
                    queue.remove(step.group, &entry);
                    continue;
                };
                let Some((claim, _)) = claimed.as_ref().filter(|_| slots > 0) else {
                    // Only a replica with a free job worker takes a job: the queue waits for one here.
                    job_waits = true;
                    break;
                };
                // The run's lease carries this replica: it must be alive in the group from now on.
                if !claimer_alive {
                    Self::heartbeat(step, queue, usage, &mut cx);
                    claimer_alive = true;
                }
                job_attempts = attempts;
                if entry.deadline_passed(now) {
                    payload = Some(GrantPayload::Expired);
                } else if attempts >= claim.max_attempts {
                    payload = Some(GrantPayload::Exhausted);
                }
            }
            let payload = match payload {
                Some(payload) => payload,
                None => {
                    let mut request =
                        reserve_request(&entry, step.settings.inflight_lease, step.order);
                    // A job's run is held by the claiming replica: its lease ends with that replica's
                    // liveness.
                    if entry.is_job() {
                        request.reservation_id = job_lease_id(&entry, step.owner);
                    }
                    match usage.try_reserve(now, step.candidates, &request) {
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
                    }
                }
            };
            queue.remove(step.group, &entry);
            if entry.is_job() {
                let g = jobs.group(step.group);
                if matches!(payload, GrantPayload::Granted { .. }) {
                    job_attempts += 1;
                    g.jobs
                        .insert(entry.member().to_owned(), (head.score.get(), job_attempts));
                }
                if let Some((claim, out)) = claimed.as_mut() {
                    g.runs
                        .insert(entry.member().to_owned(), now + millis(claim.job_lease));
                    out.push(JobGrant {
                        entry,
                        payload,
                        attempts: job_attempts,
                    });
                }
                slots -= 1;
                jobs_granted += 1;
            } else if entry.owner() == step.owner {
                mine.push(Grant { entry, payload });
            } else {
                queue.record_grant(step.group, &entry, payload.encode());
            }
            granted += 1;
        }
        if job_waits && (claimed.is_none() || jobs_granted > 0) {
            let wake = lock(&self.job_wake).clone();
            if let Some(wake) = wake {
                wake(&format!("{JOB_WAKE}{}", step.group));
            }
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
                let mut reply = self.admit(
                    step,
                    &mut queue,
                    &mut usage,
                    &mut lock(&self.jobs),
                    None,
                    cx,
                    queued,
                    true,
                )?;
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
        self.admit(
            step,
            &mut queue,
            &mut usage,
            &mut lock(&self.jobs),
            None,
            cx,
            polled,
            true,
        )
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
        self.admit(
            step,
            &mut queue,
            &mut usage,
            &mut lock(&self.jobs),
            None,
            cx,
            restored,
            true,
        )
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
        self.admit(
            step,
            &mut queue,
            &mut usage,
            &mut lock(&self.jobs),
            None,
            cx,
            report,
            false,
        )
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
        self.admit(
            step,
            &mut queue,
            &mut usage,
            &mut lock(&self.jobs),
            None,
            cx,
            outcome,
            false,
        )
    }

    async fn submit_job(
        &self,
        step: &Step<'_>,
        job: &NewJob<'_>,
    ) -> Result<StepReply<SubmitOutcome>, BackendError> {
        let entry = job.entry;
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        let mut jobs = lock(&self.jobs);
        let mut cx = self.context(step);
        let now = cx.now;
        // The submit step's head check (a job never takes the fast path, but dead head entries go).
        queue.head(step.group, now, &mut Vec::new());
        Self::heartbeat(step, &mut queue, &mut usage, &mut cx);
        let max_depth = step.settings.max_queue_depth;
        let enqueued = match queue.enqueue(step.group, job.priority, entry, max_depth) {
            Err(e) if e.is_queue_full() => {
                queue.reap(step.group, now);
                queue.enqueue(step.group, job.priority, entry, max_depth)
            }
            other => other,
        };
        let enqueued = match enqueued {
            Ok(enqueued) => enqueued,
            Err(e) if e.is_queue_full() => {
                return Ok(StepReply {
                    depth: Some(queue.depth(step.group)),
                    lapsed: cx.lapsed,
                    ..StepReply::bare(SubmitOutcome::Full, cx.generation)
                })
            }
            Err(e) => return Err(e.into()),
        };
        jobs.since_sweep += 1;
        if jobs.since_sweep >= 64 {
            jobs.since_sweep = 0;
            jobs.records.retain(|_, (_, expiry)| *expiry > now);
        }
        let fields = crate::redis::record_fields(job).into_iter().collect();
        jobs.records.insert(
            (step.group.to_owned(), entry.id().simple().to_string()),
            (fields, now + millis(job.ttl)),
        );
        jobs.group(step.group)
            .jobs
            .insert(entry.member().to_owned(), (enqueued.score.get(), 0));
        let meta = entry.meta();
        let queued = SubmitOutcome::Queued {
            position: None,
            not_before_ms: usage.not_before(
                now,
                step.candidates,
                meta.est_tokens,
                meta.prompt_tokens,
            ),
            score: enqueued.score,
        };
        let mut reply = self.admit(
            step, &mut queue, &mut usage, &mut jobs, None, cx, queued, true,
        )?;
        if let SubmitOutcome::Queued { position, .. } = &mut reply.outcome {
            *position = queue.position(step.group, entry);
        }
        Ok(reply)
    }

    async fn claim(
        &self,
        step: &Step<'_>,
        claim: &Claim,
    ) -> Result<StepReply<Claimed>, BackendError> {
        let mut queue = lock(&self.queue);
        let mut usage = lock(&self.usage);
        let mut jobs = lock(&self.jobs);
        let cx = self.context(step);
        let now = cx.now;
        // Runs whose runner's lease lapsed: back at their place (at most 64 a step, in lease order).
        let g = jobs.group(step.group);
        let mut lapsed: Vec<(u64, String)> = g
            .runs
            .iter()
            .filter(|(_, expiry)| **expiry < now)
            .map(|(member, expiry)| (*expiry, member.clone()))
            .collect();
        lapsed.sort();
        lapsed.truncate(64);
        let mut requeued = 0;
        for (_, member) in lapsed {
            g.runs.remove(&member);
            if let (Some((score, _)), Ok(entry)) =
                (g.jobs.get(&member), Entry::from_member(&member))
            {
                queue.put_back(step.group, &entry, Score::from_raw(*score));
                requeued += 1;
            }
        }
        let mut granted = Vec::new();
        let reply = self.admit(
            step,
            &mut queue,
            &mut usage,
            &mut jobs,
            Some((claim, &mut granted)),
            cx,
            requeued,
            false,
        )?;
        Ok(StepReply {
            outcome: Claimed {
                requeued: reply.outcome,
                jobs: granted,
            },
            next_capacity_ms: reply.next_capacity_ms,
            depth: reply.depth,
            grants: reply.grants,
            generation: reply.generation,
            lapsed: reply.lapsed,
        })
    }

    fn start_wakeups(
        &self,
        _owner: Arc<str>,
        wake: Arc<dyn Fn(&str) + Send + Sync>,
        _shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        // One process, one owner: every grant is handed back by the step that made it. Only a job waiting
        // for a worker wakes someone (the job workers).
        *lock(&self.job_wake) = Some(wake);
        None
    }

    fn now_ms(&self) -> u64 {
        match &self.clock {
            Time::Clock(clock) => clock.now_ms(),
            Time::Pinned(now) => now.load(Ordering::SeqCst),
        }
    }
}

#[async_trait]
impl JobStore for MemoryAdmission {
    async fn start_job(
        &self,
        id: &JobId,
        _entry: &Entry,
        attempts: u32,
    ) -> Result<Option<HashMap<String, String>>, BackendError> {
        let now = self.now_ms();
        let mut jobs = lock(&self.jobs);
        let Some(record) = jobs.record(id, now) else {
            return Ok(None);
        };
        if record.get("status").map(String::as_str) == Some("finished") {
            return Ok(None);
        }
        record.insert("started_ms".into(), now.to_string());
        record.insert("attempts".into(), attempts.to_string());
        Ok(Some(record.clone()))
    }

    async fn read_job(
        &self,
        id: &JobId,
        errors: JobErrors<'_>,
        ttl: Duration,
    ) -> Result<Option<JobView>, BackendError> {
        let now = self.now_ms();
        let mut queue = lock(&self.queue);
        let mut jobs = lock(&self.jobs);
        let Some(record) = jobs.record(id, now) else {
            return Ok(None);
        };
        let finished = record.get("status").map(String::as_str) == Some("finished");
        let member = record.get("member").cloned().unwrap_or_default();
        let state = if finished {
            JobState::Finished
        } else {
            let entry = Entry::from_member(&member).ok();
            let queued = entry
                .as_ref()
                .is_some_and(|e| queue.is_queued(id.group(), e));
            let held = jobs.group(id.group()).jobs.contains_key(&member);
            match entry {
                Some(entry) if queued => {
                    if entry.deadline_passed(now) {
                        jobs.finish(
                            &mut queue,
                            id,
                            &member,
                            now,
                            408,
                            false,
                            errors.timeout,
                            ttl,
                        );
                        JobState::Finished
                    } else {
                        JobState::Queued {
                            position: queue.position(id.group(), &entry).unwrap_or(0),
                        }
                    }
                }
                _ if held => JobState::Running,
                _ => {
                    jobs.finish(&mut queue, id, &member, now, 500, false, errors.lost, ttl);
                    JobState::Finished
                }
            }
        };
        let record = jobs.record(id, now).cloned().unwrap_or_default();
        Ok(Some(JobView { state, record }))
    }

    async fn finish_job(
        &self,
        id: &JobId,
        entry: &Entry,
        end: &JobEnd<'_>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let now = self.now_ms();
        let mut queue = lock(&self.queue);
        let mut jobs = lock(&self.jobs);
        let status = jobs
            .record(id, now)
            .map(|r| r.get("status").cloned().unwrap_or_default());
        match status.as_deref() {
            Some("finished") => return Ok(false),
            None => {
                // The record expired: what is left of the job in the group's keys goes.
                queue.remove(id.group(), entry);
                let g = jobs.group(id.group());
                g.runs.remove(entry.member());
                g.jobs.remove(entry.member());
                return Ok(false);
            }
            Some(_) => {}
        }
        jobs.finish(
            &mut queue,
            id,
            entry.member(),
            now,
            end.status,
            end.ok,
            end.body,
            ttl,
        );
        Ok(true)
    }

    async fn cancel_job(
        &self,
        id: &JobId,
        error: &str,
        status: u16,
        ttl: Duration,
    ) -> Result<JobCancel, BackendError> {
        let now = self.now_ms();
        let mut queue = lock(&self.queue);
        let mut jobs = lock(&self.jobs);
        let Some(record) = jobs.record(id, now) else {
            return Ok(JobCancel::Absent);
        };
        if record.get("status").map(String::as_str) == Some("finished") {
            return Ok(JobCancel::Finished);
        }
        let member = record.get("member").cloned().unwrap_or_default();
        let running = jobs.group(id.group()).runs.contains_key(&member);
        jobs.finish(&mut queue, id, &member, now, status, false, error, ttl);
        Ok(JobCancel::Cancelled { running })
    }

    async fn renew_job(
        &self,
        id: &JobId,
        entry: &Entry,
        expiry_ms: u64,
    ) -> Result<bool, BackendError> {
        let mut jobs = lock(&self.jobs);
        match jobs.group(id.group()).runs.get_mut(entry.member()) {
            Some(expiry) => {
                *expiry = expiry_ms;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn hand_back_job(&self, id: &JobId, entry: &Entry) -> Result<bool, BackendError> {
        let woken = {
            let mut queue = lock(&self.queue);
            let mut jobs = lock(&self.jobs);
            let g = jobs.group(id.group());
            if g.runs.remove(entry.member()).is_none() {
                return Ok(false);
            }
            match g.jobs.get_mut(entry.member()) {
                Some((score, attempts)) => {
                    // The run was stopped, not failed: it does not count against the attempt cap.
                    *attempts = attempts.saturating_sub(1);
                    queue.put_back(id.group(), entry, Score::from_raw(*score));
                    true
                }
                None => false,
            }
        };
        if woken {
            let wake = lock(&self.job_wake).clone();
            if let Some(wake) = wake {
                wake(&format!("{JOB_WAKE}{}", id.group()));
            }
        }
        Ok(true)
    }
}
