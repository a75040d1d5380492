//! What callers hand the router and what they get back.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use serde_json::{Map, Value};

use crate::error::RouterError;

/// Body fields that steer the router and are never forwarded upstream.
pub const ROUTER_ONLY_FIELDS: &[&str] = &[
    "priority",
    "timeout",
    "cache",
    "metadata",
    "mock_response",
    "mock_delay",
    "fallbacks",
    "num_retries",
    "stream_timeout",
];

/// Router-only fields that override how a request is routed or answered: who answers (`mock_response`,
/// `mock_delay`), which groups are tried (`fallbacks`) and how many upstream calls it may make
/// (`num_retries`). Refused with a 403 unless [`RouterRequest::overrides_allowed`]: a caller that could use
/// them freely could plant answers in the shared response cache or multiply upstream calls.
pub const OVERRIDE_FIELDS: &[&str] = &["mock_response", "mock_delay", "fallbacks", "num_retries"];

/// Body fields with which LiteLLM lets a client name its own upstream or credentials. The router only calls
/// the deployments of its config, so these are refused (400) rather than forwarded to the upstream as if
/// they had been applied.
pub const CLIENT_CREDENTIAL_FIELDS: &[&str] = &["api_key", "api_base", "base_url", "user_config"];

/// The OpenAI endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/v1/chat/completions`
    ChatCompletions,
    /// `/v1/completions`
    Completions,
    /// `/v1/embeddings`
    Embeddings,
}

impl Endpoint {
    /// The path below the API base (`/chat/completions`).
    pub fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/chat/completions",
            Self::Completions => "/completions",
            Self::Embeddings => "/embeddings",
        }
    }

    /// Short name for metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChatCompletions => "chat_completions",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
        }
    }
}

/// One request to route.
#[derive(Clone, Debug)]
pub struct RouterRequest {
    /// Which endpoint.
    pub endpoint: Endpoint,
    /// The model group (or an alias, a deployment's provider model `azure/x`, or a deployment id).
    pub model: String,
    /// The client's JSON body. Router-only fields ([`ROUTER_ONLY_FIELDS`]) are removed before forwarding; when
    /// the typed fields below are unset, `timeout`, `cache` and `priority` are read from the body.
    pub body: Map<String, Value>,
    /// Queue priority (lower first), validated by the caller; `None` = the configured default.
    pub priority: Option<queue_core::Priority>,
    /// Per-request timeout (the body's `timeout` or a header): bounds each upstream attempt and the whole request.
    pub timeout: Option<Duration>,
    /// Always go through the scheduler's queue (the `/queue/*` endpoints).
    pub force_queue: bool,
    /// Response cache control (the body's `cache`).
    pub cache: CacheControl,
    /// Whether the caller may use the [`OVERRIDE_FIELDS`]; set by whoever authenticated it (the proxy: its
    /// `general_settings.allow_client_side_overrides`), `false` from [`RouterRequest::new`].
    pub overrides_allowed: bool,
}

impl RouterRequest {
    /// A request for `endpoint` with the given JSON body; `model` is read from the body.
    pub fn new(endpoint: Endpoint, body: Map<String, Value>) -> Result<Self, RouterError> {
        let model = match body.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_owned(),
            _ => {
                return Err(RouterError::BadRequest {
                    message: "`model` must be a non-empty string".into(),
                    param: Some("model".into()),
                })
            }
        };
        Ok(Self {
            endpoint,
            model,
            body,
            priority: None,
            timeout: None,
            force_queue: false,
            cache: CacheControl::default(),
            overrides_allowed: false,
        })
    }

    /// [`RouterRequest::new`] from a JSON value that must be an object.
    pub fn from_json(endpoint: Endpoint, body: Value) -> Result<Self, RouterError> {
        match body {
            Value::Object(map) => Self::new(endpoint, map),
            _ => Err(RouterError::BadRequest {
                message: "the request body must be a JSON object".into(),
                param: None,
            }),
        }
    }

    /// Whether the client asked for a server-sent-event stream.
    pub fn is_stream(&self) -> bool {
        self.endpoint != Endpoint::Embeddings
            && matches!(self.body.get("stream"), Some(Value::Bool(true)))
    }
}

