//! Validated runtime model: deployments, model groups and the router policy, built from [`RouterConfig`].
//!
//! Validation names the key path of every problem (`model_list[2].litellm_params.rpm`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::{
    AliasTarget, FallbackTargets, LitellmParams, ModelListEntry, RetryPolicy, RouterConfig,
    RouterSettings, Secret,
};
use crate::environ::{self, EnvValue};
use crate::error::RouterError;
use crate::strategy::Strategy;

/// How a deployment's upstream is spoken to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProviderKind {
    /// OpenAI's API or any OpenAI-compatible server (vLLM, Ollama, ...): `{base}/chat/completions`, Bearer key.
    OpenAi,
    /// Azure OpenAI: `{base}/openai/deployments/{model}/...?api-version=`, `api-key` header.
    Azure,
}

/// A deployment: one upstream model endpoint of a model group.
#[derive(Debug)]
pub(crate) struct Deployment {
    /// Stable id (model_info.id or a hash of the entry), the same on every replica.
    pub(crate) id: String,
    /// The model group.
    pub(crate) group: String,
    /// (group, id) as the usage store names it.
    pub(crate) dref: usage_tracker::DeploymentRef,
    /// `litellm_params.model` as configured (`azure/my-deployment`).
    pub(crate) litellm_model: String,
    /// The provider prefix (`openai`, `azure`, `hosted_vllm`, ...).
    pub(crate) provider: String,
    pub(crate) kind: ProviderKind,
    /// The model name sent upstream (the part after the provider prefix).
    pub(crate) model: String,
    /// Base URL without trailing slash (OpenAI-compatible: the `/v1` base; Azure: the resource endpoint).
    pub(crate) api_base: String,
    pub(crate) api_key: Option<Secret>,
    pub(crate) api_version: Option<String>,
    pub(crate) rpm: Option<u64>,
    pub(crate) tpm: Option<u64>,
    /// simple-shuffle `weight`.
    pub(crate) weight: Option<f64>,
    pub(crate) max_parallel: Option<u32>,
    pub(crate) max_input_tokens: Option<u64>,
    /// `order`: lower tiers first.
    pub(crate) tier: u32,
    pub(crate) timeout: Option<Duration>,
    pub(crate) stream_timeout: Option<Duration>,
    pub(crate) cooldown_time: Option<Duration>,
    pub(crate) num_retries: Option<u32>,
    pub(crate) mock_response: Option<String>,
    pub(crate) mock_delay: Option<Duration>,
    pub(crate) tags: Vec<String>,
    /// Body parameters applied when the client did not send them.
    pub(crate) body_defaults: Map<String, Value>,
    /// `extra_body`: merged into every upstream body.
    pub(crate) extra_body: Map<String, Value>,
    /// Extra headers (`extra_headers`, `organization`).
    pub(crate) headers: Vec<(String, String)>,
    /// URLs and headers of upstream calls, built from the fields above.
    pub(crate) prepared: crate::provider::Prepared,
}

/// The deployments serving one model name.
#[derive(Debug)]
pub(crate) struct ModelGroup {
    pub(crate) name: String,
    pub(crate) deployments: Vec<Arc<Deployment>>,
    /// simple-shuffle weights, one per deployment (weight, else rpm, else tpm, else equal).
    pub(crate) shuffle_weights: Vec<f64>,
}

/// Validated `router_settings`.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) strategy: Strategy,
    pub(crate) lowest_latency_buffer: f64,
    pub(crate) latency_ttl: Duration,
    pub(crate) num_retries: u32,
    pub(crate) retry_policy: RetryPolicy,
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
    /// How long a replica's queue entries live without its heartbeat.
    pub(crate) queue_lease: Duration,
    /// How long an in-flight slot lives without renewal.
    pub(crate) inflight_lease: Duration,
    pub(crate) default_priority: u32,
    pub(crate) max_queue_depth: u64,
    pub(crate) usage_window: Duration,
    pub(crate) default_max_tokens: Option<u64>,
}

/// Response cache settings.
#[derive(Debug, Clone)]
pub(crate) struct CachePolicy {
    /// `Some(true)`: Redis, `Some(false)`: memory, `None`: follow the backend.
    pub(crate) redis: Option<bool>,
    pub(crate) ttl: Duration,
    pub(crate) max_size_bytes: u64,
}

