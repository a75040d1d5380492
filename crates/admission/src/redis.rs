//! Admission on Redis: every step is one call of the composite `admit_v2` step (a Redis Function, or a
//! script where the server has no Functions).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use queue_core::{Entry, Score};
use store::{
    BackendError, GroupKeys, Keyspace, RedisConnection, StepCall, StepFunction, Subscriber,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use usage_tracker::{Candidate, Outcome, Reservation, SettleReport};

use crate::jobs::{
    Claim, Claimed, JobCancel, JobEnd, JobErrors, JobGrant, JobId, JobState, JobStore, JobView,
    NewJob,
};
use crate::lock;
use crate::step::{
    AdmissionBackend, CancelOutcome, Grant, GrantPayload, Place, Polled, Release, Restore,
    Restored, Step, StepReply, Submit, SubmitOutcome, JOB_WAKE,
};

/// queue-core's and usage-tracker's fragments followed by admission's body: one atomic step, called as a
/// Redis Function (the fragments' helpers are then defined once, at load, not on every call).
static ADMIT_STEP: LazyLock<StepFunction> = LazyLock::new(|| {
    StepFunction::new(
        "admit_v2",
        &[
            queue_core::lua::QUEUE_FRAGMENT,
            usage_tracker::lua::USAGE_FRAGMENT,
        ],
        include_str!("lua/admit_v2.lua"),
    )
});

/// queue-core's fragment followed by the steps on one job's record.
static JOB_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    let source = [
        queue_core::lua::QUEUE_FRAGMENT,
        include_str!("lua/job_v1.lua"),
    ]
    .join("\n");
    redis::Script::new(&source)
});

/// EWMA weight of one latency sample.
const LATENCY_ALPHA: f64 = 0.2;

/// The Redis admission backend: the replica's kept connection, the keyspace and the client that
/// subscribes to this replica's wake-up channel.
pub struct RedisAdmission {
    connection: RedisConnection,
    client: Subscriber,
    keyspace: Keyspace,
    /// ARGV `usage window`: `<ms>` (fixed windows) or `<ms>r` (rolling).
    window_spec: String,
    wake_prefix: String,
    /// Key strings by group, formatted once (escaping and formatting them on every step cost about 4% of
    /// the proxy's CPU). Bounded by the configured groups and deployments.
    keys: Mutex<HashMap<String, CachedKeys>>,
    /// Tests pin the script's clock (ARGV `now`); `None` uses Redis `TIME`, the one clock all replicas share.
    pinned_now: Option<Arc<AtomicU64>>,
    /// Replicas alive in the group the last poll step saw.
    live_replicas: Arc<AtomicU64>,
}

/// One group's keys and its deployments' (usage hash, in-flight, cooldown).
struct CachedKeys {
    group: GroupKeys,
    /// `<base>:gen`: the store's generation for the group.
    generation: String,
    deployments: HashMap<String, [String; 3]>,
}

impl RedisAdmission {
    /// Admission over `connection`; `client` (a [`redis::Client`], or a [`Subscriber`] for a Cluster or
    /// Sentinels) subscribes to this replica's wake-up channel.
    pub fn new(
        connection: RedisConnection,
        client: impl Into<Subscriber>,
        keyspace: Keyspace,
        window: Duration,
    ) -> RedisAdmission {
        let wake_prefix = format!("{}wake:", keyspace.prefix());
        RedisAdmission {
            connection,
            client: client.into(),
            keyspace,
            window_spec: window.as_millis().to_string(),
            wake_prefix,
            keys: Mutex::new(HashMap::new()),
            pinned_now: None,
            live_replicas: Arc::new(AtomicU64::new(1)),
        }
    }

    /// Counts rpm and tpm over a rolling window (`usage_window_mode: rolling`) instead of fixed windows
    /// aligned to the clock.
    pub fn rolling(mut self, rolling: bool) -> RedisAdmission {
        let ms = self.window_spec.trim_end_matches('r').to_owned();
        self.window_spec = if rolling { format!("{ms}r") } else { ms };
        self
    }

    /// Replicas alive in the group the last poll step saw (1 before the first).
    pub fn live_replicas(&self) -> Arc<AtomicU64> {
        self.live_replicas.clone()
    }

