//! Model groups, deployments, routing strategies, admission, retries, fallbacks and provider clients.
//!
//! The [`Router`] is LiteLLM's Router as a Rust library: it reads LiteLLM's `model_list` and
//! `router_settings`, spreads requests over the deployments of a model group with a routing strategy,
//! admits requests in global priority order across every replica sharing the backend (queue-core +
//! usage-tracker, composed into one atomic admission step), calls the upstream (OpenAI, OpenAI-compatible
//! servers by LiteLLM's provider prefixes, Azure, Anthropic natively, mock responses), retries, falls back
//! to other groups, cools failing deployments down and caches responses.
//!
//! Admission: a request first tries the fast path, one atomic step (one Redis round trip) that reserves a
//! deployment when nobody of equal or better priority waits and a deployment has headroom, and otherwise
//! enqueues it in the group's sorted set. One poller per replica and group with local waiters then admits
//! from the global head whenever capacity returns (next-capacity hint, `polling_interval`, or a pub/sub
//! wake-up), granting entries to whichever replica owns them. Finishing a request (release) runs the same
//! admission step, so freed capacity goes to the head of the queue with no extra round trip. The
//! uncontended path costs two round trips: submit and release.
//!
//! Coming from LiteLLM's Python `Router`:
//!
//! | LiteLLM | here |
//! | --- | --- |
//! | `Router(model_list=..., **router_settings)` | [`Router::new`]`(`[`RouterConfig`]`, `[`Backend`]`)`; the config from `config.yaml` text ([`RouterConfig::from_yaml_str`]) or JSON ([`RouterConfig::from_json`]) |
//! | `redis_host=`, `redis_port=`, `redis_password=` | [`BackendChoice::from_settings`] on the same [`RouterSettings`] keys (or `REDIS_URL`) gives the [`Backend`] |
//! | `await router.schedule_acompletion(model=..., messages=..., priority=0)` | `router.completion(RouterRequest::from_json(Endpoint::ChatCompletions, json!({"model": ..., "messages": ..., "priority": 0}))?).await` |
//! | `await router.acompletion(model=..., messages=..., priority=0)` | the same call: every request is scheduled, so `priority` always orders it when capacity is short (without one it gets `default_priority`) |
//! | `timeout=` on the call or the router | the body's `timeout` (or [`RouterRequest::timeout`]), else `router_settings.timeout`: one deadline for the wait and the upstream calls |
//! | `litellm.Timeout` / `RateLimitError` / ... | [`RouterError`]: [`RouterError::status_code`] is LiteLLM's status (408 for timeouts, 429, 500, ...) |
//! | `router.aembedding(...)`, `router.atext_completion(...)` | [`Endpoint::Embeddings`], [`Endpoint::Completions`] |
//! | `stream=True` | the body's `"stream": true`: [`ResponseBody::Stream`] yields the server-sent events |
//!
//! Runnable: `cargo run -p router --example quick_start` (LiteLLM's scheduler quick start: `rpm: 1`,
//! `timeout: 2`, `polling_interval: 0.03`, `priority: 0`) and `cargo run -p router --example shared_queue`
//! (the same on Redis, so several processes share one queue); both run in the test suite.
//!
//! Layout:
//! - `router`: [`Router`], the public API: builds the parts below from the config and answers from them.
//! - `walk`: the request path: the response cache, the request's controls, the groups tried in order with
//!   fallbacks (context-window and content-policy ones too); `walk/attempts`: one group's attempts with
//!   retries and backoff; `walk/job`: the request on its way and its token estimate.
//! - `order`: the one place the routing strategy orders a group's deployments, for a request and for the
//!   admission steps of the queue pollers.
//! - `strategy`: [`RoutingStrategy`] and the orders it produces (weighted shuffle, latency, tiers).
//! - `capacity`: where requests take capacity from the admission crate's [`admission::Scheduler`] and give
//!   it back ([`SchedulerStats`]); cooldowns are applied there.
//! - `leases`: the in-flight leases of this replica's requests and their renewal.
//! - `stream`: relaying streams chunk by chunk and settling when they end.
//! - `text_completion`: `/v1/completions` on a chat-only deployment, sent as chat and answered as text.
//! - `stream_cache`: streamed answers gathered for the response cache, cached answers replayed as streams.
//! - `health_check`: [`HealthCheck`]: LiteLLM's health checks, a small call to every deployment, failures
//!   cooling it down.
//! - `info`: [`DeploymentInfo`], [`DeploymentHealth`], [`QueueDepth`]: what the router reports about itself.
//! - `topology`: the validated runtime model: `config` validated (key paths in errors) into deployments with
//!   stable ids, model groups and the policy; the provider table (prefix -> how the upstream is spoken to:
//!   [`providers`], [`provider_table_markdown`]); entries with an unsupported prefix ([`SkippedDeployment`]).
//! - `config`: [`RouterConfig`], [`ModelListEntry`], [`LitellmParams`], [`RouterSettings`]: LiteLLM's config
//!   shapes (serde; numeric strings accepted; secrets masked in `Debug`).
//! - `environ`: [`resolve_env_reference`]: LiteLLM's `os.environ/NAME` references, the one resolver (the proxy's
//!   config loader uses it too).
//! - `params`: LiteLLM's `drop_params` and `additional_drop_params`: the body parameters a call keeps.
//! - `provider`: HTTP clients for upstreams, SSE parsing, mock responses, upstream error mapping.
//! - `provider`: HTTP clients for upstreams, SSE parsing, mock responses; Anthropic's Messages API translated
//!   to and from OpenAI's shapes (`provider/anthropic`, `provider/anthropic_stream`); the one mapping of
//!   provider error payloads (`provider/errors`).
//! - `cache`: the response cache (memory or Redis), keyed by a hash of the normalised request.
//! - `request`: [`RouterRequest`] (with the caller's permission to override routing, [`OVERRIDE_FIELDS`]),
//!   [`RouterResponse`], [`ResponseMeta`] (with its [`AnswerSource`]), [`Endpoint`], [`CacheControl`].
//! - `backend`: [`Backend`] (memory or Redis), [`BackendChoice`] (which one `router_settings` or `REDIS_URL`
//!   names) and the shared Redis pool.
//! - `metrics`: [`RouterMetrics`] counters and latency histograms.
//! - `error`: [`RouterError`].
//!
//! ```no_run
//! use router::{Backend, Endpoint, ResponseBody, Router, RouterConfig, RouterRequest};
//!
//! # async fn demo() -> Result<(), router::RouterError> {
//! let config = RouterConfig::from_yaml_str(
//!     r#"
//! model_list:
//!   - model_name: gpt-4o
//!     litellm_params: { model: openai/gpt-4o, api_key: os.environ/OPENAI_API_KEY, rpm: 100 }
//!   - model_name: gpt-4o
//!     litellm_params: { model: azure/gpt-4o-eu, api_base: "https://eu.openai.azure.com", api_key: os.environ/AZURE_KEY }
//! router_settings: { routing_strategy: simple-shuffle, num_retries: 2 }
//! "#,
//! )?;
//! let router = Router::new(config, Backend::Memory).await?;
//! let body = serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
//! let response = router.completion(RouterRequest::from_json(Endpoint::ChatCompletions, body)?).await?;
//! if let ResponseBody::Json(v) = response.body {
//!     println!("{} answered after {} attempt(s): {v}", response.meta.deployment_id, response.meta.attempts);
//! }
//! # Ok(()) }
//! ```