/// Per-request cache control (`"cache": {"no-cache": true, "no-store": true, "ttl": 60, "s-maxage": 10}`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CacheControl {
    /// Do not answer from the cache (the response is still stored).
    pub no_cache: bool,
    /// Do not store the response.
    pub no_store: bool,
    /// Lifetime of the stored response instead of the configured TTL.
    pub ttl: Option<Duration>,
    /// Only accept a cached response at most this old.
    pub s_maxage: Option<Duration>,
}

impl CacheControl {
    /// Parses the body's `cache` object (LiteLLM's keys: `no-cache`, `no-store`, `ttl`, `s-maxage`; snake_case
    /// accepted too). Unknown keys are ignored.
    pub fn from_json(value: &Value) -> Result<Self, crate::RouterError> {
        let bad = |m: &str| crate::RouterError::BadRequest {
            message: format!("invalid `cache`: {m}"),
            param: Some("cache".into()),
        };
        let Value::Object(map) = value else {
            return if value.is_null() {
                Ok(Self::default())
            } else {
                Err(bad("must be an object"))
            };
        };
        let flag = |a: &str, b: &str| -> Result<bool, crate::RouterError> {
            match map.get(a).or_else(|| map.get(b)) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(v)) => Ok(*v),
                Some(_) => Err(bad(&format!("`{a}` must be a boolean"))),
            }
        };
        let secs = |a: &str, b: &str| -> Result<Option<Duration>, crate::RouterError> {
            match map.get(a).or_else(|| map.get(b)) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => match v.as_f64() {
                    Some(s) if (0.0..1e9).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
                    _ => Err(bad(&format!(
                        "`{a}` must be a non-negative number of seconds"
                    ))),
                },
            }
        };
        Ok(Self {
            no_cache: flag("no-cache", "no_cache")?,
            no_store: flag("no-store", "no_store")?,
            ttl: secs("ttl", "ttl")?,
            s_maxage: secs("s-maxage", "s_maxage")?,
        })
    }
}

/// The answer body: JSON, or a stream of complete SSE events (`data: {...}\n\n`, ending with
/// `data: [DONE]\n\n`). An `Err` item means the upstream stream broke; nothing follows it.
pub enum ResponseBody {
    /// A JSON response.
    Json(Value),
    /// A stream of SSE event bytes.
    Stream(BoxStream<'static, Result<Bytes, RouterError>>),
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(v) => f.debug_tuple("Json").field(v).finish(),
            Self::Stream(_) => f.write_str("Stream(..)"),
        }
    }
}

/// A routed response.
#[derive(Debug)]
pub struct RouterResponse {
    /// The body.
    pub body: ResponseBody,
    /// How it was produced.
    pub meta: ResponseMeta,
}

/// How a response was produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseMeta {
    /// The model group that answered (a fallback group when fallbacks were used).
    pub model_group: String,
    /// The deployment that answered (empty for a cache hit).
    pub deployment_id: String,
    /// Upstream attempts made, over all groups (0 for a cache hit).
    pub attempts: u32,
    /// Fallback groups tried, in order.
    pub fallbacks: Vec<String>,
    /// Served from the response cache.
    pub cache_hit: bool,
    /// Time spent waiting for capacity.
    pub queue_wait: Duration,
    /// Time of the successful upstream call (to the first chunk for streams).
    pub upstream_latency: Duration,
    /// Who produced the answer.
    pub source: AnswerSource,
}

/// Who produced an answer; decides whether the shared response cache may keep it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnswerSource {
    /// A call to the deployment's upstream.
    Upstream,
    /// The deployment's own `mock_response` (config.yaml): the operator's answer, cached like an upstream's.
    DeploymentMock,
    /// A `mock_response` from the request body: the caller's text, never cached.
    RequestMock,
    /// The response cache. The default, so that a meta built without naming its source is never stored.
    #[default]
    Cache,
}

impl AnswerSource {
    /// Whether an answer from here may be stored in the response cache, where every caller of the same
    /// request (on every replica sharing the cache) reads it: only answers of the configured deployments.
    pub fn is_cacheable(self) -> bool {
        matches!(self, Self::Upstream | Self::DeploymentMock)
    }
}

