//! `router_settings` validated into the [`Policy`], and `default_litellm_params` parsed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value};

use super::groups::ModelGroup;
use super::policy::{CachePolicy, Fallbacks, JobSettings, Policy, QueueSettings, RedisFailureMode};
use super::values::{count, secs, secs_or_zero};
use crate::config::{FallbackTargets, LitellmParams, RouterSettings};
use crate::error::RouterError;
use crate::strategy::Strategy;

/// Validates `router_settings` (fallbacks must name groups of `groups`).
/// `skipped` names groups whose every deployment was skipped (unsupported provider): fallbacks may name them
/// (the walk passes over them).
pub(super) fn policy(
    s: &RouterSettings,
    groups: &BTreeMap<String, ModelGroup>,
    skipped: &[&str],
) -> Result<Policy, RouterError> {
    let p = |k: &str| format!("router_settings.{k}");
    let strategy = match s.routing_strategy.as_deref() {
        None => Strategy::SimpleShuffle,
        Some(name) => Strategy::parse(name).ok_or_else(|| {
            RouterError::config(
                p("routing_strategy"),
                format!(
                    "unknown routing strategy `{name}` (supported: simple-shuffle, usage-based-routing, \
                     usage-based-routing-v2, least-busy, latency-based-routing)"
                ),
            )
        })?,
    };
    let args = s.routing_strategy_args.clone().unwrap_or_default();
    let lowest_latency_buffer = match args.lowest_latency_buffer {
        None => 0.0,
        Some(b) if b.is_finite() && b >= 0.0 => b,
        Some(b) => {
            return Err(RouterError::config(
                p("routing_strategy_args.lowest_latency_buffer"),
                format!("must be a non-negative number, got {b}"),
            ))
        }
    };
    let latency_ttl =
        secs(args.ttl, &p("routing_strategy_args.ttl"))?.unwrap_or(Duration::from_secs(1));

    let cooldown_time = if s.disable_cooldowns == Some(true) {
        Duration::ZERO
    } else {
        secs_or_zero(s.cooldown_time, &p("cooldown_time"))?.unwrap_or(Duration::from_secs(5))
    };
    let timeout = secs(s.timeout, &p("timeout"))?.unwrap_or(Duration::from_secs(600));
    let stream_timeout = secs(s.stream_timeout, &p("stream_timeout"))?;

    let known = |g: &str| groups.contains_key(g) || skipped.contains(&g);
    let fallbacks = fallbacks(
        s.fallbacks.as_deref(),
        s.default_fallbacks.as_deref(),
        "fallbacks",
        &known,
    )?;
    let context_window_fallbacks = fallbacks_of(
        s.context_window_fallbacks.as_deref(),
        "context_window_fallbacks",
        &known,
    )?;
    let content_policy_fallbacks = fallbacks_of(
        s.content_policy_fallbacks.as_deref(),
        "content_policy_fallbacks",
        &known,
    )?;

    let cache = if s.cache_responses == Some(true) {
        let c = s.cache_kwargs.clone().unwrap_or_default();
        let own_redis = own_cache_redis(&c, s)?;
        let redis = match c.cache_type.as_deref() {
            // A host of its own means a Redis cache, as in LiteLLM.
            None if own_redis.is_some() => Some(true),
            None => None,
            Some("local" | "memory" | "in-memory") => Some(false),
            Some("redis") => Some(true),
            Some(other) => {
                return Err(RouterError::config(
                    p("cache_kwargs.type"),
                    format!("unknown cache type `{other}` (supported: local, redis)"),
                ))
            }
        };
        Some(CachePolicy {
            redis,
            ttl: secs(c.ttl, &p("cache_kwargs.ttl"))?.unwrap_or(Duration::from_secs(600)),
            max_size_bytes: c.max_size_bytes.unwrap_or(64 << 20),
            own_redis,
        })
    } else {
        None
    };

    let default_priority = match s.default_priority {
        None => 128,
        Some(v) => u32::try_from(v)
            .ok()
            .filter(|v| *v <= queue_core::Priority::MAX.get())
            .ok_or_else(|| {
                RouterError::config(
                    p("default_priority"),
                    format!(
                        "must be within 0..={}, got {v}",
                        queue_core::Priority::MAX.get()
                    ),
                )
            })?,
    };
    let queue = QueueSettings {
        polling_interval: secs(s.polling_interval, &p("polling_interval"))?
            .unwrap_or(Duration::from_millis(30)),
        queue_lease: secs(s.queue_lease, &p("queue_lease"))?.unwrap_or(Duration::from_secs(10)),
        replica_heartbeat: secs(s.replica_heartbeat, &p("replica_heartbeat"))?
            .unwrap_or(Duration::from_millis(250)),
        inflight_lease: secs(s.inflight_lease, &p("inflight_lease"))?
            .unwrap_or(Duration::from_secs(30)),
        default_priority,
        max_queue_depth: s.max_queue_depth.unwrap_or(10_000),
        usage_window: secs(s.usage_window, &p("usage_window"))?.unwrap_or(Duration::from_secs(60)),
        rolling_window: match s.usage_window_mode.as_deref().map(str::trim) {
            None | Some("rolling") => true,
            Some("fixed") => false,
            Some(other) => {
                return Err(RouterError::config(
                    p("usage_window_mode"),
                    format!("expected `rolling` or `fixed`, got `{other}`"),
                ))
            }
        },
        failure_mode: match s.redis_failure_mode.as_deref().map(str::trim) {
            None | Some("closed") => RedisFailureMode::Closed,
            Some("open") => RedisFailureMode::Open,
            Some(other) => {
                return Err(RouterError::config(
                    p("redis_failure_mode"),
                    format!("expected `closed` or `open`, got `{other}`"),
                ))
            }
        },
        default_max_tokens: s.default_max_tokens,
        jobs: JobSettings {
            workers: count(s.job_workers, &p("job_workers"))?.unwrap_or(4),
            max_attempts: count(s.job_max_attempts, &p("job_max_attempts"))?.unwrap_or(3),
            ttl: secs(s.job_ttl, &p("job_ttl"))?.unwrap_or(Duration::from_secs(86_400)),
            lease: secs(s.job_lease, &p("job_lease"))?.unwrap_or(Duration::from_secs(10)),
        },
    };
    if queue.jobs.max_attempts == 0 {
        return Err(RouterError::config(
            p("job_max_attempts"),
            "must be at least 1",
        ));
    }
    if queue.jobs.lease < Duration::from_millis(300) {
        return Err(RouterError::config(
            p("job_lease"),
            "must be at least 0.3 seconds",
        ));
    }
    if queue.polling_interval.is_zero() {
        return Err(RouterError::config(
            p("polling_interval"),
            "must be greater than 0",
        ));
    }
    if queue.replica_heartbeat < Duration::from_millis(10) {
        return Err(RouterError::config(
            p("replica_heartbeat"),
            "must be at least 0.01 seconds",
        ));
    }
    if queue.queue_lease < queue.replica_heartbeat * 3 {
        return Err(RouterError::config(
            p("queue_lease"),
            "must be at least three replica heartbeats (a replica counts as dead after three missed ones)",
        ));
    }
    if queue.inflight_lease < Duration::from_millis(300) {
        return Err(RouterError::config(
            p("inflight_lease"),
            "must be at least 0.3 seconds",
        ));
    }
    if queue.usage_window < Duration::from_millis(100) {
        return Err(RouterError::config(
            p("usage_window"),
            "must be at least 0.1 seconds",
        ));
    }

    let mut group_retry_policy = std::collections::HashMap::new();
    for (group, policy) in s.model_group_retry_policy.iter().flatten() {
        if !known(group) {
            return Err(RouterError::config(
                format!("router_settings.model_group_retry_policy.{group}"),
                format!("unknown model group `{group}`"),
            ));
        }
        group_retry_policy.insert(group.clone(), *policy);
    }

    Ok(Policy {
        strategy,
        lowest_latency_buffer,
        latency_ttl,
        num_retries: count(s.num_retries, &p("num_retries"))?.unwrap_or(2),
        retry_policy: s.retry_policy.unwrap_or_default(),
        group_retry_policy,
        retry_after: secs_or_zero(s.retry_after, &p("retry_after"))?.unwrap_or(Duration::ZERO),
        drop_params: s.drop_params.unwrap_or(false),
        cooldown: usage_tracker::CooldownPolicy {
            cooldown_time,
            allowed_fails: count(s.allowed_fails, &p("allowed_fails"))?.unwrap_or(3),
            allowed_fails_policy: s.allowed_fails_policy.unwrap_or_default(),
        },
        timeout,
        stream_timeout,
        fallbacks,
        context_window_fallbacks,
        content_policy_fallbacks,
        max_fallbacks: count(s.max_fallbacks, &p("max_fallbacks"))?.unwrap_or(5),
        pre_call_checks: s.enable_pre_call_checks.unwrap_or(false),
        cache,
        queue,
    })
}

