//! Admission on Redis: every step is one run of the composite `admit_v1` script.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::StreamExt;
use queue_core::{GroupKeys, Keyspace, Priority, RedisConnection};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use usage_tracker::{Candidate, CandidateOrder, Outcome, Reservation, SettleReport};

use super::{
    parse_payload, AdmissionBackend, BackendError, GrantPayload, Release, Step, StepReply,
    StepStatus,
};

/// queue-core's and usage-tracker's fragments followed by the scheduler's body: one atomic step.
static ADMIT_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    let source = [
        queue_core::lua::QUEUE_FRAGMENT,
        usage_tracker::lua::USAGE_FRAGMENT,
        include_str!("admit.lua"),
    ]
    .join("\n");
    redis::Script::new(&source)
});

/// EWMA weight of one latency sample.
const LATENCY_ALPHA: f64 = 0.2;

/// The Redis admission backend: the replica's kept connection, the keyspace and the client that
/// subscribes to this replica's wake-up channel.
pub(crate) struct RedisAdmission {
    connection: RedisConnection,
    client: redis::Client,
    keyspace: Keyspace,
    window: Duration,
    wake_prefix: String,
    /// Key strings by group, formatted once (escaping and formatting them on every step cost about 4% of
    /// the proxy's CPU). Bounded by the configured groups and deployments.
    keys: Mutex<HashMap<String, CachedKeys>>,
}

/// One group's keys and its deployments' (usage hash, in-flight, cooldown).
struct CachedKeys {
    group: GroupKeys,
    deployments: HashMap<String, [String; 3]>,
}

impl RedisAdmission {
    pub(crate) fn new(
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
            window,
            wake_prefix,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// KEYS and the group-wide ARGV of one step.
    fn invocation(&self, step: &Step<'_>, mode: &str) -> redis::ScriptInvocation<'static> {
        let mut inv = ADMIT_SCRIPT.prepare_invoke();
        {
            let mut cache = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            if !cache.contains_key(step.group) {
                cache.insert(
                    step.group.to_owned(),
                    CachedKeys {
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
                    .key(&keys.grants);
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
            .arg(step.settings.owner_lease.as_millis() as u64)
            .arg(self.window.as_millis() as u64)
            .arg(step.settings.reservation_lease.as_millis() as u64)
            .arg(order_mode(step.order))
            .arg(step.settings.max_grants_per_step)
            .arg(&self.wake_prefix)
            .arg(step.group)
            .arg(step.candidates.len());
        for candidate in step.candidates {
            push_candidate_args(&mut inv, candidate);
        }
        inv
    }

    async fn run(&self, inv: redis::ScriptInvocation<'static>) -> Result<StepReply, BackendError> {
        let reply = self.connection.invoke(&inv).await.map_err(|e| {
            if e.is_timeout() {
                BackendError::Timeout(self.connection.timeout())
            } else {
                BackendError::Redis(e.to_string())
            }
        })?;
        parse_reply(reply)
    }
}

fn order_mode(order: CandidateOrder) -> u8 {
    match order {
        CandidateOrder::AsGiven => 0,
        CandidateOrder::LowestTpm => 1,
        CandidateOrder::FewestInFlight => 2,
    }
}

/// `u_parse_candidates` layout: deployment_id, rpm, tpm, max_parallel, max_input_tokens, tier.
fn push_candidate_args(inv: &mut redis::ScriptInvocation<'static>, candidate: &Candidate) {
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
        member: &str,
        priority: Priority,
        force_queue: bool,
        lease: Duration,
    ) -> Result<StepReply, BackendError> {
        let mut inv = self.invocation(step, "submit");
        inv.arg(member)
            .arg(priority.get())
            .arg(step.settings.max_queue_depth)
            .arg(u8::from(force_queue))
            .arg(lease.as_millis() as u64);
        self.run(inv).await
    }

    async fn poll(&self, step: &Step<'_>) -> Result<StepReply, BackendError> {
        self.run(self.invocation(step, "poll")).await
    }

    async fn release(
        &self,
        step: &Step<'_>,
        reservation: &Reservation,
        release: &Release,
    ) -> Result<StepReply, BackendError> {
        let index = step
            .candidates
            .iter()
            .position(|c| c.deployment.id == reservation.deployment.id)
            .ok_or_else(|| {
                BackendError::Reply(format!(
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
        self.run(inv).await
    }

    async fn cancel(&self, step: &Step<'_>, member: &str) -> Result<StepReply, BackendError> {
        let mut inv = self.invocation(step, "cancel");
        inv.arg(member);
        self.run(inv).await
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
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Decodes `{status, next_ms, depth, position, fast_deployment, fast_window, a, b, member, payload, ...}`.
fn parse_reply(value: redis::Value) -> Result<StepReply, BackendError> {
    let bad = |what: &str| BackendError::Reply(format!("admit_v1: {what}"));
    let redis::Value::Array(items) = value else {
        return Err(bad("not an array"));
    };
    if items.len() < 8 || (items.len() - 8) % 2 != 0 {
        return Err(bad("wrong length"));
    }
    let text = |v: &redis::Value| -> Result<String, BackendError> {
        redis::from_redis_value::<String>(v.clone()).map_err(|_| bad("expected a string"))
    };
    let int = |v: &redis::Value| -> Result<i64, BackendError> {
        redis::from_redis_value::<i64>(v.clone()).map_err(|_| bad("expected an integer"))
    };
    let positive = |v: i64| u64::try_from(v).ok();
    let status = text(&items[0])?;
    let next_capacity_ms = positive(int(&items[1])?);
    let depth = positive(int(&items[2])?).unwrap_or(0);
    let position = positive(int(&items[3])?);
    let a = positive(int(&items[6])?).unwrap_or(0);
    let b = positive(int(&items[7])?).unwrap_or(0);
    let status = match status.as_str() {
        "granted" => StepStatus::Granted(GrantPayload::Granted {
            deployment_id: text(&items[4])?,
            window_start_ms: positive(int(&items[5])?).ok_or_else(|| bad("window"))?,
        }),
        "queued" => StepStatus::Queued {
            position,
            not_before_ms: positive(int(&items[6])?),
        },
        "full" => StepStatus::Full,
        "polled" => StepStatus::Polled,
        "released" => StepStatus::Released(SettleReport {
            requests_in_window: a,
            failures_in_window: b,
        }),
        "cancelled" => StepStatus::Cancelled(a > 0),
        other => return Err(bad(&format!("unknown status {other}"))),
    };
    let mut grants = Vec::with_capacity((items.len() - 8) / 2);
    for pair in items[8..].chunks_exact(2) {
        grants.push((text(&pair[0])?, parse_payload(&text(&pair[1])?)?));
    }
    Ok(StepReply {
        status,
        next_capacity_ms,
        depth,
        grants,
    })
}
