//! LiteLLM's `model_list` and `router_settings` as serde types, exactly as users write them.
//!
//! Everything is optional here; [`crate::Router::new`] validates into runtime types and names the key path of
//! anything wrong. Numeric fields also accept numeric strings (`rpm: "100"`), as LiteLLM does.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// The pieces of a LiteLLM `config.yaml` the router uses: `model_list` and `router_settings`.
///
/// Other top-level keys (`litellm_settings`, `general_settings`, ...) are ignored here, so a whole
/// `config.yaml` document deserializes into this type.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RouterConfig {
    /// The deployments; entries sharing a `model_name` form one model group.
    #[serde(default)]
    pub model_list: Vec<ModelListEntry>,
    /// `router_settings`.
    #[serde(default, rename = "router_settings")]
    pub settings: RouterSettings,
}

/// One `model_list` entry: a deployment of the model group `model_name`.
#[derive(Clone, Debug, Deserialize)]
pub struct ModelListEntry {
    /// The model group clients ask for.
    pub model_name: String,
    /// How to reach and limit the deployment.
    pub litellm_params: LitellmParams,
    /// Descriptive data: stable id, context size.
    #[serde(default)]
    pub model_info: Option<ModelInfo>,
    /// Requests per minute (LiteLLM also accepts it beside `litellm_params`; `litellm_params.rpm` wins).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub rpm: Option<u64>,
    /// Tokens per minute (as `rpm`).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub tpm: Option<u64>,
    /// Keys this project does not implement (the proxy reports them).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `litellm_params` of a deployment.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct LitellmParams {
    /// `provider/model`, e.g. `openai/gpt-4o`, `azure/my-deployment`, `hosted_vllm/meta-llama/Llama-3-8B`.
    pub model: String,
    /// Base URL of the upstream API.
    #[serde(default)]
    pub api_base: Option<String>,
    /// API key (masked in `Debug`).
    #[serde(default)]
    pub api_key: Option<Secret>,
    /// Azure `api-version`.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub api_version: Option<String>,
    /// Requests per usage window.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub rpm: Option<u64>,
    /// Tokens per usage window.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub tpm: Option<u64>,
    /// Relative share of traffic for simple-shuffle.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub weight: Option<f64>,
    /// Priority tier: lower orders are used first while they have capacity.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub order: Option<u64>,
    /// Upstream timeout in seconds.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub timeout: Option<f64>,
    /// Timeout to the first streamed chunk in seconds.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub stream_timeout: Option<f64>,
    /// Maximum concurrent requests on this deployment, across replicas.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_parallel_requests: Option<u64>,
    /// Cooldown length in seconds for this deployment (0 disables cooldowns).
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub cooldown_time: Option<f64>,
    /// Retries of a request that failed on this deployment.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub num_retries: Option<u64>,
    /// Answer every request with this text instead of calling an upstream (or raise the named error:
    /// `litellm.RateLimitError`, `litellm.InternalServerError`, `litellm.ContextWindowExceededError`).
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub mock_response: Option<String>,
    /// Delay in seconds before a mock response.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub mock_delay: Option<f64>,
    /// Free-form tags.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Other parameters: OpenAI body parameters (`temperature`, `max_tokens`, ...) become defaults of the upstream
    /// body, `extra_headers` and `organization` become headers, `extra_body` is merged into the body; the rest is
    /// ignored (the proxy reports it).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `model_info` of a deployment.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ModelInfo {
    /// Stable deployment id; without it the id is a hash of the entry.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub id: Option<String>,
    /// Largest prompt the deployment accepts, in tokens.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_input_tokens: Option<u64>,
    /// The underlying model (informational).
    #[serde(default)]
    pub base_model: Option<String>,
    /// Other keys (costs, modes, ...), informational.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `router_settings`: routing, reliability, cache and scheduler settings. All optional.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RouterSettings {
    /// `simple-shuffle` (default), `usage-based-routing`, `usage-based-routing-v2`, `least-busy`,
    /// `latency-based-routing`.
    #[serde(default)]
    pub routing_strategy: Option<String>,
    /// Strategy arguments (`lowest_latency_buffer`, `ttl`).
    #[serde(default)]
    pub routing_strategy_args: Option<RoutingStrategyArgs>,
    /// Retries within a model group (default 2).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub num_retries: Option<u64>,
    /// Retries per error class, overriding `num_retries`.
    #[serde(default)]
    pub retry_policy: Option<RetryPolicy>,
    /// `retry_policy` per model group: a group named here uses its own policy instead of `retry_policy`.
    #[serde(default)]
    pub model_group_retry_policy: Option<BTreeMap<String, RetryPolicy>>,
    /// Least seconds to wait before retrying when no other deployment of the group can take the retry
    /// (default 0: the upstream's Retry-After or the backoff alone).
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub retry_after: Option<f64>,
    /// Drop body parameters that are not OpenAI parameters of the endpoint instead of sending them upstream
    /// (LiteLLM's `drop_params`, also in `litellm_settings`; a deployment's own `drop_params` wins).
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub drop_params: Option<bool>,
    /// Failures per minute a deployment may have before it cools down (default 3).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub allowed_fails: Option<u64>,
    /// Allowed failures per error class, overriding `allowed_fails`.
    #[serde(default)]
    pub allowed_fails_policy: Option<usage_tracker::AllowedFailsPolicy>,
    /// Cooldown length in seconds (default 5; 0 disables cooldowns).
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub cooldown_time: Option<f64>,
    /// Never cool deployments down.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub disable_cooldowns: Option<bool>,
    /// Upstream timeout in seconds (default 600).
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub timeout: Option<f64>,
    /// Timeout to the first streamed chunk in seconds (default: `timeout`).
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub stream_timeout: Option<f64>,
    /// `[{"group": ["fallback group", ...]}, ...]`; the key `*` applies to every group.
    #[serde(default)]
    pub fallbacks: Option<Vec<BTreeMap<String, FallbackTargets>>>,
    /// Fallback groups for groups without an entry in `fallbacks`.
    #[serde(default)]
    pub default_fallbacks: Option<Vec<String>>,
    /// Fallbacks for context-window errors.
    #[serde(default)]
    pub context_window_fallbacks: Option<Vec<BTreeMap<String, FallbackTargets>>>,
    /// Fallbacks for content-policy errors.
    #[serde(default)]
    pub content_policy_fallbacks: Option<Vec<BTreeMap<String, FallbackTargets>>>,
    /// Most fallback groups one request tries (default 5).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_fallbacks: Option<u64>,
    /// Skip deployments whose `max_input_tokens` the prompt exceeds.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub enable_pre_call_checks: Option<bool>,
    /// Parameters merged into every deployment's `litellm_params` (the deployment's own win).
    #[serde(default)]
    pub default_litellm_params: Option<BTreeMap<String, Value>>,
    /// Alias -> model group (`{"gpt-4": "gpt-4o"}` or `{"gpt-4": {"model": "gpt-4o", "hidden": true}}`).
    #[serde(default)]
    pub model_group_alias: Option<BTreeMap<String, AliasTarget>>,
    /// Cache successful non-streaming responses.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub cache_responses: Option<bool>,
    /// Response cache settings.
    #[serde(default)]
    pub cache_kwargs: Option<CacheSettings>,
    /// Scheduler polling interval in seconds (default 0.03).
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub polling_interval: Option<f64>,
    /// Priority of requests that name none (default 128; lower is served first).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub default_priority: Option<u64>,
    /// Most requests waiting per model group (default 10000).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_queue_depth: Option<u64>,
    /// Seconds a replica's waiting requests keep their place after its heartbeat lapsed (a replica that
    /// comes back within it puts them back where they were). Default 10.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub queue_lease: Option<f64>,
    /// Seconds between a replica's heartbeats while it has waiting or in-flight requests; it counts as
    /// dead after three missed ones (its waiting requests stop being granted, its grants come back).
    /// Default 0.25.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub replica_heartbeat: Option<f64>,
    /// Seconds a request's in-flight slot survives without renewal (renewed every third of it while the
    /// request runs; a crashed replica's slots come back after this). Default 30.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub inflight_lease: Option<f64>,
    /// Durable jobs (`/queue/request`): jobs this replica runs at once (default 4; 0 = this replica runs
    /// none, others must). Not a LiteLLM setting.
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub job_workers: Option<u64>,
    /// Runs a durable job may start before it is finished with an error (its runners died; default 3).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub job_max_attempts: Option<u64>,
    /// Seconds a finished job's result is kept (default 86400).
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub job_ttl: Option<f64>,
    /// Seconds a running job's runner lease survives without renewal (renewed every third of it; a job
    /// whose runner died runs again after this). Default 10.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub job_lease: Option<f64>,
    /// Length of the RPM/TPM window in seconds (default 60).
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub usage_window: Option<f64>,
    /// How rpm and tpm are counted: `rolling` (default: at no moment do the admissions of the last
    /// `usage_window` exceed `rpm`, nor their reserved tokens `tpm`) or `fixed` (windows aligned to the
    /// clock, as LiteLLM's per-minute counters: up to twice a limit across a window boundary).
    #[serde(default)]
    pub usage_window_mode: Option<String>,
    /// What admission does while Redis does not answer: `closed` (default: requests get 503 with
    /// Retry-After) or `open` (each replica admits with its share of every limit in memory).
    #[serde(default)]
    pub redis_failure_mode: Option<String>,
    /// Tokens reserved for the completion when a request names no `max_tokens` (default: usage-tracker's).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub default_max_tokens: Option<u64>,
    /// Redis host (with `redis_port`, `redis_password`).
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub redis_host: Option<String>,
    /// Redis port (default 6379).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub redis_port: Option<u64>,
    /// Redis password (masked in `Debug`).
    #[serde(default)]
    pub redis_password: Option<Secret>,
    /// Redis URL, `redis://[:password@]host:port[/db]` (masked in `Debug`: it may hold a password).
    #[serde(default)]
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key (default `llms:`).
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// Redis Cluster startup nodes (LiteLLM's `redis_startup_nodes`: `[{host, port}, ...]`; also
    /// `[host, port]` pairs or `"host:port"` strings). Credentials from `redis_password`, TLS from `ssl`.
    #[serde(default)]
    pub redis_startup_nodes: Option<Vec<RedisNode>>,
    /// Sentinels to ask for the primary named `service_name` (LiteLLM's `sentinel_nodes`:
    /// `[[host, port], ...]`; also `{host, port}` maps or `"host:port"` strings).
    #[serde(default)]
    pub sentinel_nodes: Option<Vec<RedisNode>>,
    /// The primary's name the Sentinels monitor (LiteLLM's `service_name`).
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub service_name: Option<String>,
    /// Password of the Sentinels themselves (masked in `Debug`); the primary's is `redis_password`.
    #[serde(default)]
    pub sentinel_password: Option<Secret>,
    /// `true`: TLS to the Redis servers (`rediss://`), as LiteLLM's `ssl`.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub ssl: Option<bool>,
    /// PEM file of the certificate authorities to check the servers' TLS certificates against
    /// (LiteLLM's `ssl_ca_certs`; default: the system's roots).
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub ssl_ca_certs: Option<String>,
    /// Keys this project does not implement (the proxy reports them).
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `routing_strategy_args`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct RoutingStrategyArgs {
    /// latency-based-routing: deployments within `(1 + buffer) * lowest latency` are picked at random.
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub lowest_latency_buffer: Option<f64>,
    /// latency-based-routing: seconds a group's latency snapshot is reused (default 1).
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub ttl: Option<f64>,
    /// Other keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// LiteLLM's `retry_policy`: retries per error class, replacing `num_retries` for that class.
#[derive(Clone, Copy, Debug, Default, Deserialize)]
pub struct RetryPolicy {
    /// `BadRequestErrorRetries` (400-class errors are never retried; accepted for compatibility).
    #[serde(
        rename = "BadRequestErrorRetries",
        default,
        deserialize_with = "lenient::opt_u32"
    )]
    pub bad_request: Option<u32>,
    /// `AuthenticationErrorRetries` (401/403 are never retried; accepted for compatibility).
    #[serde(
        rename = "AuthenticationErrorRetries",
        default,
        deserialize_with = "lenient::opt_u32"
    )]
    pub authentication: Option<u32>,
    /// `TimeoutErrorRetries`.
    #[serde(
        rename = "TimeoutErrorRetries",
        default,
        deserialize_with = "lenient::opt_u32"
    )]
    pub timeout: Option<u32>,
    /// `RateLimitErrorRetries`.
    #[serde(
        rename = "RateLimitErrorRetries",
        default,
        deserialize_with = "lenient::opt_u32"
    )]
    pub rate_limit: Option<u32>,
    /// `ContentPolicyViolationErrorRetries` (never retried; accepted for compatibility).
    #[serde(
        rename = "ContentPolicyViolationErrorRetries",
        default,
        deserialize_with = "lenient::opt_u32"
    )]
    pub content_policy_violation: Option<u32>,
    /// `InternalServerErrorRetries`: 5xx, connection failures, invalid responses.
    #[serde(
        rename = "InternalServerErrorRetries",
        default,
        deserialize_with = "lenient::opt_u32"
    )]
    pub internal_server_error: Option<u32>,
}