mod backend;
mod cache;
mod capacity;
mod config;
mod environ;
mod error;
mod health_check;
mod info;
mod jobs;
mod leases;
mod metrics;
mod order;
mod params;
mod provider;
mod request;
mod router;
mod strategy;
mod stream;
mod stream_cache;
mod text_completion;
mod topology;
mod walk;

pub use admission::{Band, GroupStatus, SchedulerStats};
pub use backend::{Backend, BackendChoice};
pub use config::{
    AliasTarget, CacheSettings, FallbackTargets, LitellmParams, ModelInfo, ModelListEntry,
    NodePort, RedisNode, RetryPolicy, RouterConfig, RouterSettings, RoutingStrategyArgs, Secret,
};
pub use environ::{resolve_env_reference, EnvValue};
pub use error::{RouterError, UpstreamError, UpstreamErrorKind};
pub use health_check::HealthCheck;
pub use info::{DeploymentHealth, DeploymentInfo, GroupQueueStatus, QueueDepth};
pub use jobs::{JobCaller, JobOutcome, JobPhase, JobReport, JobStats, JobTicket, CLAIM_EVERY};
pub use metrics::{Histogram, MetricsSnapshot, RouterMetrics, LATENCY_BUCKETS};
pub use params::openai_params;
pub use request::{
    AnswerSource, CacheControl, Endpoint, ResponseBody, ResponseMeta, RouterRequest,
    RouterResponse, CLIENT_CREDENTIAL_FIELDS, OVERRIDE_FIELDS, ROUTER_ONLY_FIELDS,
};
pub use router::Router;
pub use strategy::RoutingStrategy;
pub use topology::{
    implements_litellm_param, provider_table_markdown, providers, ProviderInfo, RedisFailureMode,
    SkippedDeployment,
};