    /// Tests: the script reads the time from `now_ms` instead of Redis `TIME` (so a memory twin pinned to
    /// the same value can be compared step by step). Never in production: replicas would disagree on time.
    pub fn with_pinned_time(mut self, now_ms: Arc<AtomicU64>) -> RedisAdmission {
        self.pinned_now = Some(now_ms);
        self
    }

    /// The keyspace of this store.
    pub(crate) fn keyspace(&self) -> &Keyspace {
        &self.keyspace
    }

    /// The kept connection.
    pub(crate) fn connection(&self) -> &RedisConnection {
        &self.connection
    }

    /// The pinned time of a test, if any.
    pub(crate) fn pinned_ms(&self) -> Option<u64> {
        self.pinned_now
            .as_ref()
            .map(|now| now.load(Ordering::SeqCst))
    }

    /// KEYS and the group-wide ARGV of one step.
    fn invocation(&self, step: &Step<'_>, mode: &str) -> StepCall {
        let mut inv = StepCall::new();
        {
            let mut cache = lock(&self.keys);
            if !cache.contains_key(step.group) {
                cache.insert(
                    step.group.to_owned(),
                    CachedKeys {
                        generation: format!("{}:gen", self.keyspace.group(step.group).base),
                        group: self.keyspace.group(step.group),
                        deployments: HashMap::new(),
                    },
                );
            }
            if let Some(cached) = cache.get_mut(step.group) {
                let keys = &cached.group;
                inv.key(&keys.queue)
                    .key(&keys.seq)
                    .key(&keys.owners)
                    .key(&keys.grants)
                    .key(&cached.generation)
                    .key(&keys.jobs)
                    .key(&keys.job_runs);
                for candidate in step.candidates {
                    let id = &*candidate.deployment.id;
                    if !cached.deployments.contains_key(id) {
                        let formatted = [
                            keys.deployment(id),
                            keys.deployment_inflight(id),
                            keys.deployment_cooldown(id),
                        ];
                        cached.deployments.insert(id.to_owned(), formatted);
                    }
                    if let Some([usage, inflight, cooldown]) = cached.deployments.get(id) {
                        inv.key(usage).key(inflight).key(cooldown);
                    }
                }
            }
        }
        inv.arg(mode)
            .arg(step.owner)
            .arg(step.settings.liveness().as_millis() as u64)
            .arg(&self.window_spec)
            .arg(step.settings.inflight_lease.as_millis() as u64)
            .arg(step.order.mode())
            .arg(step.settings.max_grants_per_step)
            .arg(&self.wake_prefix)
            .arg(step.group)
            .arg(
                self.pinned_now
                    .as_ref()
                    .map_or(-1, |now| now.load(Ordering::SeqCst) as i64),
            )
            .arg(step.generation.unwrap_or(""))
            .arg(step.settings.restore_pause().as_millis() as u64)
            .arg(step.candidates.len());
        for candidate in step.candidates {
            push_candidate_args(&mut inv, candidate);
        }
        inv
    }

    /// The `job_v1` invocation of `mode` on job `id` (member `member`, `""` where the script reads it).
    fn job_invocation(
        &self,
        id: &JobId,
        mode: &str,
        member: &str,
    ) -> redis::ScriptInvocation<'static> {
        let keys = self.keyspace.group(id.group());
        let mut inv = JOB_SCRIPT.prepare_invoke();
        inv.key(keys.job(&id.key().simple().to_string()))
            .key(&keys.jobs)
            .key(&keys.job_runs)
            .key(&keys.queue)
            .arg(mode)
            .arg(member)
            .arg(
                self.pinned_now
                    .as_ref()
                    .map_or(-1, |now| now.load(Ordering::SeqCst) as i64),
            );
        inv
    }

    async fn run<T>(
        &self,
        inv: StepCall,
        outcome: impl FnOnce(&str, &[redis::Value]) -> Result<T, BackendError>,
    ) -> Result<StepReply<T>, BackendError> {
        let reply = self.connection.call_step(&ADMIT_STEP, &inv).await?;
        decode_reply(reply, outcome)
    }
}