impl RetryPolicy {
    /// The retries the policy sets for `kind`'s class, if any.
    pub fn for_kind(&self, kind: crate::UpstreamErrorKind) -> Option<u32> {
        use crate::UpstreamErrorKind as K;
        match kind {
            K::BadRequest | K::NotFound | K::ContextWindowExceeded => self.bad_request,
            K::Authentication | K::PermissionDenied => self.authentication,
            K::Timeout => self.timeout,
            K::RateLimited => self.rate_limit,
            K::ContentPolicyViolation => self.content_policy_violation,
            K::ServiceUnavailable | K::InternalServer | K::Connection | K::InvalidResponse => {
                self.internal_server_error
            }
        }
    }
}

/// Fallback targets of one group: a list of groups (a single string is accepted too).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum FallbackTargets {
    /// `["a", "b"]`
    Many(Vec<String>),
    /// `"a"`
    One(String),
}

impl FallbackTargets {
    /// The target groups in order.
    pub fn groups(&self) -> Vec<String> {
        match self {
            Self::Many(v) => v.clone(),
            Self::One(s) => vec![s.clone()],
        }
    }
}

/// Target of a `model_group_alias` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum AliasTarget {
    /// `"group"`
    Group(String),
    /// `{"model": "group", "hidden": true}`
    Detailed {
        /// The model group.
        model: String,
        /// Leave the alias out of [`crate::Router::model_groups`].
        #[serde(default, deserialize_with = "lenient::opt_bool")]
        hidden: Option<bool>,
    },
}

