//! The twin property test: random sequences of admission steps from several replicas run on the memory twin
//! and on a real redis-server, with one pinned clock; every reply and the queue and usage state left after
//! every step must be the same.
//!
//! Time only moves by `Advance` steps, so replica liveness (400 ms), in-flight leases (600 ms), deadlines and
//! window rolls (1 s windows) all happen, deterministically. The clock starts at a window start and moves at
//! most 2.9 s, so no usage hash outlives its three windows on one twin and not on the other (Redis expires
//! keys on its own wall clock, which the pinned clock runs ahead of). Cooldowns are not stepped here: Redis
//! expires them on its wall clock too (their twin is usage-tracker's).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use admission::{
    AdmissionBackend, AdmissionSettings, CancelOutcome, Claim, Claimed, Grant, GrantPayload,
    JobEnd, JobErrors, JobId, JobStore, MemoryAdmission, NewJob, Place, Polled, QueueStatus,
    RedisAdmission, Release, Restore, Restored, Step, StepReply, Submit, SubmitOutcome,
    STATUS_BANDS,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use queue_core::{Entry, EntryMeta, Priority, QueueSnapshot, QueueState, Score, JOB_OWNER};
use store::{BackendError, Clock, Keyspace, RedisConnection};
use testkit::RedisServer;
use usage_tracker::{
    Candidate, CandidateOrder, DeploymentRef, LatencySample, Limits, Outcome, Reservation,
    RollingSnapshot, SettleReport, UsageSnapshot, UsageState, WindowSnapshot,
};

const GROUP: &str = "twin {g}/ü";
const OWNERS: [&str; 3] = ["replica-a", "replica-b", "replica-c"];
const PRIORITIES: [u32; 4] = [0, 1, 5, 1 << 20];
const WINDOW_MS: u64 = 1000;
const MAX_ADVANCE_MS: u64 = 2900;
const LATENCY_ALPHA: f64 = 0.2;

fn settings() -> AdmissionSettings {
    AdmissionSettings {
        polling_interval: Duration::from_millis(30),
        queue_lease: Duration::from_millis(1000),
        heartbeat: Duration::from_millis(100),
        inflight_lease: Duration::from_millis(600),
        max_queue_depth: 6,
        max_grants_per_step: 3,
    }
}

/// Limits of the group's deployments, per case.
fn limits() -> impl Strategy<Value = Vec<Limits>> {
    let one = (
        proptest::option::weighted(0.7, 0..5_u64),
        proptest::option::weighted(0.5, 1000..6000_u64),
        proptest::option::weighted(0.7, 0..3_u32),
        proptest::option::weighted(0.3, 200..3000_u64),
        0..2_u32,
    )
        .prop_map(|(rpm, tpm, max_parallel, max_input_tokens, tier)| Limits {
            rpm,
            tpm,
            max_parallel,
            max_input_tokens,
            tier,
        });
    proptest::collection::vec(one, 1..4)
}

fn order() -> impl Strategy<Value = CandidateOrder> {
    prop_oneof![
        Just(CandidateOrder::AsGiven),
        Just(CandidateOrder::LowestTpm),
        Just(CandidateOrder::FewestInFlight),
    ]
}

#[derive(Debug, Clone)]
enum Deadline {
    None,
    Past,
    In(u64),
}

