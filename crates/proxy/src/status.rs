//! `GET /queue/status`: the operator's view of every group's queue and every deployment's usage, read from
//! the shared store (all replicas), and a virtual key's view of its own requests.

use std::collections::HashMap;

use axum::extract::{Extension, State};
use axum::Json;
use router::GroupQueueStatus;
use serde_json::{json, Value};

use crate::auth::{Caller, CallerIdentity};
use crate::error::ApiError;
use crate::routes::edge_error_counted;
use crate::state::AppState;

/// `GET /queue/status`. The master key sees every group and deployment (two store calls per group: the
/// queue's status and the deployments' usage); a virtual key sees its own requests in flight and its usage
/// against its limits (its durable jobs by id at `/queue/response/{id}`).
pub(crate) async fn queue_status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    if let CallerIdentity::Key(id) = &caller.identity {
        return key_view(&state, id, caller.key.as_deref()).await;
    }
    let router = state.router();
    let groups = router
        .queue_status()
        .await
        .map_err(|e| edge_error_counted(e, Some(&state)))?;
    let health = router
        .health()
        .await
        .map_err(|e| edge_error_counted(e, Some(&state)))?;
    let parallel: HashMap<String, Option<u32>> = router
        .deployments()
        .into_iter()
        .map(|d| (d.id, d.max_parallel_requests))
        .collect();
    let window = router.usage_window();
    let window_secs = window.as_secs_f64().max(0.001);
    let mut admitted: HashMap<&str, u64> = HashMap::new();
    for d in &health {
        *admitted.entry(d.group.as_str()).or_insert(0) += d.rpm_used;
    }
    let now_ms = groups.first().map(|g| g.status.now_ms);
    let groups: Vec<Value> = groups
        .iter()
        .map(|g| {
            let admitted = admitted.get(g.group.as_str()).copied().unwrap_or(0);
            group_json(g, admitted, window_secs)
        })
        .collect();
    let deployments: Vec<Value> = health
        .into_iter()
        .map(|d| {
            let max_parallel = parallel.get(&d.id).copied().flatten();
            let mut at_limit = Vec::new();
            if d.rpm_limit.is_some_and(|l| d.rpm_used >= l) {
                at_limit.push("rpm");
            }
            if d.tpm_limit.is_some_and(|l| d.tpm_used >= l) {
                at_limit.push("tpm");
            }
            if max_parallel.is_some_and(|l| d.in_flight >= u64::from(l)) {
                at_limit.push("parallel");
            }
            json!({
                "id": d.id,
                "model_group": d.group,
                "rpm_used": d.rpm_used,
                "rpm_limit": d.rpm_limit,
                "tpm_used": d.tpm_used,
                "tpm_limit": d.tpm_limit,
                "in_flight": d.in_flight,
                "max_parallel_requests": max_parallel,
                "at_limit": at_limit,
                "cooling_down": d.cooldown_remaining.is_some(),
                "cooldown_remaining_secs": d.cooldown_remaining.map(|r| r.as_millis() as f64 / 1000.0),
                "successes_in_window": d.successes_in_window,
                "failures_in_window": d.failures_in_window,
                "latency_ms_per_token": d.latency_ms_per_token,
                "ttft_ms": d.ttft_ms,
            })
        })
        .collect();
    Ok(Json(json!({
        "scope": "all",
        "backend": state.backend_name(),
        "replica": router.replica_id(),
        "now_ms": now_ms,
        "usage_window_secs": window.as_secs_f64(),
        "groups": groups,
        "deployments": deployments,
    })))
}

/// One group: depth and oldest wait by priority, admissions per second over the usage window (the
/// deployments' admissions counted in it), replicas and their grants not yet taken, jobs.
fn group_json(g: &GroupQueueStatus, admitted_in_window: u64, window_secs: f64) -> Value {
    let s = &g.status;
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_millis() as f64 / 1000.0);
    let by_priority: Vec<Value> = s
        .bands
        .iter()
        .map(|b| {
            json!({
                "priority": b.priority.get(),
                "waiting": b.waiting,
                "oldest_wait_secs": secs(s.wait_of(b)),
            })
        })
        .collect();
    let replicas: Vec<Value> = s
        .owners
        .iter()
        .map(|(id, expiry)| {
            json!({
                "id": id,
                "lease_remaining_secs": expiry.saturating_sub(s.now_ms) as f64 / 1000.0,
            })
        })
        .collect();
    json!({
        "model_group": g.group,
        "depth": s.depth,
        "by_priority": by_priority,
        "more_priorities": s.more_bands,
        "oldest_wait_secs": secs(s.oldest_wait()),
        "admitted_in_window": admitted_in_window,
        "admitted_per_sec": admitted_in_window as f64 / window_secs,
        "live_replicas": s.owners.len(),
        "replicas": replicas,
        "grants_pending_by_replica": s.grants_by_owner(),
        "jobs": {
            "queued": s.jobs_live.saturating_sub(s.jobs_running),
            "running": s.jobs_running,
        },
    })
}

/// A virtual key's own view: its requests in flight and its usage against its limits, all replicas.
async fn key_view(
    state: &AppState,
    id: &keys::KeyId,
    record: Option<&keys::KeyRecord>,
) -> Result<Json<Value>, ApiError> {
    let usage = state
        .keys()
        .store()
        .usage(id)
        .await
        .map_err(|e| crate::key_routes::key_error(state, e))?;
    Ok(Json(json!({
        "scope": "key",
        "backend": state.backend_name(),
        "key": {
            "token": id,
            "key_alias": record.and_then(|r| r.key_alias.clone()),
            "models": record.map(|r| r.models.clone()).unwrap_or_default(),
            "in_flight": usage.in_flight,
            "max_parallel_requests": record.and_then(|r| r.max_parallel_requests),
            "rpm_used": usage.rpm_used,
            "rpm_limit": record.and_then(|r| r.rpm_limit),
            "tpm_used": usage.tpm_used,
            "tpm_limit": record.and_then(|r| r.tpm_limit),
            "window_secs": keys::WINDOW.as_secs(),
        },
        "groups": [],
        "deployments": [],
    })))
}