/// `u_parse_candidates` layout: deployment_id, rpm, tpm, max_parallel, max_input_tokens, tier.
fn push_candidate_args(inv: &mut StepCall, candidate: &Candidate) {
    let limits = &candidate.limits;
    let or_none = |v: Option<u64>| v.map_or(-1, |v| v as i64);
    inv.arg(&*candidate.deployment.id)
        .arg(or_none(limits.rpm))
        .arg(or_none(limits.tpm))
        .arg(or_none(limits.max_parallel.map(u64::from)))
        .arg(or_none(limits.max_input_tokens))
        .arg(limits.tier);
}

#[async_trait]
impl AdmissionBackend for RedisAdmission {
    async fn submit(
        &self,
        step: &Step<'_>,
        submit: &Submit<'_>,
    ) -> Result<StepReply<SubmitOutcome>, BackendError> {
        let mut inv = self.invocation(step, "submit");
        inv.arg(submit.entry.member())
            .arg(submit.priority.get())
            .arg(step.settings.max_queue_depth)
            .arg(u8::from(submit.force_queue));
        self.run(inv, |status, fields| match (status, fields) {
            ("granted", [deployment, window]) => Ok(SubmitOutcome::Granted {
                deployment_id: text(deployment)?,
                window_start_ms: positive(int(window)?).ok_or_else(|| bad("window"))?,
            }),
            ("queued", [position, not_before, score]) => Ok(SubmitOutcome::Queued {
                position: positive(int(position)?),
                not_before_ms: positive(int(not_before)?),
                score: Score::from_raw(positive(int(score)?).ok_or_else(|| bad("score"))?),
            }),
            ("full", []) => Ok(SubmitOutcome::Full),
            _ => Err(bad(&format!(
                "submit answered {status} with {} fields",
                fields.len()
            ))),
        })
        .await
    }

    async fn poll(&self, step: &Step<'_>) -> Result<StepReply<Polled>, BackendError> {
        self.run(self.invocation(step, "poll"), |status, fields| {
            match (status, fields) {
                ("polled", [live]) => {
                    let replicas = positive(int(live)?).unwrap_or(1);
                    self.live_replicas.store(replicas, Ordering::Relaxed);
                    Ok(Polled { replicas })
                }
                _ => Err(bad(&format!("poll answered {status}"))),
            }
        })
        .await
    }

    async fn restore(
        &self,
        step: &Step<'_>,
        restore: &Restore<'_>,
    ) -> Result<StepReply<Restored>, BackendError> {
        let mut inv = self.invocation(step, "restore");
        inv.arg(restore.waiters.len());
        for (entry, place) in &restore.waiters {
            let score = match place {
                Place::At(score) => score.get() as i64,
                Place::Back(priority) => -(i64::from(priority.get()) + 1),
            };
            inv.arg(entry.member()).arg(score);
        }
        let reservations: Vec<(&Reservation, usize)> = restore
            .reservations
            .iter()
            .filter_map(|r| Some((*r, candidate_index(step, r)?)))
            .collect();
        inv.arg(reservations.len());
        for (reservation, index) in reservations {
            inv.arg(&reservation.id)
                .arg(index + 1)
                .arg(reservation.est_tokens);
        }
        self.run(inv, |status, fields| match (status, fields) {
            ("restored", [waiters, reservations]) => Ok(Restored {
                waiters: positive(int(waiters)?).unwrap_or(0),
                reservations: positive(int(reservations)?).unwrap_or(0),
            }),
            _ => Err(bad(&format!("restore answered {status}"))),
        })
        .await
    }

    async fn release(
        &self,
        step: &Step<'_>,
        reservation: &Reservation,
        release: &Release,
    ) -> Result<StepReply<SettleReport>, BackendError> {
        let index = candidate_index(step, reservation).ok_or_else(|| {
            BackendError::reply(format!(
                "deployment {} is not a candidate of its group",
                reservation.deployment.id
            ))
        })?;
        let actual = release.actual_tokens.map_or(-1, |t| t as i64);
        let (outcome, actual) = match (release.sent, release.outcome) {
            (false, _) => (0, -1),
            (true, Outcome::Success) => (1, actual),
            (true, Outcome::Failure(_)) => (2, actual),
            (true, _) => (3, actual),
        };
        let mut inv = self.invocation(step, "release");
        inv.arg(&reservation.id)
            .arg(index + 1)
            .arg(reservation.window_start_ms)
            .arg(reservation.est_tokens)
            .arg(actual)
            .arg(outcome)
            .arg(
                release
                    .latency
                    .and_then(|l| l.ms_per_token())
                    .unwrap_or(-1.0),
            )
            .arg(release.latency.and_then(|l| l.ttft_ms()).unwrap_or(-1.0))
            .arg(LATENCY_ALPHA);
        self.run(inv, |status, fields| match (status, fields) {
            ("released", [requests, failures]) => Ok(SettleReport {
                requests_in_window: positive(int(requests)?).unwrap_or(0),
                failures_in_window: positive(int(failures)?).unwrap_or(0),
            }),
            _ => Err(bad(&format!("release answered {status}"))),
        })
        .await
    }