#[derive(Debug, Clone)]
enum Op {
    Submit {
        owner: usize,
        priority: usize,
        est: u64,
        prompt: u64,
        deadline: Deadline,
        force: bool,
    },
    Poll(usize),
    Release {
        owner: usize,
        pick: usize,
        sent: bool,
        outcome: u8,
        actual: Option<u64>,
        latency_ms: Option<u64>,
    },
    Cancel {
        owner: usize,
        pick: usize,
    },
    /// The owner puts back its queued entries (at their place, or at the back) and its reservations.
    Restore {
        owner: usize,
        back: bool,
    },
    /// A durable job enters the queue (submitted through `owner`).
    SubmitJob {
        owner: usize,
        priority: usize,
        est: u64,
        prompt: u64,
        deadline: Deadline,
    },
    /// A replica with `slots` free job workers claims jobs.
    Claim {
        owner: usize,
        slots: u32,
    },
    /// A step on one job's record: 0 finish, 1 hand back, 2 renew, 3 cancel, 4 read, 5 start.
    JobStep {
        pick: usize,
        kind: u8,
    },
    /// The store loses everything (Redis restarted empty).
    Flush,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let deadline = prop_oneof![
        5 => Just(Deadline::None),
        1 => Just(Deadline::Past),
        3 => (50..1500_u64).prop_map(Deadline::In),
    ];
    prop_oneof![
        8 => (0..OWNERS.len(), 0..PRIORITIES.len(), 0..4000_u64, 0..2500_u64, deadline.clone(), proptest::bool::weighted(0.2))
            .prop_map(|(owner, priority, est, prompt, deadline, force)| Op::Submit {
                owner, priority, est, prompt, deadline, force
            }),
        3 => (0..OWNERS.len()).prop_map(Op::Poll),
        5 => (0..OWNERS.len(), any::<usize>(), proptest::bool::weighted(0.8), 0..3_u8,
              proptest::option::of(0..5000_u64), proptest::option::of(1..2000_u64))
            .prop_map(|(owner, pick, sent, outcome, actual, latency_ms)| Op::Release {
                owner, pick, sent, outcome, actual, latency_ms
            }),
        3 => (0..OWNERS.len(), any::<usize>()).prop_map(|(owner, pick)| Op::Cancel { owner, pick }),
        2 => (0..OWNERS.len(), proptest::bool::weighted(0.3)).prop_map(|(owner, back)| Op::Restore { owner, back }),
        1 => Just(Op::Flush),
        3 => (1..350_u64).prop_map(Op::Advance),
        4 => (0..OWNERS.len(), 0..PRIORITIES.len(), 0..4000_u64, 0..2500_u64, deadline.clone())
            .prop_map(|(owner, priority, est, prompt, deadline)| Op::SubmitJob {
                owner, priority, est, prompt, deadline
            }),
        3 => (0..OWNERS.len(), 0..3_u32).prop_map(|(owner, slots)| Op::Claim { owner, slots }),
        4 => (any::<usize>(), 0..6_u8).prop_map(|(pick, kind)| Op::JobStep { pick, kind }),
    ]
}

/// A case's world: the candidates, both twins on one pinned clock, the Redis keys to read back.
struct Twins {
    candidates: Vec<Candidate>,
    order: CandidateOrder,
    now: Arc<AtomicU64>,
    start_ms: u64,
    memory: MemoryAdmission,
    redis: RedisAdmission,
    connection: RedisConnection,
    keyspace: Keyspace,
    /// Jobs submitted in the case (their record keys, for a flush).
    job_ids: Mutex<Vec<JobId>>,
}

/// A group's jobs hash (member -> "<score>:<attempts>") and job runs (member -> lease expiry).
type JobKeys = (BTreeMap<String, String>, BTreeMap<String, u64>);

/// The mode's outcome, comparable across the twins.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome2 {
    Submit(SubmitOutcome),
    Poll(Polled),
    Release(SettleReport),
    Cancel(CancelOutcome),
    Restore(Restored),
    Claim(Claimed),
}

/// A reply with grants in a stable order.
fn normalized<T>(
    reply: Result<StepReply<T>, BackendError>,
    wrap: impl FnOnce(T) -> Outcome2,
) -> Result<StepReply<Outcome2>, String> {
    let reply = reply.map_err(|e| e.to_string())?;
    let mut grants = reply.grants;
    grants.sort_by(|a, b| a.entry.member().cmp(b.entry.member()));
    Ok(StepReply {
        outcome: wrap(reply.outcome),
        next_capacity_ms: reply.next_capacity_ms,
        depth: reply.depth,
        grants,
        generation: reply.generation,
        lapsed: reply.lapsed,
    })
}