/// `cache_kwargs`: response cache settings.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct CacheSettings {
    /// `local` (in memory) or `redis`; default: `redis` on the Redis backend, else `local`.
    #[serde(default, rename = "type")]
    pub cache_type: Option<String>,
    /// Seconds an entry lives (default 600).
    #[serde(default, deserialize_with = "lenient::opt_f64")]
    pub ttl: Option<f64>,
    /// Memory cache size bound in bytes (default 64 MiB).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub max_size_bytes: Option<u64>,
    /// Host of a Redis of its own for the cache (with `port`, `password`), instead of the router's.
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub host: Option<String>,
    /// Port of the cache's own Redis (default 6379).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub port: Option<u64>,
    /// Password of the cache's own Redis (masked in `Debug`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Key prefix in the cache's own Redis (LiteLLM's `namespace`; default: the router's `key_prefix`).
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub namespace: Option<String>,
    /// Redis Cluster startup nodes (LiteLLM's `redis_startup_nodes`: `[{host, port}, ...]`; also
    /// `[host, port]` pairs or `"host:port"` strings). Credentials from `password`, TLS from `ssl`.
    #[serde(default)]
    pub redis_startup_nodes: Option<Vec<RedisNode>>,
    /// Sentinels to ask for the primary named `service_name` (LiteLLM's `sentinel_nodes`:
    /// `[[host, port], ...]`; also `{host, port}` maps or `"host:port"` strings).
    #[serde(default)]
    pub sentinel_nodes: Option<Vec<RedisNode>>,
    /// The primary's name the Sentinels monitor (LiteLLM's `service_name`).
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub service_name: Option<String>,
    /// Password of the Sentinels themselves (masked in `Debug`); the primary's is `password`.
    #[serde(default)]
    pub sentinel_password: Option<Secret>,
    /// `true`: TLS to the Redis servers (`rediss://`), as LiteLLM's `ssl`.
    #[serde(default, deserialize_with = "lenient::opt_bool")]
    pub ssl: Option<bool>,
    /// PEM file of the certificate authorities to check the servers' TLS certificates against
    /// (LiteLLM's `ssl_ca_certs`; default: the system's roots).
    #[serde(default, deserialize_with = "lenient::opt_string")]
    pub ssl_ca_certs: Option<String>,
    /// Other keys.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// One Redis node: `{host, port}`, `[host, port]` or `"host:port"` (ports as numbers or strings).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RedisNode {
    /// `{host: h, port: p}`.
    Map {
        /// Host name or address.
        host: String,
        /// Port (default 6379).
        #[serde(default)]
        port: Option<NodePort>,
    },
    /// `[h, p]`.
    Pair(String, NodePort),
    /// `"h:p"`.
    Text(String),
}

