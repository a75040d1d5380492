//! One `model_list` entry validated into a [`Deployment`]: provider, credentials, limits, headers, defaults.

use serde_json::{json, Map, Value};

use super::deployment::{Deployment, Prepared};
use super::provider_table::{
    known_prefixes, provider_spec, ProviderKind, ProviderSpec, AZURE_DEFAULT_API_VERSION,
};
use super::values::{count, secs, secs_or_zero};
use crate::config::{LitellmParams, ModelListEntry, Secret};
use crate::environ::{self, EnvValue};
use crate::error::RouterError;

/// Where validation reads environment variables (`os.environ/` references, providers' default keys).
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A `model_list` entry validated: a deployment, or one whose provider prefix is not supported (skipped with
/// a warning, listed in `/health`; `check-config` fails on it).
pub(super) enum Built {
    Deployment(Box<Deployment>),
    Unsupported(SkippedDeployment),
}

/// A `model_list` entry that is not served because its provider prefix is not supported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkippedDeployment {
    /// Where it is in the config (`model_list[3]`).
    pub path: String,
    /// Its `model_name`.
    pub model_name: String,
    /// Its `litellm_params.model`.
    pub model: String,
    /// Why it is skipped, naming the supported prefixes.
    pub reason: String,
}

/// Validates one `model_list` entry (at `path`) into a deployment.
pub(super) fn deployment(
    entry: &ModelListEntry,
    defaults: Option<&LitellmParams>,
    path: &str,
    env: Env<'_>,
) -> Result<Built, RouterError> {
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
            return Ok(Built::Unsupported(SkippedDeployment {
                path: path.to_owned(),
                model_name: group,
                model: full,
                reason: format!(
                    "provider `{provider}` is not supported (supported prefixes: {}; any OpenAI-compatible \
                     server works as `openai/<model>` with an `api_base`)",
                    known_prefixes()
                ),
            }))
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
        None => spec
            .key_env
            .iter()
            .find_map(|name| env(name))
            .map(Secret::new),
    };
    if api_key.as_ref().is_some_and(|k| k.expose().is_empty()) {
        api_key = None;
    }
    let mut api_base = env_str(params.api_base.clone(), "api_base")?;
    let mut api_version = env_str(params.api_version.clone(), "api_version")?;
    api_base = api_base.or_else(|| spec.base_env.iter().find_map(|name| env(name)));
    if spec.kind == ProviderKind::Azure {
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
            } else if spec.kind == ProviderKind::Anthropic {
                // The Messages path is added per call; a base naming it (or `/v1`) is accepted as LiteLLM does.
                let b = b.strip_suffix("/v1/messages").unwrap_or(&b);
                b.strip_suffix("/v1").unwrap_or(b).to_owned()
            } else {
                b
            }
        }
        None if mock_response.is_some() => String::new(),
        None => {
            let vars = if spec.base_env.is_empty() {
                String::new()
            } else {
                format!(" (or {})", spec.base_env.join(", "))
            };
            return Err(RouterError::config(
                format!("{lp}.api_base"),
                format!("provider `{provider}` has no default api_base: set `api_base`{vars}"),
            ));
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
    let mut max_retries = None;
    let mut drop_params = None;
    let mut additional_drop_params = Vec::new();
    for (k, v) in &params.extra {
        match k.as_str() {
            // LiteLLM hands `max_retries` to the OpenAI client, which retries the same deployment; here the
            // retries go through the walk (another deployment first), as `num_retries` does.
            "max_retries" => {
                let n = v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        RouterError::config(
                            format!("{lp}.max_retries"),
                            format!("must be a non-negative integer, got {v}"),
                        )
                    })?;
                max_retries = Some(n);
            }
            "drop_params" => {
                let b = match v {
                    Value::Bool(b) => Some(*b),
                    Value::String(s) => match s.trim() {
                        "true" | "True" => Some(true),
                        "false" | "False" => Some(false),
                        _ => None,
                    },
                    _ => None,
                };
                drop_params = Some(b.ok_or_else(|| {
                    RouterError::config(
                        format!("{lp}.drop_params"),
                        format!("must be a boolean, got {v}"),
                    )
                })?);
            }
            "additional_drop_params" => {
                let names = v.as_array().and_then(|items| {
                    items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                });
                additional_drop_params = names.ok_or_else(|| {
                    RouterError::config(
                        format!("{lp}.additional_drop_params"),
                        "must be a list of parameter names",
                    )
                })?;
            }
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
        auth: spec.auth,
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
        num_retries: count(params.num_retries, &format!("{lp}.num_retries"))?.or(max_retries),
        drop_params,
        additional_drop_params,
        mock_delay: secs_or_zero(params.mock_delay, &format!("{lp}.mock_delay"))?,
        mock_response,
        tags: params.tags.clone().unwrap_or_default(),
        model_info: entry
            .model_info
            .as_ref()
            .map(|i| {
                let mut out: Map<String, Value> = i
                    .extra
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if let Some(base) = &i.base_model {
                    out.insert("base_model".into(), Value::String(base.clone()));
                }
                out
            })
            .unwrap_or_default(),
        input_cost_per_token: price(entry, "input_cost_per_token"),
        output_cost_per_token: price(entry, "output_cost_per_token"),
        body_defaults,
        extra_body,
        headers,
        prepared: Prepared::default(),
    };
    deployment.prepared = Prepared::of(&deployment);
    Ok(Built::Deployment(Box::new(deployment)))
}

/// A price per token (USD) from `model_info`, else from `litellm_params` (LiteLLM reads both).
fn price(entry: &ModelListEntry, name: &str) -> Option<f64> {
    entry
        .model_info
        .as_ref()
        .and_then(|i| i.extra.get(name))
        .or_else(|| entry.litellm_params.extra.get(name))
        .and_then(|v| match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        })
        .filter(|p: &f64| p.is_finite() && *p >= 0.0)
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

/// Fills the deployment's unset parameters from `default_litellm_params`.
pub(super) fn merge_defaults(mut p: LitellmParams, d: &LitellmParams) -> LitellmParams {
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
            "extra_headers"
                | "headers"
                | "organization"
                | "extra_body"
                | "max_retries"
                | "drop_params"
                | "additional_drop_params"
                | "input_cost_per_token"
                | "output_cost_per_token"
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