/// The cache's own Redis when `cache_kwargs` (LiteLLM's `cache_params`) names a `host`: URL built as for
/// the router's `redis_host`, errors naming the cache's keys.
fn own_cache_redis(
    c: &crate::config::CacheSettings,
    s: &RouterSettings,
) -> Result<Option<store::RedisConfig>, RouterError> {
    let Some(host) = c.host.as_deref().filter(|h| !h.trim().is_empty()) else {
        return crate::backend::own_cache_topology(s, c);
    };
    let as_router = RouterSettings {
        redis_host: Some(host.to_owned()),
        redis_port: c.port,
        redis_password: c.password.clone(),
        key_prefix: c.namespace.clone().or_else(|| s.key_prefix.clone()),
        ..RouterSettings::default()
    };
    let rename = |path: String| {
        path.replace("router_settings.redis_", "router_settings.cache_kwargs.")
            .replace(
                "router_settings.key_prefix",
                "router_settings.cache_kwargs.namespace",
            )
    };
    match crate::BackendChoice::from_settings(&as_router, |_| None) {
        Ok(crate::BackendChoice {
            backend: crate::Backend::Redis(cfg),
            ..
        }) => Ok(Some(cfg)),
        Ok(_) => Ok(None),
        Err(RouterError::InvalidConfig { path, message }) => {
            Err(RouterError::config(rename(path), message))
        }
        Err(other) => Err(other),
    }
}