async fn step_on(
    backend: &dyn AdmissionBackend,
    step: &Step<'_>,
    action: &Action<'_>,
) -> Result<StepReply<Outcome2>, String> {
    match action {
        Action::Submit(submit) => normalized(backend.submit(step, submit).await, Outcome2::Submit),
        Action::Poll => normalized(backend.poll(step).await, Outcome2::Poll),
        Action::Release(reservation, release) => normalized(
            backend.release(step, reservation, release).await,
            Outcome2::Release,
        ),
        Action::Cancel(entry) => normalized(backend.cancel(step, entry).await, Outcome2::Cancel),
        Action::Restore(restore) => {
            normalized(backend.restore(step, restore).await, Outcome2::Restore)
        }
        Action::SubmitJob(job) => normalized(backend.submit_job(step, job).await, Outcome2::Submit),
        Action::Claim(claim) => normalized(backend.claim(step, claim).await, Outcome2::Claim),
    }
}

/// The job record steps' settings in the test.
const JOB_LEASE_MS: u64 = 200;
const JOB_MAX_ATTEMPTS: u32 = 1;
const JOB_TTL: Duration = Duration::from_secs(600);
const ERRORS: JobErrors<'static> = JobErrors {
    timeout: "{\"error\":\"timeout\"}",
    lost: "{\"error\":\"lost\"}",
};

/// One step on a job's record, its reply as text (the twins' replies must be equal).
async fn job_step(store: &dyn JobStore, id: &JobId, entry: &Entry, kind: u8, now: u64) -> String {
    let reply = match kind {
        0 => store
            .finish_job(
                id,
                entry,
                &JobEnd {
                    status: 200,
                    ok: true,
                    body: "{\"ok\":1}",
                },
                JOB_TTL,
            )
            .await
            .map(|r| format!("{r:?}")),
        1 => store
            .hand_back_job(id, entry)
            .await
            .map(|r| format!("{r:?}")),
        2 => store
            .renew_job(id, entry, now + JOB_LEASE_MS)
            .await
            .map(|r| format!("{r:?}")),
        3 => store
            .cancel_job(id, "{\"error\":\"cancelled\"}", 499, JOB_TTL)
            .await
            .map(|r| format!("{r:?}")),
        4 => store.read_job(id, ERRORS, JOB_TTL).await.map(|r| {
            r.map(|mut v| {
                let mut record: Vec<_> = v.record.drain().collect();
                record.sort();
                format!("{:?} {record:?}", v.state)
            })
            .unwrap_or_default()
        }),
        _ => store.start_job(id, entry, 1).await.map(|r| {
            let mut record: Vec<_> = r.unwrap_or_default().into_iter().collect();
            record.sort();
            format!("{record:?}")
        }),
    };
    reply.unwrap_or_else(|e| format!("error {e}"))
}

