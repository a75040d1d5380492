//! What the router reports about itself: its deployments as configured, their live health, the queue depths.

use std::sync::Arc;
use std::time::Duration;

use queue_core::QueueBackend;
use usage_tracker::UsageStore;

use crate::error::RouterError;
use crate::topology::Topology;

/// A deployment as configured (no secrets).
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentInfo {
    /// Stable deployment id.
    pub id: String,
    /// Model group.
    pub group: String,
    /// `litellm_params.model` (`azure/my-deployment`).
    pub model: String,
    /// Provider prefix (`openai`, `azure`, ...).
    pub provider: String,
    /// Upstream base URL (empty for mock deployments).
    pub api_base: String,
    /// Requests per window.
    pub rpm: Option<u64>,
    /// Tokens per window.
    pub tpm: Option<u64>,
    /// Concurrent requests.
    pub max_parallel_requests: Option<u32>,
    /// Largest prompt.
    pub max_input_tokens: Option<u64>,
    /// Tier (`order`), if set.
    pub order: Option<u32>,
    /// simple-shuffle weight, if set.
    pub weight: Option<f64>,
    /// Tags.
    pub tags: Vec<String>,
    /// Answers with `mock_response`.
    pub mock: bool,
    /// Azure `api-version`.
    pub api_version: Option<String>,
    /// Upstream timeout (`litellm_params.timeout`), if set.
    pub timeout: Option<Duration>,
    /// Timeout to the first streamed chunk, if set.
    pub stream_timeout: Option<Duration>,
    /// `model_info` as configured besides `id` and `max_input_tokens` (mode, costs, `base_model`, ...).
    pub model_info: serde_json::Map<String, serde_json::Value>,
    /// USD per prompt token (`input_cost_per_token` of `model_info` or `litellm_params`).
    pub input_cost_per_token: Option<f64>,
    /// USD per completion token (`output_cost_per_token`).
    pub output_cost_per_token: Option<f64>,
}

/// Requests waiting in one model group's queue at one priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    /// Model group.
    pub group: String,
    /// Priority (lower is served first).
    pub priority: u32,
    /// Requests waiting.
    pub waiting: u64,
}

/// One model group's queue as the shared store holds it (all replicas' waiters), for operators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupQueueStatus {
    /// Model group.
    pub group: String,
    /// Depth and oldest waiter by priority, live replicas, grants not yet taken, jobs.
    pub status: admission::GroupStatus,
}

/// Live usage and health of a deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentHealth {
    /// Stable deployment id.
    pub id: String,
    /// Model group.
    pub group: String,
    /// Remaining cooldown, if cooling down.
    pub cooldown_remaining: Option<Duration>,
    /// Requests in flight (all replicas).
    pub in_flight: u64,
    /// Requests admitted in the current window.
    pub rpm_used: u64,
    /// Tokens charged in the current window.
    pub tpm_used: u64,
    /// Configured rpm.
    pub rpm_limit: Option<u64>,
    /// Configured tpm.
    pub tpm_limit: Option<u64>,
    /// Successes in the current window.
    pub successes_in_window: u64,
    /// Failures in the current window.
    pub failures_in_window: u64,
    /// EWMA latency per output token (ms).
    pub latency_ms_per_token: Option<f64>,
    /// EWMA time to first token (ms).
    pub ttft_ms: Option<f64>,
}

/// The deployments, without secrets.
pub(crate) fn deployments(topology: &Topology) -> Vec<DeploymentInfo> {
    topology
        .groups()
        .flat_map(|g| g.deployments.iter())
        .map(|d| DeploymentInfo {
            id: d.id.clone(),
            group: d.group.clone(),
            model: d.litellm_model.clone(),
            provider: d.provider.clone(),
            api_base: d.api_base.clone(),
            rpm: d.rpm,
            tpm: d.tpm,
            max_parallel_requests: d.max_parallel,
            max_input_tokens: d.max_input_tokens,
            order: (d.tier != u32::MAX).then_some(d.tier),
            weight: d.weight,
            tags: d.tags.clone(),
            mock: d.mock_response.is_some(),
            api_version: d.api_version.clone(),
            timeout: d.timeout,
            stream_timeout: d.stream_timeout,
            model_info: d.model_info.clone(),
            input_cost_per_token: d.input_cost_per_token,
            output_cost_per_token: d.output_cost_per_token,
        })
        .collect()
}

/// Usage and health of every deployment (one backend call per group).
pub(crate) async fn health(
    topology: &Topology,
    usage: &dyn UsageStore,
) -> Result<Vec<DeploymentHealth>, RouterError> {
    let mut out = Vec::new();
    for g in topology.groups() {
        let ids: Vec<Arc<str>> = g.deployments.iter().map(|d| d.dref.id.clone()).collect();
        let stats = usage
            .stats(&g.name, &ids)
            .await
            .map_err(RouterError::backend)?;
        for (d, s) in g.deployments.iter().zip(stats) {
            out.push(DeploymentHealth {
                id: d.id.clone(),
                group: g.name.clone(),
                cooldown_remaining: s.cooldown_remaining,
                in_flight: s.in_flight,
                rpm_used: s.rpm_used,
                tpm_used: s.tpm_used,
                rpm_limit: d.rpm,
                tpm_limit: d.tpm,
                successes_in_window: s.successes_in_window,
                failures_in_window: s.failures_in_window,
                latency_ms_per_token: s.latency_ms_per_token,
                ttft_ms: s.ttft_ms,
            });
        }
    }
    Ok(out)
}

/// Requests waiting in each model group's queue, by priority (one backend call per group).
pub(crate) async fn queue_depths(
    topology: &Topology,
    queue: &dyn QueueBackend,
) -> Result<Vec<QueueDepth>, RouterError> {
    let mut out = Vec::new();
    for group in topology.groups().map(|g| &g.name) {
        let depths = queue
            .depth_by_priority(group)
            .await
            .map_err(RouterError::backend)?;
        out.extend(depths.into_iter().map(|(priority, waiting)| QueueDepth {
            group: group.clone(),
            priority: priority.get(),
            waiting,
        }));
    }
    Ok(out)
}

/// Every group's queue status (one backend call per group, never a walk over the entries).
pub(crate) async fn queue_status(
    topology: &Topology,
    status: &dyn admission::QueueStatus,
) -> Result<Vec<GroupQueueStatus>, RouterError> {
    let mut out = Vec::new();
    for group in topology.groups().map(|g| &g.name) {
        let s = status
            .group_status(group, admission::STATUS_BANDS)
            .await
            .map_err(RouterError::backend)?;
        out.push(GroupQueueStatus {
            group: group.clone(),
            status: s,
        });
    }
    Ok(out)
}