fn fallbacks_of(
    list: Option<&[BTreeMap<String, FallbackTargets>]>,
    key: &str,
    known: &dyn Fn(&str) -> bool,
) -> Result<Fallbacks, RouterError> {
    fallbacks(list, None, key, known)
}

fn fallbacks(
    list: Option<&[BTreeMap<String, FallbackTargets>]>,
    default: Option<&[String]>,
    key: &str,
    known: &dyn Fn(&str) -> bool,
) -> Result<Fallbacks, RouterError> {
    let mut out = Fallbacks::default();
    for (i, map) in list.unwrap_or_default().iter().enumerate() {
        for (from, to) in map {
            let path = format!("router_settings.{key}[{i}].{from}");
            if from != "*" && !known(from) {
                return Err(RouterError::config(
                    path,
                    format!("unknown model group `{from}`"),
                ));
            }
            let to = to.groups();
            for (j, g) in to.iter().enumerate() {
                if !known(g) {
                    return Err(RouterError::config(
                        format!("{path}[{j}]"),
                        format!("unknown model group `{g}`"),
                    ));
                }
            }
            if from == "*" {
                out.wildcard = to;
            } else {
                out.by_group.insert(from.clone(), to);
            }
        }
    }
    for (j, g) in default.unwrap_or_default().iter().enumerate() {
        if !known(g) {
            return Err(RouterError::config(
                format!("router_settings.default_fallbacks[{j}]"),
                format!("unknown model group `{g}`"),
            ));
        }
        out.default.push(g.clone());
    }
    Ok(out)
}

/// `default_litellm_params` parsed like a deployment's `litellm_params` (without `model`).
pub(super) fn default_params(s: &RouterSettings) -> Result<Option<LitellmParams>, RouterError> {
    let Some(map) = &s.default_litellm_params else {
        return Ok(None);
    };
    let mut obj: Map<String, Value> = map.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if obj.contains_key("model") {
        return Err(RouterError::config(
            "router_settings.default_litellm_params.model",
            "a default model makes no sense; set it per deployment",
        ));
    }
    obj.insert("model".into(), Value::String(String::new()));
    serde_path_to_error::deserialize(Value::Object(obj))
        .map(Some)
        .map_err(|e| {
            RouterError::config(
                format!("router_settings.default_litellm_params.{}", e.path()),
                e.into_inner().to_string(),
            )
        })
}