/// A port written as a number or a string.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum NodePort {
    /// `7001`.
    Number(u64),
    /// `"7001"`.
    Text(String),
}

impl RedisNode {
    /// `(host, port)`, or what is wrong with it.
    pub fn address(&self) -> Result<(String, u16), String> {
        let (host, port) = match self {
            RedisNode::Map { host, port } => (host.trim().to_owned(), port.clone()),
            RedisNode::Pair(host, port) => (host.trim().to_owned(), Some(port.clone())),
            RedisNode::Text(text) => {
                let text = text.trim();
                match text.rsplit_once(':') {
                    Some((h, p)) if !h.ends_with(':') => (
                        h.trim_start_matches('[').trim_end_matches(']').to_owned(),
                        Some(NodePort::Text(p.to_owned())),
                    ),
                    _ => (text.to_owned(), None),
                }
            }
        };
        if host.is_empty() || host.contains(['/', '@', ',']) {
            return Err(format!("expected a host name or address, got {host:?}"));
        }
        let port = match port {
            None => 6379,
            Some(NodePort::Number(n)) => n,
            Some(NodePort::Text(t)) => t
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("expected a port, got {t:?}"))?,
        };
        match u16::try_from(port) {
            Ok(p) if p > 0 => Ok((host, p)),
            _ => Err(format!("expected a port in 1..=65535, got {port}")),
        }
    }
}

