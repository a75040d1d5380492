//! LiteLLM's health checks: one small call to every deployment; a failure that counts against a deployment
//! cools it down, so requests avoid it until the next check or the cooldown's end.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use usage_tracker::UsageStore;

use crate::provider::{Call, Providers};
use crate::request::Endpoint;
use crate::topology::{Deployment, Topology};

/// The longest a health check call may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// What one deployment's health check found.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthCheck {
    /// Stable deployment id.
    pub id: String,
    /// Model group.
    pub group: String,
    /// `litellm_params.model`.
    pub model: String,
    /// Upstream base URL (empty for mock deployments).
    pub api_base: String,
    /// Whether the call succeeded.
    pub healthy: bool,
    /// Why not (the upstream's message, without keys).
    pub error: Option<String>,
    /// The cooldown the failure put on the deployment.
    pub cooldown: Option<Duration>,
}

/// Checks every deployment at once; failures that count against a deployment (LiteLLM's rule: 401, 404,
/// 408, 429, 5xx, connection) cool it down for its `cooldown_time`.
pub(crate) async fn check_all(
    topology: &Topology,
    providers: &Providers,
    usage: &Arc<dyn UsageStore>,
) -> Vec<HealthCheck> {
    let checks = topology
        .groups()
        .flat_map(|g| g.deployments.iter())
        .map(|d| check_one(topology, providers, usage, d));
    futures::future::join_all(checks).await
}

async fn check_one(
    topology: &Topology,
    providers: &Providers,
    usage: &Arc<dyn UsageStore>,
    d: &Arc<Deployment>,
) -> HealthCheck {
    let (endpoint, body) = probe(d);
    let timeout = d
        .timeout
        .unwrap_or(topology.policy().timeout)
        .min(CHECK_TIMEOUT);
    let reply = providers
        .call(Call {
            deployment: d,
            endpoint,
            body: &body,
            stream: false,
            timeout,
            mock_response: None,
            mock_delay: None,
            prompt_tokens: 1,
        })
        .await;
    let mut check = HealthCheck {
        id: d.id.clone(),
        group: d.group.clone(),
        model: d.litellm_model.clone(),
        api_base: d.api_base.clone(),
        healthy: reply.is_ok(),
        error: None,
        cooldown: None,
    };
    if let Err(e) = reply {
        tracing::warn!(group = %d.group, deployment = %d.id, error = %e, "health check failed");
        check.error = Some(e.to_string());
        let length = d
            .cooldown_time
            .unwrap_or(topology.policy().cooldown.cooldown_time);
        if e.triggers_cooldown() && !length.is_zero() {
            match usage.cooldown(&d.dref, length, "health check failed").await {
                Ok(()) => check.cooldown = Some(length),
                Err(err) => {
                    tracing::warn!(deployment = %d.id, error = %err, "health check cooldown failed");
                }
            }
        }
    }
    check
}

/// The smallest request of the deployment's mode (`model_info.mode`: chat by default).
fn probe(d: &Deployment) -> (Endpoint, Map<String, Value>) {
    let (endpoint, body) = match d.model_info.get("mode").and_then(Value::as_str) {
        Some("embedding") => (Endpoint::Embeddings, json!({"input": "ping"})),
        Some("completion") => (
            Endpoint::Completions,
            json!({"prompt": "ping", "max_tokens": 1}),
        ),
        _ => (
            Endpoint::ChatCompletions,
            json!({"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}),
        ),
    };
    match body {
        Value::Object(map) => (endpoint, map),
        _ => (endpoint, Map::new()),
    }
}