enum Action<'a> {
    Submit(Submit<'a>),
    Poll,
    Release(&'a Reservation, Release),
    Cancel(&'a Entry),
    Restore(Restore<'a>),
    SubmitJob(NewJob<'a>),
    Claim(Claim),
}

impl Twins {
    async fn new(
        pool: &deadpool_redis::Pool,
        url: &str,
        prefix: &str,
        case: u64,
        limits: &[Limits],
        order: CandidateOrder,
        rolling: bool,
    ) -> anyhow::Result<Twins> {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
        let start_ms = wall - wall % WINDOW_MS + WINDOW_MS;
        let now = Arc::new(AtomicU64::new(start_ms));
        let keyspace = Keyspace::new(format!("{prefix}twin{case}:"))?;
        let connection = RedisConnection::new(pool.clone(), Duration::from_secs(2));
        let window = Duration::from_millis(WINDOW_MS);
        let redis = RedisAdmission::new(
            connection.clone(),
            redis::Client::open(url)?,
            keyspace.clone(),
            window,
        )
        .rolling(rolling)
        .with_pinned_time(now.clone());
        let memory = MemoryAdmission::new(
            Arc::new(Mutex::new(QueueState::new())),
            Arc::new(Mutex::new(
                UsageState::new(window, LATENCY_ALPHA).rolling(rolling),
            )),
            Clock::new(),
        )
        .with_pinned_time(now.clone());
        let candidates = limits
            .iter()
            .enumerate()
            .map(|(i, limits)| Candidate {
                deployment: DeploymentRef::new(GROUP, format!("d{i}")),
                limits: *limits,
            })
            .collect();
        Ok(Twins {
            candidates,
            order,
            now,
            start_ms,
            memory,
            redis,
            connection,
            keyspace,
            job_ids: Mutex::new(Vec::new()),
        })
    }

    fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    /// What Redis holds, read into the snapshot types of the memory twin.
    /// The group's jobs hash and job runs, as Redis and the memory twin hold them.
    async fn job_keys(&self) -> anyhow::Result<(JobKeys, JobKeys)> {
        let keys = self.keyspace.group(GROUP);
        let jobs: BTreeMap<String, String> = self
            .connection
            .query(redis::cmd("HGETALL").arg(&keys.jobs))
            .await?;
        let runs: Vec<(String, u64)> = self
            .connection
            .query(
                redis::cmd("ZRANGE")
                    .arg(&keys.job_runs)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        let memory = self.memory.group_jobs(GROUP);
        let from_memory = (
            memory
                .jobs
                .iter()
                .map(|(m, (score, attempts))| (m.clone(), format!("{score}:{attempts}")))
                .collect(),
            memory.runs.into_iter().collect(),
        );
        Ok(((jobs, runs.into_iter().collect()), from_memory))
    }

    async fn redis_state(&self) -> anyhow::Result<(QueueSnapshot, Vec<UsageSnapshot>)> {
        let keys = self.keyspace.group(GROUP);
        let now = self.now();
        let entries: Vec<(String, u64)> = self
            .connection
            .query(
                redis::cmd("ZRANGE")
                    .arg(&keys.queue)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        let seq: Option<u64> = self
            .connection
            .query(redis::cmd("GET").arg(&keys.seq))
            .await?;
        let owners: Vec<(String, u64)> = self
            .connection
            .query(
                redis::cmd("ZRANGE")
                    .arg(&keys.owners)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES"),
            )
            .await?;
        let grants: BTreeMap<String, String> = self
            .connection
            .query(redis::cmd("HGETALL").arg(&keys.grants))
            .await?;
        let queue = QueueSnapshot {
            entries,
            seq: seq.unwrap_or(0),
            owners: owners.into_iter().filter(|(_, e)| *e >= now).collect(),
            grants,
        };
        let mut usage = Vec::new();
        for c in &self.candidates {
            let id = &*c.deployment.id;
            let hash: BTreeMap<String, String> = self
                .connection
                .query(redis::cmd("HGETALL").arg(keys.deployment(id)))
                .await?;
            let leases: Vec<(String, u64)> = self
                .connection
                .query(
                    redis::cmd("ZRANGE")
                        .arg(keys.deployment_inflight(id))
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES"),
                )
                .await?;
            let int = |field: &str| hash.get(field).and_then(|v| v.parse().ok()).unwrap_or(0);
            usage.push(UsageSnapshot {
                window: (!hash.is_empty()).then(|| WindowSnapshot {
                    window_start_ms: int("w"),
                    rpm: int("rpm"),
                    tpm: int("tpm"),
                    ok: int("ok"),
                    fail: int("fail"),
                    latency_ms_per_token: hash.get("lat").cloned(),
                    ttft_ms: hash.get("ttft").cloned(),
                    rolling: RollingSnapshot {
                        newest_bucket: hash.get("rb").and_then(|v| v.parse().ok()),
                        requests: int("rr"),
                        tokens: int("rt"),
                        buckets: hash
                            .iter()
                            .filter_map(|(field, value)| {
                                let index = field.strip_prefix('k')?.parse().ok()?;
                                let (r, t) = value.split_once(',')?;
                                Some((index, (r.parse().ok()?, t.parse().ok()?)))
                            })
                            .collect(),
                    },
                }),
                leases: leases.into_iter().collect(),
            });
        }
        Ok((queue, usage))
    }

    /// Deletes every key of the case: Redis restarted empty.
    async fn flush_redis(&self) -> anyhow::Result<()> {
        let keys = self.keyspace.group(GROUP);
        let mut del = redis::cmd("DEL");
        del.arg(&keys.queue)
            .arg(&keys.seq)
            .arg(&keys.owners)
            .arg(&keys.grants)
            .arg(format!("{}:gen", keys.base))
            .arg(&keys.jobs)
            .arg(&keys.job_runs);
        for id in lock(&self.job_ids).iter() {
            del.arg(keys.job(&id.key().simple().to_string()));
        }
        for c in &self.candidates {
            let id = &*c.deployment.id;
            del.arg(keys.deployment(id))
                .arg(keys.deployment_inflight(id))
                .arg(keys.deployment_cooldown(id));
        }
        self.connection.query::<u64>(&del).await?;
        Ok(())
    }

    fn memory_state(&self) -> (QueueSnapshot, Vec<UsageSnapshot>) {
        let now = self.now();
        let queue = lock(self.memory.queue_state()).snapshot(GROUP, now);
        let usage_state = lock(self.memory.usage_state());
        let usage = self
            .candidates
            .iter()
            .map(|c| usage_state.snapshot(now, &c.deployment))
            .collect();
        (queue, usage)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The read-only status (`status_v1.lua` and its twin) agrees after step `i`: with one band, so the cut-off
/// is exercised, and with the default.
async fn statuses_agree(twins: &Twins, i: usize, op: &Op) -> Result<(), TestCaseError> {
    for bands in [1, STATUS_BANDS] {
        let from_redis = twins
            .redis
            .group_status(GROUP, bands)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let from_memory = twins
            .memory
            .group_status(GROUP, bands)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            &from_redis,
            &from_memory,
            "status ({} bands) after step {} {:?}",
            bands,
            i,
            op
        );
    }
    Ok(())
}

/// Runs `ops` on both twins, comparing every reply and the state after every step.
async fn run_case(
    twins: &Twins,
    ops: &[Op],
    seen: &Mutex<BTreeMap<&'static str, u64>>,
) -> Result<(), TestCaseError> {
    let settings = settings();
    let mut entries: Vec<Entry> = Vec::new();
    let mut jobs: Vec<(JobId, Entry)> = Vec::new();
    let record = [("caller", "twin".to_owned())];
    let mut reservations: Vec<Reservation> = Vec::new();
    // What each owner learned: the store generation, and its entries' places and priorities.
    let mut generations: Vec<Option<String>> = vec![None; OWNERS.len()];
    let mut places: BTreeMap<String, (Score, Priority)> = BTreeMap::new();
    let fail = |e: &dyn std::fmt::Display| TestCaseError::fail(e.to_string());
    for (i, op) in ops.iter().enumerate() {
        let now = twins.now();
        let owner = match op {
            Op::Submit { owner, .. }
            | Op::Poll(owner)
            | Op::Release { owner, .. }
            | Op::Cancel { owner, .. }
            | Op::Restore { owner, .. }
            | Op::SubmitJob { owner, .. }
            | Op::Claim { owner, .. } => OWNERS[*owner],
            Op::JobStep { pick, kind } => {
                if jobs.is_empty() {
                    continue;
                }
                let (id, entry) = &jobs[pick % jobs.len()];
                let from_redis = job_step(&twins.redis, id, entry, *kind, now).await;
                let from_memory = job_step(&twins.memory, id, entry, *kind, now).await;
                prop_assert_eq!(&from_redis, &from_memory, "job step {} {:?}", i, op);
                let (redis_jobs, memory_jobs) = twins.job_keys().await.map_err(|e| fail(&e))?;
                prop_assert_eq!(&redis_jobs, &memory_jobs, "jobs after step {} {:?}", i, op);
                statuses_agree(twins, i, op).await?;
                let redis_state = twins.redis_state().await.map_err(|e| fail(&e))?;
                prop_assert_eq!(
                    &redis_state,
                    &twins.memory_state(),
                    "state after step {} {:?}",
                    i,
                    op
                );
                let mut seen = lock(seen);
                *seen
                    .entry(JOB_STEPS[usize::from(*kind).min(5)])
                    .or_default() += 1;
                continue;
            }
            Op::Flush => {
                twins.flush_redis().await.map_err(|e| fail(&e))?;
                twins.memory.lose_state();
                continue;
            }
            Op::Advance(ms) => {
                let next = (now + ms).min(twins.start_ms + MAX_ADVANCE_MS);
                twins.now.store(next, Ordering::SeqCst);
                continue;
            }
        };
        let step = Step {
            owner,
            group: GROUP,
            candidates: &twins.candidates,
            order: twins.order,
            settings: &settings,
            generation: generations[OWNERS.iter().position(|o| *o == owner).unwrap_or(0)]
                .as_deref(),
        };
        if let Op::Submit {
            est,
            prompt,
            deadline,
            ..
        } = op
        {
            let deadline_ms = match deadline {
                Deadline::None => 0,
                Deadline::Past => 1,
                Deadline::In(ms) => now + ms,
            };
            let meta = EntryMeta {
                est_tokens: *est,
                prompt_tokens: *prompt,
                deadline_ms,
            };
            entries.push(Entry::new(uuid::Uuid::new_v4(), owner, meta).map_err(|e| fail(&e))?);
        }
        if let Op::SubmitJob {
            est,
            prompt,
            deadline,
            ..
        } = op
        {
            let deadline_ms = match deadline {
                Deadline::None => 0,
                Deadline::Past => 1,
                Deadline::In(ms) => now + ms,
            };
            let meta = EntryMeta {
                est_tokens: *est,
                prompt_tokens: *prompt,
                deadline_ms,
            };
            let id = JobId::new(GROUP);
            let entry = Entry::new(id.key(), JOB_OWNER, meta).map_err(|e| fail(&e))?;
            lock(&twins.job_ids).push(id.clone());
            jobs.push((id, entry));
        }
        let action = match op {
            Op::Submit {
                priority, force, ..
            } => {
                let Some(entry) = entries.last() else {
                    continue;
                };
                Action::Submit(Submit {
                    entry,
                    priority: Priority::new(PRIORITIES[*priority]).map_err(|e| fail(&e))?,
                    force_queue: *force,
                })
            }
            Op::Poll(_) => Action::Poll,
            Op::Release {
                pick,
                sent,
                outcome,
                actual,
                latency_ms,
                ..
            } => {
                if reservations.is_empty() {
                    continue;
                }
                let reservation = &reservations[pick % reservations.len()];
                let latency = latency_ms.map(|ms| LatencySample {
                    total: Duration::from_millis(ms),
                    ttft: Some(Duration::from_millis(ms / 3)),
                    output_tokens: 1 + ms % 50,
                });
                let outcome = match outcome {
                    0 => Outcome::Success,
                    1 => Outcome::Failure(usage_tracker::FailureKind::Server),
                    _ => Outcome::Cancelled,
                };
                Action::Release(
                    reservation,
                    Release {
                        sent: *sent,
                        outcome,
                        actual_tokens: *actual,
                        latency,
                    },
                )
            }
            Op::Cancel { pick, .. } => {
                if entries.is_empty() {
                    continue;
                }
                Action::Cancel(&entries[pick % entries.len()])
            }
            Op::Restore { back, .. } => Action::Restore(Restore {
                waiters: entries
                    .iter()
                    .filter(|e| e.owner() == owner)
                    .filter_map(|e| {
                        let (score, priority) = places.get(e.member())?;
                        let place = if *back {
                            Place::Back(*priority)
                        } else {
                            Place::At(*score)
                        };
                        Some((e, place))
                    })
                    .collect(),
                reservations: reservations
                    .iter()
                    .filter(|r| {
                        entries
                            .iter()
                            .any(|e| e.owner() == owner && admission::lease_id(e) == r.id)
                    })
                    .collect(),
            }),
            Op::SubmitJob { priority, .. } => {
                let Some((_, entry)) = jobs.last() else {
                    continue;
                };
                Action::SubmitJob(NewJob {
                    entry,
                    priority: Priority::new(PRIORITIES[*priority]).map_err(|e| fail(&e))?,
                    record: &record,
                    ttl: JOB_TTL,
                })
            }
            Op::Claim { slots, .. } => Action::Claim(Claim {
                slots: *slots,
                job_lease: Duration::from_millis(JOB_LEASE_MS),
                max_attempts: JOB_MAX_ATTEMPTS,
            }),
            Op::Advance(_) | Op::Flush | Op::JobStep { .. } => continue,
        };
        let from_redis = step_on(&twins.redis, &step, &action).await;
        let from_memory = step_on(&twins.memory, &step, &action).await;
        prop_assert_eq!(&from_redis, &from_memory, "step {} {:?}", i, op);
        let redis_state = twins.redis_state().await.map_err(|e| fail(&e))?;
        prop_assert_eq!(
            &redis_state,
            &twins.memory_state(),
            "state after step {} {:?}",
            i,
            op
        );
        let (redis_jobs, memory_jobs) = twins.job_keys().await.map_err(|e| fail(&e))?;
        prop_assert_eq!(&redis_jobs, &memory_jobs, "jobs after step {} {:?}", i, op);
        statuses_agree(twins, i, op).await?;
        // What the step reserved, for later releases.
        let reply = from_memory.map_err(|e| fail(&e))?;
        tally(seen, &reply);
        if let Some(known) = OWNERS.iter().position(|o| *o == owner) {
            generations[known] = Some(reply.generation.clone());
        }
        if let (Outcome2::Submit(SubmitOutcome::Queued { score, .. }), Action::Submit(submit)) =
            (&reply.outcome, &action)
        {
            places.insert(submit.entry.member().to_owned(), (*score, submit.priority));
        }
        if let (
            Outcome2::Submit(SubmitOutcome::Granted {
                deployment_id,
                window_start_ms,
            }),
            Action::Submit(submit),
        ) = (&reply.outcome, &action)
        {
            let payload = GrantPayload::Granted {
                deployment_id: deployment_id.clone(),
                window_start_ms: *window_start_ms,
            };
            reservations.extend(payload.reservation(&twins.candidates, submit.entry));
        }
        for Grant { entry, payload } in &reply.grants {
            reservations.extend(payload.reservation(&twins.candidates, entry));
        }
        if let Outcome2::Claim(claimed) = &reply.outcome {
            for grant in &claimed.jobs {
                reservations.extend(
                    grant
                        .payload
                        .reservation(&twins.candidates, &grant.entry)
                        .map(|r| Reservation {
                            id: admission::job_lease_id(&grant.entry, owner),
                            ..r
                        }),
                );
            }
        }
    }
    Ok(())
}

/// What `Op::JobStep`'s kinds are called in the tally.
const JOB_STEPS: [&str; 6] = [
    "job finish",
    "job hand back",
    "job renew",
    "job cancel",
    "job read",
    "job start",
];

/// Counts what the steps did, so the test can show it exercised every outcome.
fn tally(seen: &Mutex<BTreeMap<&'static str, u64>>, reply: &StepReply<Outcome2>) {
    let mut seen = lock(seen);
    let kind = match &reply.outcome {
        Outcome2::Submit(SubmitOutcome::Granted { .. }) => "submit granted (fast path)",
        Outcome2::Submit(SubmitOutcome::Queued { .. }) => "submit queued",
        Outcome2::Submit(SubmitOutcome::Full) => "submit full",
        Outcome2::Poll(_) => "poll",
        Outcome2::Release(_) => "release",
        Outcome2::Cancel(CancelOutcome::Waiting) => "cancel waiting",
        Outcome2::Cancel(CancelOutcome::Grant) => "cancel grant",
        Outcome2::Cancel(CancelOutcome::FastPath) => "cancel fast path",
        Outcome2::Cancel(CancelOutcome::Absent) => "cancel absent",
        Outcome2::Restore(r) if r.waiters > 0 => "restore put waiters back",
        Outcome2::Restore(r) if r.reservations > 0 => "restore re-registered reservations",
        Outcome2::Restore(_) => "restore found nothing lost",
        Outcome2::Claim(c) if c.requeued > 0 => "claim put lapsed runs back",
        Outcome2::Claim(c) if !c.jobs.is_empty() => "claim granted jobs",
        Outcome2::Claim(_) => "claim found nothing",
    };
    if let Outcome2::Claim(claimed) = &reply.outcome {
        for grant in &claimed.jobs {
            let kind = match grant.payload {
                GrantPayload::Granted { .. } => "job granted",
                GrantPayload::Reject => "job rejected",
                GrantPayload::Expired => "job expired",
                GrantPayload::Exhausted => "job exhausted",
            };
            *seen.entry(kind).or_default() += 1;
        }
    }
    *seen.entry(kind).or_default() += 1;
    for grant in &reply.grants {
        let kind = match grant.payload {
            GrantPayload::Granted { .. } => "grant from the queue",
            GrantPayload::Reject => "grant reject",
            GrantPayload::Expired | GrantPayload::Exhausted => "grant of a job outside a claim",
        };
        *seen.entry(kind).or_default() += 1;
    }
    if reply.next_capacity_ms.is_some() {
        *seen.entry("next capacity hint").or_default() += 1;
    }
    if reply.lapsed {
        *seen.entry("heartbeat lapsed").or_default() += 1;
    }
    if reply.generation.contains(':') {
        *seen.entry("paused generation").or_default() += 1;
    }
}

#[test]
fn memory_and_redis_twins_agree_step_by_step() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server = rt.block_on(RedisServer::start())?;
    let url = server.url();
    let prefix = server.prefix().to_owned();
    let pool = store::create_pool(&url, 2, Duration::from_secs(2))?;
    let cases = AtomicU64::new(0);
    let seen = Mutex::new(BTreeMap::new());
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    let strategy = (
        limits(),
        order(),
        proptest::bool::ANY,
        proptest::collection::vec(op(), 1..60),
    );
    let result = runner.run(&strategy, |(limits, order, rolling, ops)| {
        rt.block_on(async {
            // Fresh keys and a fresh memory twin per case, so cases (and shrink steps) are independent.
            let case = cases.fetch_add(1, Ordering::Relaxed);
            let twins = Twins::new(&pool, &url, &prefix, case, &limits, order, rolling)
                .await
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mode = if rolling {
                "rolling windows"
            } else {
                "fixed windows"
            };
            *lock(&seen).entry(mode).or_default() += 1;
            run_case(&twins, &ops, &seen).await
        })
    });
    drop(server);
    result.map_err(|e| anyhow::anyhow!("{e}"))?;
    let seen = lock(&seen);
    // Rare outcomes ("cancel grant": a cancel racing another replica's grant; a job run whose lease lapsed
    // put back, a job whose attempts are used up) are counted, not required.
    eprintln!("steps by outcome: {seen:?}");
    for kind in [
        "submit granted (fast path)",
        "submit queued",
        "submit full",
        "release",
        "cancel waiting",
        "cancel absent",
        "grant from the queue",
        "grant reject",
        "next capacity hint",
        "heartbeat lapsed",
        "paused generation",
        "restore put waiters back",
        "claim granted jobs",
        "job granted",
        "job expired",
        "job finish",
        "job hand back",
        "job cancel",
        "job read",
        "rolling windows",
        "fixed windows",
    ] {
        anyhow::ensure!(
            seen.contains_key(kind),
            "no step ended as {kind:?}: {seen:?}"
        );
    }
    Ok(())
}