/// group -> fallback groups, plus the `*` entry.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fallbacks {
    by_group: HashMap<String, Vec<String>>,
    wildcard: Vec<String>,
    default: Vec<String>,
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

/// Everything the router routes over, validated.
#[derive(Debug)]
pub(crate) struct Topology {
    pub(crate) groups: BTreeMap<String, ModelGroup>,
    /// alias -> (group, hidden)
    pub(crate) aliases: BTreeMap<String, (String, bool)>,
    /// Provider model string (`azure/x`) or deployment id -> (group, deployment ids).
    pub(crate) direct: HashMap<String, (String, Vec<String>)>,
    pub(crate) policy: Policy,
}

/// What a requested model name resolves to.
pub(crate) struct Target<'a> {
    pub(crate) group: &'a ModelGroup,
    /// Only these deployments (the client named a deployment's model or id).
    pub(crate) only: Option<&'a [String]>,
}

impl Topology {
    pub(crate) fn resolve(&self, model: &str) -> Option<Target<'_>> {
        if let Some(group) = self.groups.get(model) {
            return Some(Target { group, only: None });
        }
        if let Some((group, _)) = self.aliases.get(model) {
            return self
                .groups
                .get(group)
                .map(|group| Target { group, only: None });
        }
        let (group, ids) = self.direct.get(model)?;
        self.groups.get(group).map(|group| Target {
            group,
            only: Some(ids.as_slice()),
        })
    }

    pub(crate) fn group(&self, name: &str) -> Option<&ModelGroup> {
        self.groups.get(name)
    }
}

/// Where validation reads environment variables (`os.environ/` references, providers' default keys).
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Validates `config` into a [`Topology`], reading variables from the process environment.
pub(crate) fn build(config: &RouterConfig) -> Result<Topology, RouterError> {
    build_with_env(config, &environ::process_env)
}

/// Validates `config` into a [`Topology`], reading variables through `env`.
pub(crate) fn build_with_env(config: &RouterConfig, env: Env<'_>) -> Result<Topology, RouterError> {
    let defaults = default_params(&config.settings)?;
    let mut groups: BTreeMap<String, Vec<Arc<Deployment>>> = BTreeMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (i, entry) in config.model_list.iter().enumerate() {
        let path = format!("model_list[{i}]");
        let d = deployment(entry, defaults.as_ref(), &path, env)?;
        if let Some(prev) = ids.insert(d.id.clone(), i) {
            return Err(RouterError::config(
                format!("{path}.model_info.id"),
                format!(
                    "deployment id `{}` is also the id of model_list[{prev}] (identical entries, or a repeated \
                     model_info.id)",
                    d.id
                ),
            ));
        }
        groups.entry(d.group.clone()).or_default().push(Arc::new(d));
    }
    let groups: BTreeMap<String, ModelGroup> = groups
        .into_iter()
        .map(|(name, deployments)| {
            let shuffle_weights = shuffle_weights(&deployments);
            (
                name.clone(),
                ModelGroup {
                    name,
                    deployments,
                    shuffle_weights,
                },
            )
        })
        .collect();

    let mut direct: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for g in groups.values() {
        for d in &g.deployments {
            for key in [d.litellm_model.clone(), d.id.clone()] {
                if groups.contains_key(&key) {
                    continue;
                }
                let e = direct
                    .entry(key)
                    .or_insert_with(|| (g.name.clone(), Vec::new()));
                // A provider model shared by several groups routes to the first group only.
                if e.0 == g.name {
                    e.1.push(d.id.clone());
                }
            }
        }
    }

    let s = &config.settings;
    let mut aliases = BTreeMap::new();
    for (alias, target) in s.model_group_alias.iter().flatten() {
        let path = format!("router_settings.model_group_alias.{alias}");
        let (group, hidden) = match target {
            AliasTarget::Group(g) => (g.clone(), false),
            AliasTarget::Detailed { model, hidden } => (model.clone(), hidden.unwrap_or(false)),
        };
        if !groups.contains_key(&group) {
            return Err(RouterError::config(
                path,
                format!("unknown model group `{group}`"),
            ));
        }
        if groups.contains_key(alias) {
            return Err(RouterError::config(
                path,
                "an alias cannot have the name of a model group",
            ));
        }
        aliases.insert(alias.clone(), (group, hidden));
    }

    let policy = policy(s, &groups)?;
    Ok(Topology {
        groups,
        aliases,
        direct,
        policy,
    })
}