/// A secret string (API key, password): `Debug` prints `***`, it has no `Display` and no `Serialize`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Deserializers that accept numbers written as strings (`"100"`), as LiteLLM does.
mod lenient {
    use std::fmt;

    use serde::de::{self, Visitor};
    use serde::Deserializer;

    use super::Deserialize;

    /// A number given as a JSON/YAML number or a numeric string.
    enum Num {
        Int(i128),
        Float(f64),
    }

    struct NumVisitor;

    impl<'de> Visitor<'de> for NumVisitor {
        type Value = Option<Num>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number or a numeric string")
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(NumVisitor)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Num::Int(i128::from(v))))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Num::Int(i128::from(v))))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(Num::Float(v)))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let t = v.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if let Ok(i) = t.parse::<i128>() {
                return Ok(Some(Num::Int(i)));
            }
            match t.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Some(Num::Float(f))),
                _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
            }
        }
    }

    pub(super) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match d.deserialize_option(NumVisitor)? {
            None => Ok(None),
            Some(Num::Int(i)) => u64::try_from(i).map(Some).map_err(|_| {
                de::Error::custom(format!("expected a non-negative integer, got {i}"))
            }),
            Some(Num::Float(f)) if f >= 0.0 && f.fract() == 0.0 && f < 1.8e19 =>
            {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(Some(f as u64))
            }
            Some(Num::Float(f)) => Err(de::Error::custom(format!(
                "expected a non-negative integer, got {f}"
            ))),
        }
    }

    pub(super) fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        opt_u64(d)?
            .map(|v| u32::try_from(v).map_err(|_| de::Error::custom(format!("{v} is too large"))))
            .transpose()
    }

    pub(super) fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        match d.deserialize_option(NumVisitor)? {
            None => Ok(None),
            #[allow(clippy::cast_precision_loss)]
            Some(Num::Int(i)) => Ok(Some(i as f64)),
            Some(Num::Float(f)) => Ok(Some(f)),
        }
    }

    pub(super) fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum B {
            Bool(bool),
            Str(String),
        }
        match Option::<B>::deserialize(d)? {
            None => Ok(None),
            Some(B::Bool(b)) => Ok(Some(b)),
            Some(B::Str(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "1" => Ok(Some(true)),
                "false" | "no" | "0" => Ok(Some(false)),
                "" => Ok(None),
                _ => Err(de::Error::custom(format!("expected a boolean, got {s:?}"))),
            },
        }
    }

    /// A string; numbers are accepted and written out (`api_version: 2024-06-01` stays a string in YAML, but
    /// `id: 42` would be a number).
    pub(super) fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum S {
            Str(String),
            U(u64),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(Option::<S>::deserialize(d)?.map(|s| match s {
            S::Str(s) => s,
            S::U(u) => u.to_string(),
            S::I(i) => i.to_string(),
            S::F(f) => f.to_string(),
            S::B(b) => b.to_string(),
        }))
    }
}