    async fn cancel(
        &self,
        step: &Step<'_>,
        entry: &Entry,
    ) -> Result<StepReply<CancelOutcome>, BackendError> {
        let mut inv = self.invocation(step, "cancel");
        inv.arg(entry.member());
        self.run(inv, |status, fields| match (status, fields) {
            ("cancelled", [what]) => {
                let what = text(what)?;
                CancelOutcome::from_name(&what).ok_or_else(|| bad(&format!("cancelled {what}")))
            }
            _ => Err(bad(&format!("cancel answered {status}"))),
        })
        .await
    }

    async fn submit_job(
        &self,
        step: &Step<'_>,
        job: &NewJob<'_>,
    ) -> Result<StepReply<SubmitOutcome>, BackendError> {
        let mut inv = self.invocation(step, "submit");
        let record_key = self
            .keyspace
            .group(step.group)
            .job(&job.entry.id().simple().to_string());
        inv.key(record_key);
        let fields = record_fields(job);
        inv.arg(job.entry.member())
            .arg(job.priority.get())
            .arg(step.settings.max_queue_depth)
            .arg(1)
            .arg(1)
            .arg(millis(job.ttl))
            .arg(fields.len());
        for (field, value) in fields {
            inv.arg(field).arg(value);
        }
        self.run(inv, |status, fields| match (status, fields) {
            ("queued", [position, not_before, score]) => Ok(SubmitOutcome::Queued {
                position: positive(int(position)?),
                not_before_ms: positive(int(not_before)?),
                score: Score::from_raw(positive(int(score)?).ok_or_else(|| bad("score"))?),
            }),
            ("full", []) => Ok(SubmitOutcome::Full),
            _ => Err(bad(&format!("job submit answered {status}"))),
        })
        .await
    }

    async fn claim(
        &self,
        step: &Step<'_>,
        claim: &Claim,
    ) -> Result<StepReply<Claimed>, BackendError> {
        let mut inv = self.invocation(step, "claim");
        inv.arg(claim.slots)
            .arg(millis(claim.job_lease))
            .arg(claim.max_attempts);
        self.run(inv, |status, fields| match (status, fields) {
            ("claimed", [requeued, _, jobs @ ..]) => Ok(Claimed {
                requeued: positive(int(requeued)?).unwrap_or(0),
                jobs: jobs
                    .chunks_exact(3)
                    .map(|t| {
                        Ok(JobGrant {
                            entry: Entry::from_member(&text(&t[0])?)
                                .map_err(|e| bad(&e.to_string()))?,
                            payload: GrantPayload::parse(&text(&t[1])?)?,
                            attempts: u32::try_from(int(&t[2])?).unwrap_or(0),
                        })
                    })
                    .collect::<Result<_, BackendError>>()?,
            }),
            _ => Err(bad(&format!("claim answered {status}"))),
        })
        .await
    }