/// Router-only fields taken out of a request body.
#[derive(Debug, Default)]
pub(crate) struct Controls {
    pub(crate) timeout: Option<Duration>,
    pub(crate) stream_timeout: Option<Duration>,
    pub(crate) cache: Option<CacheControl>,
    pub(crate) num_retries: Option<u32>,
    pub(crate) fallbacks: Option<Vec<String>>,
    pub(crate) mock_response: Option<String>,
    pub(crate) mock_delay: Option<Duration>,
    pub(crate) priority: Option<queue_core::Priority>,
}

impl Controls {
    /// Removes the router-only fields from `body` and parses the ones the router uses. The
    /// [`OVERRIDE_FIELDS`] are refused unless `overrides_allowed`, the [`CLIENT_CREDENTIAL_FIELDS`] always
    /// (`null` counts as absent).
    pub(crate) fn take(
        body: &mut Map<String, Value>,
        group: &str,
        overrides_allowed: bool,
    ) -> Result<Self, RouterError> {
        let bad = |param: &str, message: String| RouterError::BadRequest {
            message,
            param: Some(param.to_owned()),
        };
        let present = |key: &&str| body.get(*key).is_some_and(|v| !v.is_null());
        if let Some(key) = CLIENT_CREDENTIAL_FIELDS.iter().copied().find(present) {
            return Err(bad(
                key,
                format!(
                    "`{key}` in the request body is not supported: requests go only to the deployments of \
                     the config, with their own credentials"
                ),
            ));
        }
        if !overrides_allowed {
            if let Some(key) = OVERRIDE_FIELDS.iter().copied().find(present) {
                return Err(RouterError::OverrideNotAllowed {
                    param: key.to_owned(),
                });
            }
        }
        for key in CLIENT_CREDENTIAL_FIELDS {
            body.remove(*key);
        }
        let secs = |body: &mut Map<String, Value>,
                    key: &str|
         -> Result<Option<Duration>, RouterError> {
            match body.remove(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => {
                    let s = v
                        .as_f64()
                        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
                    match s {
                        Some(s) if (0.0..1e9).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
                        _ => Err(bad(
                            key,
                            format!("`{key}` must be a non-negative number of seconds"),
                        )),
                    }
                }
            }
        };
        let mut c = Controls {
            timeout: secs(body, "timeout")?.filter(|d| !d.is_zero()),
            stream_timeout: secs(body, "stream_timeout")?.filter(|d| !d.is_zero()),
            mock_delay: secs(body, "mock_delay")?,
            ..Controls::default()
        };
        if let Some(v) = body.remove("cache") {
            c.cache = Some(CacheControl::from_json(&v)?);
        }
        match body.remove("num_retries") {
            None | Some(Value::Null) => {}
            Some(v) => {
                let n = v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        bad(
                            "num_retries",
                            "`num_retries` must be a non-negative integer".into(),
                        )
                    })?;
                c.num_retries = Some(n);
            }
        }
        match body.remove("mock_response") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => c.mock_response = Some(s),
            Some(_) => {
                return Err(bad(
                    "mock_response",
                    "`mock_response` must be a string".into(),
                ))
            }
        }
        match body.remove("fallbacks") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s),
                        // LiteLLM's `[{"group": ["fallback", ...]}]`: the entry for this group.
                        Value::Object(map) => {
                            if let Some(v) = map.get(group) {
                                match v {
                                    Value::String(s) => out.push(s.clone()),
                                    Value::Array(a) => out.extend(
                                        a.iter().filter_map(Value::as_str).map(str::to_owned),
                                    ),
                                    _ => {}
                                }
                            }
                        }
                        _ => {
                            return Err(bad(
                                "fallbacks",
                                "`fallbacks` must list model groups".into(),
                            ))
                        }
                    }
                }
                c.fallbacks = Some(out);
            }
            Some(_) => return Err(bad("fallbacks", "`fallbacks` must be a list".into())),
        }
        match body.remove("priority") {
            None | Some(Value::Null) => {}
            Some(v) => {
                let p = v
                    .as_i64()
                    .and_then(|p| u32::try_from(p).ok())
                    .and_then(|p| queue_core::Priority::new(p).ok())
                    .ok_or_else(|| {
                        bad(
                            "priority",
                            format!(
                                "`priority` must be an integer within 0..={}",
                                queue_core::Priority::MAX.get()
                            ),
                        )
                    })?;
                c.priority = Some(p);
            }
        }
        for key in ROUTER_ONLY_FIELDS {
            body.remove(*key);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cache_control_parses_litellm_keys() {
        let c = CacheControl::from_json(&json!({"no-cache": true, "ttl": 5})).unwrap();
        assert!(c.no_cache && !c.no_store);
        assert_eq!(c.ttl, Some(Duration::from_secs(5)));
        assert!(CacheControl::from_json(&json!({"ttl": "x"})).is_err());
    }

    #[test]
    fn router_only_fields_are_removed() {
        let Value::Object(mut body) = json!({
            "model": "g", "messages": [], "priority": 3, "timeout": 2.5, "cache": {"no-cache": true},
            "metadata": {"a": 1}, "mock_response": "hi", "fallbacks": [{"g": ["h"]}], "num_retries": 1,
            "stream_timeout": 1, "mock_delay": 0.1, "custom_field": {"x": 1}
        }) else {
            unreachable!()
        };
        let c = Controls::take(&mut body, "g", true).unwrap();
        assert_eq!(c.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(c.priority.map(queue_core::Priority::get), Some(3));
        assert_eq!(c.fallbacks, Some(vec!["h".to_string()]));
        assert_eq!(c.num_retries, Some(1));
        assert!(c.cache.unwrap().no_cache);
        let keys: Vec<&str> = body.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 3, "{keys:?}");
        assert!(
            body.contains_key("custom_field")
                && body.contains_key("messages")
                && body.contains_key("model")
        );
    }

    #[test]
    fn bad_priority_is_a_400() {
        let Value::Object(mut body) = json!({"priority": -1}) else {
            unreachable!()
        };
        let e = Controls::take(&mut body, "g", false).unwrap_err();
        assert_eq!((e.status_code(), e.param()), (400, Some("priority")));
    }

    #[test]
    fn overrides_are_refused_naming_the_field_unless_allowed() {
        for (key, value) in [
            ("mock_response", json!("The capital of France is Berlin.")),
            ("mock_delay", json!(1)),
            ("fallbacks", json!(["h"])),
            ("num_retries", json!(3)),
        ] {
            let Value::Object(body) = json!({"model": "g", "messages": [], key: value}) else {
                unreachable!()
            };
            let e = Controls::take(&mut body.clone(), "g", false).unwrap_err();
            assert_eq!(
                (e.status_code(), e.param(), e.code()),
                (403, Some(key), Some("override_not_allowed")),
                "{key}"
            );
            assert!(e.to_string().contains(&format!("`{key}`")), "{e}");
            assert!(
                Controls::take(&mut body.clone(), "g", true).is_ok(),
                "{key}"
            );
        }
        // `null` is no override; the QoS controls need no permission.
        let Value::Object(mut body) = json!({
            "model": "g", "mock_response": null, "fallbacks": null, "priority": 1, "timeout": 3,
            "stream_timeout": 1, "cache": {"no-cache": true}, "metadata": {"a": 1}
        }) else {
            unreachable!()
        };
        let c = Controls::take(&mut body, "g", false).unwrap();
        assert!(c.mock_response.is_none() && c.fallbacks.is_none());
        assert_eq!(body.keys().collect::<Vec<_>>(), ["model"]);
    }

    #[test]
    fn client_credentials_are_refused_even_when_overrides_are_allowed() {
        for key in CLIENT_CREDENTIAL_FIELDS {
            let Value::Object(mut body) = json!({"model": "g", *key: "https://attacker.invalid"})
            else {
                unreachable!()
            };
            let e = Controls::take(&mut body, "g", true).unwrap_err();
            assert_eq!((e.status_code(), e.param()), (400, Some(*key)), "{key}");
            assert!(!e.to_string().contains("attacker"), "{e}");
        }
        let Value::Object(mut body) = json!({"model": "g", "api_base": null}) else {
            unreachable!()
        };
        Controls::take(&mut body, "g", false).unwrap();
        assert!(
            !body.contains_key("api_base"),
            "a null credential is not forwarded either"
        );
    }

    #[test]
    fn only_answers_of_configured_deployments_are_cacheable() {
        assert!(AnswerSource::Upstream.is_cacheable());
        assert!(AnswerSource::DeploymentMock.is_cacheable());
        assert!(!AnswerSource::RequestMock.is_cacheable());
        assert!(!AnswerSource::Cache.is_cacheable());
        assert!(!ResponseMeta::default().source.is_cacheable());
    }
}