impl RouterConfig {
    /// Parses a `config.yaml`-shaped JSON value, naming the key path of a type error.
    pub fn from_json(value: Value) -> Result<Self, crate::RouterError> {
        from_deserializer(value)
    }

    /// Parses `config.yaml` text (other top-level sections are ignored), naming the key path of a type error.
    pub fn from_yaml_str(text: &str) -> Result<Self, crate::RouterError> {
        let de = serde_yaml::Deserializer::from_str(text);
        from_deserializer(de)
    }
}

fn from_deserializer<'de, D>(de: D) -> Result<RouterConfig, crate::RouterError>
where
    D: Deserializer<'de>,
    D::Error: fmt::Display,
{
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        crate::RouterError::InvalidConfig {
            path: if path == "." { String::new() } else { path },
            message: e.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numeric_strings_and_numbers_are_accepted() {
        let cfg = RouterConfig::from_json(json!({
            "model_list": [{
                "model_name": "g",
                "litellm_params": {"model": "openai/x", "rpm": "100", "tpm": 2000, "weight": "2.5",
                                   "timeout": "1.5", "api_key": "sk-secret", "temperature": 0.2},
                "model_info": {"id": 42, "max_input_tokens": "8192"},
                "rpm": "7"
            }],
            "router_settings": {"num_retries": "3", "enable_pre_call_checks": "true",
                                "fallbacks": [{"g": ["h"]}, {"x": "y"}], "unknown_key": 1}
        }))
        .unwrap();
        let e = &cfg.model_list[0];
        assert_eq!(e.litellm_params.rpm, Some(100));
        assert_eq!(e.litellm_params.tpm, Some(2000));
        assert_eq!(e.litellm_params.weight, Some(2.5));
        assert_eq!(e.litellm_params.timeout, Some(1.5));
        assert_eq!(e.rpm, Some(7));
        assert_eq!(e.model_info.as_ref().unwrap().id.as_deref(), Some("42"));
        assert_eq!(e.model_info.as_ref().unwrap().max_input_tokens, Some(8192));
        assert!(e.litellm_params.extra.contains_key("temperature"));
        assert_eq!(cfg.settings.num_retries, Some(3));
        assert_eq!(cfg.settings.enable_pre_call_checks, Some(true));
        assert!(cfg.settings.extra.contains_key("unknown_key"));
        let fb = cfg.settings.fallbacks.unwrap();
        assert_eq!(fb[1]["x"].groups(), vec!["y".to_string()]);
    }

    #[test]
    fn type_errors_name_the_key_path() {
        let err = RouterConfig::from_json(json!({
            "model_list": [
                {"model_name": "a", "litellm_params": {"model": "openai/x"}},
                {"model_name": "a", "litellm_params": {"model": "openai/x", "rpm": "lots"}}
            ]
        }))
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("model_list[1].litellm_params.rpm"), "{text}");
    }

    #[test]
    fn debug_masks_secrets() {
        let cfg = RouterConfig::from_yaml_str(
            "model_list:\n  - model_name: a\n    litellm_params:\n      model: azure/x\n      api_key: sk-very-secret\nrouter_settings:\n  redis_password: hunter2\n  redis_url: redis://:hunter2@h:1\nlitellm_settings:\n  drop_params: true\n",
        )
        .unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("sk-very-secret"), "{dbg}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("***"));
    }
}
