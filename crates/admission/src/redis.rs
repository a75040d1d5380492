//! Admission on Redis: every step is one call of the composite `admit_v2` step (a Redis Function, or a
//! script where the server has no Functions).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use queue_core::{Entry, Score};
use store::{BackendError, GroupKeys, Keyspace, RedisConnection, StepCall, StepFunction};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use usage_tracker::{Candidate, Outcome, Reservation, SettleReport};

use crate::lock;
use crate::step::{
    AdmissionBackend, CancelOutcome, Grant, GrantPayload, Place, Polled, Release, Restore,
    Restored, Step, StepReply, Submit, SubmitOutcome,
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

/// EWMA weight of one latency sample.
const LATENCY_ALPHA: f64 = 0.2;

/// The Redis admission backend: the replica's kept connection, the keyspace and the client that
/// subscribes to this replica's wake-up channel.
pub struct RedisAdmission {
    connection: RedisConnection,
    client: redis::Client,
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
    /// Admission over `connection`; `client` subscribes to this replica's wake-up channel.
    pub fn new(
        connection: RedisConnection,
        client: redis::Client,
        keyspace: Keyspace,
        window: Duration,
    ) -> RedisAdmission {
        let wake_prefix = format!("{}wake:", keyspace.prefix());
        RedisAdmission {
            connection,
            client,
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
                    .key(&cached.generation);
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

    fn start_wakeups(
        &self,
        owner: Arc<str>,
        wake: Arc<dyn Fn(&str) + Send + Sync>,
        shutdown: CancellationToken,
    ) -> Option<JoinHandle<()>> {
        let client = self.client.clone();
        let channel = format!("{}{owner}", self.wake_prefix);
        let timeout = self.connection.timeout();
        Some(tokio::spawn(async move {
            // Wake-ups only shorten waits: pollers poll anyway, so a lost subscription costs latency, not
            // correctness. Reconnect with a pause after failures.
            while !shutdown.is_cancelled() {
                let subscribed = async {
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                match tokio::time::timeout(timeout, subscribed).await {
                    Ok(Ok(mut pubsub)) => {
                        let mut messages = pubsub.on_message();
                        loop {
                            tokio::select! {
                                message = messages.next() => match message {
                                    Some(message) => {
                                        if let Ok(group) = message.get_payload::<String>() {
                                            wake(&group);
                                        }
                                    }
                                    None => break,
                                },
                                _ = shutdown.cancelled() => return,
                            }
                        }
                    }
                    Ok(Err(e)) => tracing::debug!("wake-up subscription failed: {e}"),
                    Err(_) => tracing::debug!("wake-up subscription timed out"),
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

/// The number of status fields each status carries (see the header of `admit_v2.lua`).
fn status_fields(status: &str) -> Option<usize> {
    Some(match status {
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
    let n = status_fields(&status).ok_or_else(|| bad(&format!("unknown status {status}")))?;
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