fn policy(
    s: &RouterSettings,
    groups: &BTreeMap<String, ModelGroup>,
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

    let known = |g: &str| groups.contains_key(g);
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
        let redis = match c.cache_type.as_deref() {
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
        inflight_lease: secs(s.inflight_lease, &p("inflight_lease"))?
            .unwrap_or(Duration::from_secs(30)),
        default_priority,
        max_queue_depth: s.max_queue_depth.unwrap_or(10_000),
        usage_window: secs(s.usage_window, &p("usage_window"))?.unwrap_or(Duration::from_secs(60)),
        default_max_tokens: s.default_max_tokens,
    };
    if queue.polling_interval.is_zero() {
        return Err(RouterError::config(
            p("polling_interval"),
            "must be greater than 0",
        ));
    }
    if queue.queue_lease < queue.polling_interval * 3 {
        return Err(RouterError::config(
            p("queue_lease"),
            "must be at least three polling intervals, or waiting requests would expire between heartbeats",
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

    Ok(Policy {
        strategy,
        lowest_latency_buffer,
        latency_ttl,
        num_retries: count(s.num_retries, &p("num_retries"))?.unwrap_or(2),
        retry_policy: s.retry_policy.unwrap_or_default(),
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
fn default_params(s: &RouterSettings) -> Result<Option<LitellmParams>, RouterError> {
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

/// Fills the deployment's unset parameters from `default_litellm_params`.
fn merge_defaults(mut p: LitellmParams, d: &LitellmParams) -> LitellmParams {
    macro_rules! or {
        ($($f:ident),*) => { $( if p.$f.is_none() { p.$f = d.$f.clone(); } )* };
    }
    or!(
        api_base,
        api_key,
        api_version,
        rpm,
        tpm,
        weight,
        order,
        timeout,
        stream_timeout,
        max_parallel_requests,
        cooldown_time,
        num_retries,
        mock_response,
        mock_delay,
        tags
    );
    for (k, v) in &d.extra {
        p.extra.entry(k.clone()).or_insert_with(|| v.clone());
    }
    p
}

/// Whether the router implements `key` among the untyped keys of `litellm_params`: OpenAI body parameters
/// that become defaults of every upstream request, and the header and body extras. Config loaders report
/// the other untyped keys as not implemented.
pub fn implements_litellm_param(key: &str) -> bool {
    BODY_DEFAULT_KEYS.contains(&key)
        || matches!(
            key,
            "extra_headers" | "headers" | "organization" | "extra_body"
        )
}

/// OpenAI body parameters that `litellm_params` may set as defaults for every request.
const BODY_DEFAULT_KEYS: &[&str] = &[
    "temperature",
    "top_p",
    "n",
    "max_tokens",
    "max_completion_tokens",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "seed",
    "stop",
    "user",
    "response_format",
    "reasoning_effort",
    "dimensions",
    "encoding_format",
    "parallel_tool_calls",
    "logprobs",
    "top_logprobs",
    "service_tier",
];

struct ProviderSpec {
    kind: ProviderKind,
    default_base: Option<&'static str>,
    key_env: Option<&'static str>,
    /// The base must end in `/v1` (Ollama's OpenAI-compatible API lives there).
    wants_v1: bool,
}

impl ProviderSpec {
    const OPENAI_COMPATIBLE: ProviderSpec = ProviderSpec {
        kind: ProviderKind::OpenAi,
        default_base: None,
        key_env: None,
        wants_v1: false,
    };
}

fn provider_spec(provider: &str) -> Option<ProviderSpec> {
    let openai = |default_base, key_env| ProviderSpec {
        kind: ProviderKind::OpenAi,
        default_base,
        key_env,
        wants_v1: false,
    };
    Some(match provider {
        "openai" | "text-completion-openai" => {
            openai(Some("https://api.openai.com/v1"), Some("OPENAI_API_KEY"))
        }
        "custom_openai" | "openai_like" | "litellm_proxy" => openai(None, None),
        "hosted_vllm" => openai(None, Some("HOSTED_VLLM_API_KEY")),
        "lm_studio" => openai(Some("http://localhost:1234/v1"), Some("LM_STUDIO_API_KEY")),
        "ollama" | "ollama_chat" => ProviderSpec {
            wants_v1: true,
            ..openai(Some("http://localhost:11434"), None)
        },
        "groq" => openai(Some("https://api.groq.com/openai/v1"), Some("GROQ_API_KEY")),
        "together_ai" => openai(
            Some("https://api.together.xyz/v1"),
            Some("TOGETHERAI_API_KEY"),
        ),
        "deepseek" => openai(
            Some("https://api.deepseek.com/v1"),
            Some("DEEPSEEK_API_KEY"),
        ),
        "mistral" => openai(Some("https://api.mistral.ai/v1"), Some("MISTRAL_API_KEY")),
        "fireworks_ai" => openai(
            Some("https://api.fireworks.ai/inference/v1"),
            Some("FIREWORKS_AI_API_KEY"),
        ),
        "openrouter" => openai(
            Some("https://openrouter.ai/api/v1"),
            Some("OPENROUTER_API_KEY"),
        ),
        "perplexity" => openai(
            Some("https://api.perplexity.ai"),
            Some("PERPLEXITYAI_API_KEY"),
        ),
        "deepinfra" => openai(
            Some("https://api.deepinfra.com/v1/openai"),
            Some("DEEPINFRA_API_KEY"),
        ),
        "xai" => openai(Some("https://api.x.ai/v1"), Some("XAI_API_KEY")),
        "azure" | "azure_text" => ProviderSpec {
            kind: ProviderKind::Azure,
            default_base: None,
            key_env: Some("AZURE_API_KEY"),
            wants_v1: false,
        },
        _ => return None,
    })
}

/// Azure `api-version` used when neither the deployment nor `AZURE_API_VERSION` names one.
const AZURE_DEFAULT_API_VERSION: &str = "2024-10-21";

fn deployment(
    entry: &ModelListEntry,
    defaults: Option<&LitellmParams>,
    path: &str,
    env: Env<'_>,
) -> Result<Deployment, RouterError> {
    let lp = format!("{path}.litellm_params");
    let group = entry.model_name.trim().to_owned();
    if group.is_empty() {
        return Err(RouterError::config(
            format!("{path}.model_name"),
            "must not be empty",
        ));
    }
    let id = match entry.model_info.as_ref().and_then(|i| i.id.clone()) {
        Some(id) => {
            let bad = |c: char| !c.is_ascii_graphic() || matches!(c, '{' | '}' | ':' | '|');
            if id.is_empty() || id.chars().any(bad) {
                return Err(RouterError::config(
                    format!("{path}.model_info.id"),
                    "must be non-empty printable ASCII without '{', '}', ':' or '|'",
                ));
            }
            id
        }
        None => hash_id(entry),
    };
    let params = match defaults {
        Some(d) => merge_defaults(entry.litellm_params.clone(), d),
        None => entry.litellm_params.clone(),
    };

    let full = params.model.trim().to_owned();
    if full.is_empty() {
        return Err(RouterError::config(
            format!("{lp}.model"),
            "must not be empty",
        ));
    }
    let (provider, model) = match full.split_once('/') {
        Some((p, m)) => (p.to_owned(), m.to_owned()),
        None => ("openai".to_owned(), full.clone()),
    };
    let mock_response = params.mock_response.clone();
    let spec = match provider_spec(&provider) {
        Some(s) => s,
        // A mock deployment never calls an upstream, so any provider name is fine.
        None if mock_response.is_some() => ProviderSpec::OPENAI_COMPATIBLE,
        None => {
            return Err(RouterError::config(
                format!("{lp}.model"),
                format!(
                    "provider `{provider}` is not supported; use `openai/<model>` with an `api_base` for \
                     OpenAI-compatible servers, `hosted_vllm/`, `ollama_chat/` or `azure/`"
                ),
            ))
        }
    };

    let env_str = |v: Option<String>, key: &str| -> Result<Option<String>, RouterError> {
        v.map(|v| resolve_env(&v, &format!("{lp}.{key}"), env))
            .transpose()
    };
    let mut api_key = match &params.api_key {
        Some(s) => Some(Secret::new(resolve_env(
            s.expose(),
            &format!("{lp}.api_key"),
            env,
        )?)),
        None => spec.key_env.and_then(env).map(Secret::new),
    };
    if api_key.as_ref().is_some_and(|k| k.expose().is_empty()) {
        api_key = None;
    }
    let mut api_base = env_str(params.api_base.clone(), "api_base")?;
    let mut api_version = env_str(params.api_version.clone(), "api_version")?;
    if spec.kind == ProviderKind::Azure {
        api_base = api_base.or_else(|| env("AZURE_API_BASE"));
        api_version = api_version
            .or_else(|| env("AZURE_API_VERSION"))
            .or_else(|| Some(AZURE_DEFAULT_API_VERSION.to_owned()));
    }
    let api_base = match api_base.or_else(|| spec.default_base.map(str::to_owned)) {
        Some(b) => {
            let b = b.trim().trim_end_matches('/').to_owned();
            if !(b.starts_with("http://") || b.starts_with("https://")) {
                return Err(RouterError::config(
                    format!("{lp}.api_base"),
                    format!("must be an http(s) URL, got `{b}`"),
                ));
            }
            if spec.wants_v1 && !b.ends_with("/v1") {
                format!("{b}/v1")
            } else {
                b
            }
        }
        None if mock_response.is_some() => String::new(),
        None => {
            return Err(RouterError::config(
                format!("{lp}.api_base"),
                format!("provider `{provider}` needs an api_base"),
            ))
        }
    };

    let rpm = params.rpm.or(entry.rpm);
    let tpm = params.tpm.or(entry.tpm);
    if let Some(w) = params.weight {
        if !w.is_finite() || w < 0.0 {
            return Err(RouterError::config(
                format!("{lp}.weight"),
                format!("must be a non-negative number, got {w}"),
            ));
        }
    }
    let max_parallel = params
        .max_parallel_requests
        .map(|v| {
            u32::try_from(v).map_err(|_| {
                RouterError::config(format!("{lp}.max_parallel_requests"), "is too large")
            })
        })
        .transpose()?;
    let tier = match params.order {
        None => u32::MAX,
        Some(o) => u32::try_from(o)
            .ok()
            .filter(|o| *o < u32::MAX)
            .ok_or_else(|| RouterError::config(format!("{lp}.order"), "is too large"))?,
    };

    let mut body_defaults = Map::new();
    let mut extra_body = Map::new();
    let mut headers = Vec::new();
    for (k, v) in &params.extra {
        match k.as_str() {
            "extra_headers" | "headers" => {
                let Value::Object(h) = v else {
                    return Err(RouterError::config(
                        format!("{lp}.{k}"),
                        "must be a map of header -> value",
                    ));
                };
                for (name, value) in h {
                    let value = match value {
                        Value::String(s) => resolve_env(s, &format!("{lp}.{k}.{name}"), env)?,
                        other => other.to_string(),
                    };
                    check_header(name, &value, &format!("{lp}.{k}.{name}"))?;
                    headers.push((name.clone(), value));
                }
            }
            "organization" => {
                if let Value::String(s) = v {
                    let s = resolve_env(s, &format!("{lp}.organization"), env)?;
                    check_header("OpenAI-Organization", &s, &format!("{lp}.organization"))?;
                    headers.push(("OpenAI-Organization".to_owned(), s));
                }
            }
            "extra_body" => {
                let Value::Object(b) = v else {
                    return Err(RouterError::config(
                        format!("{lp}.extra_body"),
                        "must be a map",
                    ));
                };
                extra_body.extend(b.clone());
            }
            key if BODY_DEFAULT_KEYS.contains(&key) => {
                body_defaults.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }

    let mut deployment = Deployment {
        dref: usage_tracker::DeploymentRef::new(group.as_str(), id.as_str()),
        id,
        group,
        litellm_model: full,
        provider,
        kind: spec.kind,
        model,
        api_base,
        api_key,
        api_version,
        rpm,
        tpm,
        weight: params.weight,
        max_parallel,
        max_input_tokens: entry.model_info.as_ref().and_then(|i| i.max_input_tokens),
        tier,
        timeout: secs(params.timeout, &format!("{lp}.timeout"))?,
        stream_timeout: secs(params.stream_timeout, &format!("{lp}.stream_timeout"))?,
        cooldown_time: secs_or_zero(params.cooldown_time, &format!("{lp}.cooldown_time"))?,
        num_retries: count(params.num_retries, &format!("{lp}.num_retries"))?,
        mock_delay: secs_or_zero(params.mock_delay, &format!("{lp}.mock_delay"))?,
        mock_response,
        tags: params.tags.clone().unwrap_or_default(),
        body_defaults,
        extra_body,
        headers,
        prepared: crate::provider::Prepared::default(),
    };
    deployment.prepared = crate::provider::Prepared::of(&deployment);
    Ok(deployment)
}

fn check_header(name: &str, value: &str, path: &str) -> Result<(), RouterError> {
    if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
        || reqwest::header::HeaderValue::from_str(value).is_err()
    {
        return Err(RouterError::config(path, "is not a valid HTTP header"));
    }
    Ok(())
}

/// `os.environ/NAME` -> the value of environment variable NAME; an unset variable is an error at `path`.
fn resolve_env(value: &str, path: &str, env: Env<'_>) -> Result<String, RouterError> {
    match environ::resolve_env_reference(value, env) {
        EnvValue::Literal => Ok(value.to_owned()),
        EnvValue::Resolved(v) => Ok(v),
        EnvValue::Unset(name) => Err(RouterError::config(
            path,
            format!("environment variable `{name}` is not set"),
        )),
    }
}

/// Positive seconds -> Duration.
fn secs(v: Option<f64>, path: &str) -> Result<Option<Duration>, RouterError> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(RouterError::config(
            path,
            format!("must be a positive number of seconds, got {s}"),
        )),
    }
}

/// Non-negative seconds -> Duration (0 allowed: "disabled").
fn secs_or_zero(v: Option<f64>, path: &str) -> Result<Option<Duration>, RouterError> {
    if v == Some(0.0) {
        return Ok(Some(Duration::ZERO));
    }
    secs(v, path)
}

fn count(v: Option<u64>, path: &str) -> Result<Option<u32>, RouterError> {
    v.map(|v| u32::try_from(v).map_err(|_| RouterError::config(path, format!("{v} is too large"))))
        .transpose()
}

/// A stable id for an entry without `model_info.id`: sha1 of the canonical entry, first 16 hex digits, so every
/// replica with the same config names the deployment the same way.
fn hash_id(entry: &ModelListEntry) -> String {
    let p = &entry.litellm_params;
    let canonical = json!({
        "model_name": entry.model_name,
        "litellm_params": {
            "model": p.model,
            "api_base": p.api_base,
            "api_key": p.api_key.as_ref().map(Secret::expose),
            "api_version": p.api_version,
            "rpm": p.rpm.or(entry.rpm),
            "tpm": p.tpm.or(entry.tpm),
            "weight": p.weight,
            "order": p.order,
            "timeout": p.timeout,
            "stream_timeout": p.stream_timeout,
            "max_parallel_requests": p.max_parallel_requests,
            "cooldown_time": p.cooldown_time,
            "num_retries": p.num_retries,
            "mock_response": p.mock_response,
            "mock_delay": p.mock_delay,
            "tags": p.tags,
            "extra": p.extra,
        },
    });
    let mut text = String::new();
    crate::cache::canonical_json(&canonical, &mut text);
    let digest = sha1_smol::Sha1::from(text.as_bytes()).digest().to_string();
    digest[..16].to_owned()
}

/// simple-shuffle weights, considering every deployment's own values: `weight` if any deployment sets one,
/// else `rpm`, else `tpm` (a deployment without the value gets 0), else equal.
fn shuffle_weights(deployments: &[Arc<Deployment>]) -> Vec<f64> {
    let pick = |f: &dyn Fn(&Deployment) -> Option<f64>| -> Option<Vec<f64>> {
        let v: Vec<f64> = deployments.iter().map(|d| f(d).unwrap_or(0.0)).collect();
        (deployments.iter().any(|d| f(d).is_some()) && v.iter().any(|w| *w > 0.0)).then_some(v)
    };
    #[allow(clippy::cast_precision_loss)]
    let by_rpm = |d: &Deployment| d.rpm.map(|v| v as f64);
    #[allow(clippy::cast_precision_loss)]
    let by_tpm = |d: &Deployment| d.tpm.map(|v| v as f64);
    pick(&|d: &Deployment| d.weight)
        .or_else(|| pick(&by_rpm))
        .or_else(|| pick(&by_tpm))
        .unwrap_or_else(|| vec![1.0; deployments.len()])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn topology(v: Value) -> Result<Topology, RouterError> {
        build(&RouterConfig::from_json(v)?)
    }

    #[test]
    fn shuffle_weights_consider_every_deployment() {
        let t = topology(json!({"model_list": [
            {"model_name": "g", "litellm_params": {"model": "openai/a", "rpm": 10}},
            {"model_name": "g", "litellm_params": {"model": "openai/b", "weight": 3}},
            {"model_name": "h", "litellm_params": {"model": "openai/c"}, "rpm": 5},
            {"model_name": "h", "litellm_params": {"model": "openai/d", "rpm": 15}},
        ]}))
        .unwrap();
        // A weight on any deployment wins over rpm; missing weights count 0.
        assert_eq!(t.groups["g"].shuffle_weights, vec![0.0, 3.0]);
        // The entry's top-level rpm counts.
        assert_eq!(t.groups["h"].shuffle_weights, vec![5.0, 15.0]);
    }

    #[test]
    fn environment_variables_come_from_the_lookup() {
        let config = RouterConfig::from_json(json!({"model_list": [
            {"model_name": "g", "litellm_params": {
                "model": "azure/dep", "api_key": "os.environ/ AZ_KEY",
                "extra_headers": {"x-team": "os.environ/TEAM"},
            }},
            {"model_name": "h", "litellm_params": {"model": "openai/gpt-4o"}},
        ]}))
        .unwrap();
        let vars = [
            ("AZ_KEY", "az-secret"),
            ("TEAM", "blue"),
            ("AZURE_API_BASE", "https://r.openai.azure.com"),
            ("OPENAI_API_KEY", "sk-openai"),
        ];
        let env = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        let t = build_with_env(&config, &env).unwrap();
        let g = &t.groups["g"].deployments[0];
        assert_eq!(g.api_key.as_ref().map(Secret::expose), Some("az-secret"));
        assert_eq!(g.api_base, "https://r.openai.azure.com");
        assert_eq!(g.headers, vec![("x-team".to_owned(), "blue".to_owned())]);
        let h = &t.groups["h"].deployments[0];
        assert_eq!(h.api_key.as_ref().map(Secret::expose), Some("sk-openai"));

        let err = build_with_env(&config, &|_: &str| None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("model_list[0].litellm_params.api_key") && text.contains("AZ_KEY"),
            "{text}"
        );
    }

    #[test]
    fn defaults_aliases_and_ids() {
        let t = topology(json!({
            "model_list": [
                {"model_name": "g", "litellm_params": {"model": "openai/a"}, "model_info": {"id": "my-id"}},
                {"model_name": "g", "litellm_params": {"model": "openai/b", "timeout": 2}},
            ],
            "router_settings": {
                "default_litellm_params": {"timeout": 7, "temperature": 0.3},
                "model_group_alias": {"gpt-4": "g", "hidden": {"model": "g", "hidden": true}},
            },
        }))
        .unwrap();
        let g = &t.groups["g"];
        assert_eq!(g.deployments[0].id, "my-id");
        assert!(g.deployments[1].id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(g.deployments[0].timeout, Some(Duration::from_secs(7)));
        assert_eq!(g.deployments[1].timeout, Some(Duration::from_secs(2)));
        assert_eq!(g.deployments[0].body_defaults["temperature"], json!(0.3));
        assert_eq!(t.resolve("gpt-4").map(|x| x.group.name.as_str()), Some("g"));
        assert_eq!(
            t.resolve("openai/b")
                .and_then(|x| x.only)
                .map(<[String]>::len),
            Some(1)
        );
        assert!(t.aliases["hidden"].1);
        let err = topology(json!({"model_list": [
            {"model_name": "g", "litellm_params": {"model": "openai/a"}, "model_info": {"id": "bad:id"}},
        ]}))
        .unwrap_err();
        assert!(
            err.to_string().contains("model_list[0].model_info.id"),
            "{err}"
        );
        let err = topology(json!({"model_list": [
            {"model_name": "g", "litellm_params": {"model": "openai/a"}},
            {"model_name": "g", "litellm_params": {"model": "openai/a"}},
        ]}))
        .unwrap_err();
        assert!(err.to_string().contains("model_list[1]"), "{err}");
    }
}