    fn start_wakeups(
        &self,
        owner: Arc<str>,
        wake: Arc<dyn Fn(&str) + Send + Sync>,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let client = self.client.clone();
        let channel = format!("{}{owner}", self.wake_prefix);
        let job_channel = format!("{}{}", self.wake_prefix, queue_core::JOB_OWNER);
        let timeout = self.connection.timeout();
        Some(tokio::spawn(async move {
            // Wake-ups only shorten waits: pollers poll anyway, so a lost subscription costs latency, not
            // correctness. Reconnect with a pause after failures.
            while !shutdown.is_cancelled() {
                let subscribed = client
                    .subscribe(&[channel.as_str(), job_channel.as_str()], timeout)
                    .await;
                match subscribed {
                    Ok(mut pubsub) => {
                        let mut messages = pubsub.on_message();
                        loop {
                            tokio::select! {
                                message = messages.next() => match message {
                                    Some(message) => {
                                        if let Ok(group) = message.get_payload::<String>() {
                                            if message.get_channel_name() == job_channel {
                                                wake(&format!("{JOB_WAKE}{group}"));
                                            } else {
                                                wake(&group);
                                            }
                                        }
                                    }
                                    None => break,
                                },
                                _ = shutdown.cancelled() => return,
                            }
                        }
                    }
                    Err(e) => tracing::debug!("wake-up subscription failed: {e}"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }))
    }

    fn now_ms(&self) -> u64 {
        if let Some(now) = &self.pinned_now {
            return now.load(Ordering::SeqCst);
        }
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// The 0-based index of the reservation's deployment among the step's candidates.
fn candidate_index(step: &Step<'_>, reservation: &Reservation) -> Option<usize> {
    step.candidates
        .iter()
        .position(|c| c.deployment.id == reservation.deployment.id)
}

/// The number of status fields each status carries (see the header of `admit_v2.lua`); `rest` is what
/// follows the reply's head (a claim's count of job triples is its second field).
fn status_fields(status: &str, rest: &[redis::Value]) -> Option<usize> {
    Some(match status {
        "claimed" => 2 + 3 * usize::try_from(int(rest.get(1)?).ok()?).ok()?,
        "queued" => 3,
        "granted" | "released" | "restored" => 2,
        "cancelled" | "polled" => 1,
        "full" => 0,
        _ => return None,
    })
}

fn bad(what: &str) -> BackendError {
    BackendError::reply(format!("admit_v2: {what}"))
}

fn text(v: &redis::Value) -> Result<String, BackendError> {
    redis::from_redis_value::<String>(v.clone()).map_err(|_| bad("expected a string"))
}

fn int(v: &redis::Value) -> Result<i64, BackendError> {
    redis::from_redis_value::<i64>(v.clone()).map_err(|_| bad("expected an integer"))
}

fn positive(v: i64) -> Option<u64> {
    u64::try_from(v).ok()
}

/// Decodes `{status, next_ms, depth, <status fields>, member1, payload1, ...}`; `outcome` decodes the
/// status and its fields into the mode's type.
fn decode_reply<T>(
    value: redis::Value,
    outcome: impl FnOnce(&str, &[redis::Value]) -> Result<T, BackendError>,
) -> Result<StepReply<T>, BackendError> {
    let redis::Value::Array(items) = value else {
        return Err(bad("not an array"));
    };
    let [status, next_ms, depth, generation, lapsed, rest @ ..] = items.as_slice() else {
        return Err(bad("too short"));
    };
    let status = text(status)?;
    let n = status_fields(&status, rest).ok_or_else(|| bad(&format!("unknown status {status}")))?;
    if rest.len() < n || (rest.len() - n) % 2 != 0 {
        return Err(bad("wrong length"));
    }
    let (fields, grants) = rest.split_at(n);
    let outcome = outcome(&status, fields)?;
    let grants = grants
        .chunks_exact(2)
        .map(|pair| {
            let member = text(&pair[0])?;
            Ok(Grant {
                entry: Entry::from_member(&member).map_err(|e| bad(&e.to_string()))?,
                payload: GrantPayload::parse(&text(&pair[1])?)?,
            })
        })
        .collect::<Result<Vec<_>, BackendError>>()?;
    Ok(StepReply {
        outcome,
        next_capacity_ms: positive(int(next_ms)?),
        depth: positive(int(depth)?),
        grants,
        generation: text(generation)?,
        lapsed: int(lapsed)? == 1,
    })
}

/// Milliseconds of `d`, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A job's record as the submit step writes it: the caller's fields, its queue member and status.
pub(crate) fn record_fields(job: &NewJob<'_>) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = job
        .record
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    fields.push(("member".to_owned(), job.entry.member().to_owned()));
    fields.push(("status".to_owned(), "queued".to_owned()));
    fields
}

/// `{field1, value1, ...}` from `start`, into a map.
fn record_map(values: &[redis::Value]) -> Result<HashMap<String, String>, BackendError> {
    if !values.len().is_multiple_of(2) {
        return Err(bad("job record of odd length"));
    }
    values
        .chunks_exact(2)
        .map(|pair| Ok((text(&pair[0])?, text(&pair[1])?)))
        .collect()
}

/// The reply of a `job_v1` step as its status and fields.
fn job_reply(value: redis::Value) -> Result<(String, Vec<redis::Value>), BackendError> {
    let redis::Value::Array(mut items) = value else {
        return Err(bad("job_v1: not an array"));
    };
    if items.is_empty() {
        return Err(bad("job_v1: empty reply"));
    }
    let status = text(&items.remove(0))?;
    Ok((status, items))
}

#[async_trait]
impl JobStore for RedisAdmission {
    async fn start_job(
        &self,
        id: &JobId,
        entry: &Entry,
        attempts: u32,
    ) -> Result<Option<HashMap<String, String>>, BackendError> {
        let mut inv = self.job_invocation(id, "start", entry.member());
        inv.arg(attempts);
        let (status, rest) = job_reply(self.connection.invoke(&inv).await?)?;
        match status.as_str() {
            "started" => Ok(Some(record_map(&rest)?)),
            "absent" | "finished" => Ok(None),
            other => Err(bad(&format!("job start answered {other}"))),
        }
    }

    async fn read_job(
        &self,
        id: &JobId,
        errors: JobErrors<'_>,
        ttl: Duration,
    ) -> Result<Option<JobView>, BackendError> {
        let mut inv = self.job_invocation(id, "read", "");
        inv.arg(errors.timeout).arg(errors.lost).arg(millis(ttl));
        let (status, rest) = job_reply(self.connection.invoke(&inv).await?)?;
        let state = match (status.as_str(), rest.first()) {
            ("absent", _) => return Ok(None),
            ("queued", Some(position)) => JobState::Queued {
                position: positive(int(position)?).unwrap_or(0),
            },
            ("running", Some(_)) => JobState::Running,
            ("finished", Some(_)) => JobState::Finished,
            _ => return Err(bad(&format!("job read answered {status}"))),
        };
        Ok(Some(JobView {
            state,
            record: record_map(&rest[1..])?,
        }))
    }

    async fn finish_job(
        &self,
        id: &JobId,
        entry: &Entry,
        end: &JobEnd<'_>,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let mut inv = self.job_invocation(id, "finish", entry.member());
        inv.arg(end.status)
            .arg(if end.ok { "result" } else { "error" })
            .arg(end.body)
            .arg(millis(ttl));
        let (status, _) = job_reply(self.connection.invoke(&inv).await?)?;
        Ok(status == "finished")
    }

    async fn cancel_job(
        &self,
        id: &JobId,
        error: &str,
        status: u16,
        ttl: Duration,
    ) -> Result<JobCancel, BackendError> {
        let mut inv = self.job_invocation(id, "cancel", "");
        inv.arg(error).arg(status).arg(millis(ttl));
        let (status, rest) = job_reply(self.connection.invoke(&inv).await?)?;
        match (status.as_str(), rest.as_slice()) {
            ("absent", _) => Ok(JobCancel::Absent),
            ("finished", _) => Ok(JobCancel::Finished),
            ("cancelled", [running]) => Ok(JobCancel::Cancelled {
                running: int(running)? == 1,
            }),
            _ => Err(bad(&format!("job cancel answered {status}"))),
        }
    }

    async fn renew_job(
        &self,
        id: &JobId,
        entry: &Entry,
        expiry_ms: u64,
    ) -> Result<bool, BackendError> {
        let mut inv = self.job_invocation(id, "renew", entry.member());
        inv.arg(expiry_ms);
        let (status, _) = job_reply(self.connection.invoke(&inv).await?)?;
        Ok(status == "renewed")
    }

    async fn hand_back_job(&self, id: &JobId, entry: &Entry) -> Result<bool, BackendError> {
        let mut inv = self.job_invocation(id, "hand_back", entry.member());
        inv.arg(format!("{}{}", self.wake_prefix, queue_core::JOB_OWNER))
            .arg(id.group());
        let (status, _) = job_reply(self.connection.invoke(&inv).await?)?;
        Ok(status == "handed_back")
    }
}
