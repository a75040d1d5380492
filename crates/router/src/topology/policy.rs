//! [`Policy`]: the validated `router_settings` (strategy, retries, timeouts, fallbacks, cache, admission,
//! [`RedisFailureMode`]).

use std::collections::HashMap;
use std::time::Duration;

use crate::config::RetryPolicy;
use crate::strategy::Strategy;

/// Validated `router_settings`.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) strategy: Strategy,
    pub(crate) lowest_latency_buffer: f64,
    pub(crate) latency_ttl: Duration,
    pub(crate) num_retries: u32,
    pub(crate) retry_policy: RetryPolicy,
    /// `model_group_retry_policy`: a group's own policy, replacing `retry_policy` for it.
    pub(crate) group_retry_policy: HashMap<String, RetryPolicy>,
    /// `retry_after`: least wait before a retry that has no other deployment to go to.
    pub(crate) retry_after: Duration,
    /// `drop_params` of deployments that set none.
    pub(crate) drop_params: bool,
    /// allowed_fails, allowed_fails_policy and the router-wide cooldown_time.
    pub(crate) cooldown: usage_tracker::CooldownPolicy,
    pub(crate) timeout: Duration,
    pub(crate) stream_timeout: Option<Duration>,
    pub(crate) fallbacks: Fallbacks,
    pub(crate) context_window_fallbacks: Fallbacks,
    pub(crate) content_policy_fallbacks: Fallbacks,
    pub(crate) max_fallbacks: u32,
    pub(crate) pre_call_checks: bool,
    pub(crate) cache: Option<CachePolicy>,
    pub(crate) queue: QueueSettings,
}

/// Settings of priority admission.
#[derive(Debug, Clone)]
pub(crate) struct QueueSettings {
    pub(crate) polling_interval: Duration,
    /// How long a replica's waiting requests keep their place after its heartbeat lapsed.
    pub(crate) queue_lease: Duration,
    /// How often a replica with waiting or in-flight requests runs a step (its liveness: three of them).
    pub(crate) replica_heartbeat: Duration,
    /// How long an in-flight slot lives without renewal.
    pub(crate) inflight_lease: Duration,
    pub(crate) default_priority: u32,
    pub(crate) max_queue_depth: u64,
    pub(crate) usage_window: Duration,
    /// rpm and tpm over a rolling window (`usage_window_mode: rolling`, the default) or fixed windows.
    pub(crate) rolling_window: bool,
    /// What admission does while Redis does not answer.
    pub(crate) failure_mode: RedisFailureMode,
    pub(crate) default_max_tokens: Option<u64>,
    pub(crate) jobs: JobSettings,
}

/// Durable jobs: this replica's workers, the runner lease, the attempt cap and how long results stay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobSettings {
    pub(crate) workers: u32,
    pub(crate) max_attempts: u32,
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
}

/// Response cache settings.
#[derive(Debug, Clone)]
pub(crate) struct CachePolicy {
    /// `Some(true)`: Redis, `Some(false)`: memory, `None`: follow the backend.
    pub(crate) redis: Option<bool>,
    pub(crate) ttl: Duration,
    pub(crate) max_size_bytes: u64,
    /// `cache_params.host`/`port`/`password`: a Redis of the cache's own (its `Debug` masks the password).
    pub(crate) own_redis: Option<store::RedisConfig>,
}

/// group -> fallback groups, plus the `*` entry.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fallbacks {
    pub(super) by_group: HashMap<String, Vec<String>>,
    pub(super) wildcard: Vec<String>,
    pub(super) default: Vec<String>,
}

impl Policy {
    /// The retry policy of `group`: its `model_group_retry_policy` entry, else `retry_policy`.
    pub(crate) fn retry_policy_of(&self, group: &str) -> &RetryPolicy {
        self.group_retry_policy
            .get(group)
            .unwrap_or(&self.retry_policy)
    }
}

impl Fallbacks {
    /// The fallback groups of `group`: its own entry, else `*`, else the defaults.
    pub(crate) fn for_group(&self, group: &str) -> &[String] {
        if let Some(v) = self.by_group.get(group) {
            return v;
        }
        if !self.wildcard.is_empty() {
            return &self.wildcard;
        }
        &self.default
    }
}

/// What admission does while Redis does not answer (`router_settings.redis_failure_mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RedisFailureMode {
    /// Requests get 503 with Retry-After (the default).
    #[default]
    Closed,
    /// Each replica admits with its share of every limit (limit / live replicas) in memory, and goes back
    /// to Redis as soon as it answers.
    Open,
}

impl RedisFailureMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisFailureMode::Closed => "closed",
            RedisFailureMode::Open => "open",
        }
    }
}
