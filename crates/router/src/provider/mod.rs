//! Provider clients: OpenAI and OpenAI-compatible servers, Azure OpenAI, Anthropic's Messages API (translated),
//! and mock responses; upstream errors mapped to [`RouterError`] in `errors`.

mod anthropic;
mod anthropic_stream;
mod errors;
mod mock;
mod reply;
pub(crate) mod sse;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value};

use crate::error::{RouterError, UpstreamErrorKind};
use crate::request::{AnswerSource, Endpoint};
use crate::topology::{Deployment, ProviderKind};
pub(crate) use errors::{error_from_response, stream_error};
pub(crate) use reply::Reply;
pub(crate) use sse::SseEvent;

/// One upstream call.
pub(crate) struct Call<'a> {
    pub(crate) deployment: &'a Arc<Deployment>,
    pub(crate) endpoint: Endpoint,
    /// The client's body without router-only fields.
    pub(crate) body: &'a Map<String, Value>,
    pub(crate) stream: bool,
    /// Non-streaming: the whole call. Streaming: up to the first event.
    pub(crate) timeout: Duration,
    /// A per-request `mock_response` (replaces the deployment's).
    pub(crate) mock_response: Option<&'a str>,
    /// A per-request `mock_delay` (replaces the deployment's).
    pub(crate) mock_delay: Option<Duration>,
    /// Prompt tokens (for mock usage).
    pub(crate) prompt_tokens: u64,
}

/// Who answers a call to `d` with the request's `mock_response`: the request's mock replaces the
/// deployment's, which replaces the upstream (the precedence of [`Providers::call`]).
pub(crate) fn answer_source(d: &Deployment, request_mock: Option<&str>) -> AnswerSource {
    match (request_mock, &d.mock_response) {
        (Some(_), _) => AnswerSource::RequestMock,
        (None, Some(_)) => AnswerSource::DeploymentMock,
        (None, None) => AnswerSource::Upstream,
    }
}

/// The HTTP client shared by every deployment (one connection pool).
#[derive(Clone, Debug)]
pub(crate) struct Providers {
    client: reqwest::Client,
}

impl Providers {
    pub(crate) fn new() -> Result<Self, RouterError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| RouterError::Internal(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client })
    }

    pub(crate) async fn call(&self, call: Call<'_>) -> Result<Reply, RouterError> {
        let d = call.deployment;
        // The same precedence as `answer_source`.
        let mock = call.mock_response.or(d.mock_response.as_deref());
        let work = async {
            if let Some(text) = mock {
                if let Some(delay) = call.mock_delay.or(d.mock_delay) {
                    tokio::time::sleep(delay).await;
                }
                return mock::reply(
                    d,
                    call.endpoint,
                    call.body,
                    call.stream,
                    text,
                    call.prompt_tokens,
                );
            }
            self.send(&call).await
        };
        match tokio::time::timeout(call.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(RouterError::upstream(
                UpstreamErrorKind::Timeout,
                &d.id,
                None,
                format!(
                    "no {} within {:.3} s",
                    if call.stream { "first chunk" } else { "answer" },
                    call.timeout.as_secs_f64()
                ),
                None,
            )),
        }
    }

    async fn send(&self, call: &Call<'_>) -> Result<Reply, RouterError> {
        let d = call.deployment;
        let secret = d.api_key.as_ref().map(|k| k.expose());
        let anthropic = d.kind == ProviderKind::Anthropic;
        let body = upstream_body(d, call.body);
        let body = if anthropic {
            if call.endpoint != Endpoint::ChatCompletions {
                return Err(RouterError::BadRequest {
                    message: format!(
                        "deployment {} is an Anthropic model: it serves chat completions only, not {}",
                        d.id,
                        call.endpoint.name()
                    ),
                    param: Some("model".into()),
                });
            }
            let mut b = anthropic::request(&body)?;
            // `extra_body` is for the provider's own API.
            if let Value::Object(m) = &mut b {
                for (k, v) in &d.extra_body {
                    m.insert(k.clone(), v.clone());
                }
            }
            b
        } else {
            body
        };
        let prepared = &d.prepared;
        let req = match prepared.url(call.endpoint) {
            Some(parsed) => self.client.post(parsed.clone()),
            // Not a valid URL: reqwest names the problem when the request is built.
            None => self.client.post(d.url(call.endpoint)),
        };
        let req = req.headers(prepared.headers().clone()).json(&body);
        let resp = req.send().await.map_err(|e| transport_error(d, &e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let headers = resp.headers().clone();
            let text = resp
                .bytes()
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            return Err(error_from_response(d, status, &headers, &text));
        }
        if call.stream {
            let mut events = sse::events(resp.bytes_stream(), d.id.clone());
            if anthropic {
                let include_usage = call
                    .body
                    .get("stream_options")
                    .and_then(|o| o.get("include_usage"))
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                events = anthropic_stream::translate(d.clone(), events, include_usage);
            }
            return match events.next().await {
                Some(Ok(first)) => {
                    if let Some(err) = stream_error(d, &first) {
                        return Err(err);
                    }
                    Ok(Reply::Stream {
                        first,
                        rest: events,
                    })
                }
                Some(Err(e)) => Err(e),
                None => Err(RouterError::upstream(
                    UpstreamErrorKind::InvalidResponse,
                    &d.id,
                    Some(status),
                    "the stream ended before its first event",
                    secret,
                )),
            };
        }
        let bytes = resp.bytes().await.map_err(|e| transport_error(d, &e))?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(v) if anthropic => anthropic::response(&v).map(Reply::Json).ok_or_else(|| {
                RouterError::upstream(
                    UpstreamErrorKind::InvalidResponse,
                    &d.id,
                    Some(status),
                    "the response is not an Anthropic message",
                    secret,
                )
            }),
            Ok(v) if v.is_object() => Ok(Reply::Json(v)),
            _ => Err(RouterError::upstream(
                UpstreamErrorKind::InvalidResponse,
                &d.id,
                Some(status),
                "the response is not a JSON object",
                secret,
            )),
        }
    }
}

/// The client's body with the deployment's model name, its parameter defaults and `extra_body`.
pub(crate) fn upstream_body(d: &Deployment, body: &Map<String, Value>) -> Value {
    let mut out = body.clone();
    out.insert("model".to_owned(), Value::String(d.model.clone()));
    for (k, v) in &d.body_defaults {
        out.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for (k, v) in &d.extra_body {
        out.insert(k.clone(), v.clone());
    }
    Value::Object(out)
}

fn transport_error(d: &Deployment, e: &reqwest::Error) -> RouterError {
    let kind = if e.is_timeout() {
        UpstreamErrorKind::Timeout
    } else if e.is_decode() || e.is_body() {
        UpstreamErrorKind::InvalidResponse
    } else {
        UpstreamErrorKind::Connection
    };
    RouterError::upstream(
        kind,
        &d.id,
        None,
        sse::without_url(e),
        d.api_key.as_ref().map(|k| k.expose()),
    )
}

/// (total tokens, completion tokens) of a response's `usage`.
pub(crate) fn usage_of(v: &Value) -> (Option<u64>, Option<u64>) {
    let Some(u) = v.get("usage").filter(|u| u.is_object()) else {
        return (None, None);
    };
    let get = |k: &str| u.get(k).and_then(Value::as_u64);
    let completion = get("completion_tokens");
    let total =
        get("total_tokens").or_else(|| Some(get("prompt_tokens")? + completion.unwrap_or(0)));
    (total, completion)
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;
    use crate::config::{LitellmParams, ModelListEntry, RouterConfig, Secret};

    fn deployment(model: &str, base: &str) -> std::sync::Arc<Deployment> {
        let cfg = RouterConfig {
            model_list: vec![ModelListEntry {
                model_name: "g".into(),
                litellm_params: LitellmParams {
                    model: model.into(),
                    api_base: Some(base.into()),
                    api_key: Some(Secret::new("sk-secret-123")),
                    api_version: Some("2024-06-01".into()),
                    ..LitellmParams::default()
                },
                model_info: None,
                rpm: None,
                tpm: None,
                extra: Default::default(),
            }],
            settings: Default::default(),
        };
        let t = crate::topology::build(&cfg).unwrap();
        t.group("g").unwrap().deployments[0].clone()
    }

    #[test]
    fn usage_is_read() {
        let v = serde_json::json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
        assert_eq!(usage_of(&v), (Some(7), Some(4)));
        assert_eq!(usage_of(&serde_json::json!({"usage": null})), (None, None));
    }

    #[test]
    fn urls() {
        let d = deployment("azure/gpt-dep", "https://r.openai.azure.com/");
        assert_eq!(
            d.url(Endpoint::ChatCompletions),
            "https://r.openai.azure.com/openai/deployments/gpt-dep/chat/completions?api-version=2024-06-01"
        );
        let d = deployment("openai/gpt-4o", "http://localhost:8000/v1");
        assert_eq!(
            d.url(Endpoint::Embeddings),
            "http://localhost:8000/v1/embeddings"
        );
        let d = deployment("ollama_chat/llama3", "http://localhost:11434");
        assert_eq!(
            d.url(Endpoint::ChatCompletions),
            "http://localhost:11434/v1/chat/completions"
        );
        let d = deployment("hosted_vllm/meta-llama/Llama-3-8B", "http://h:8000/v1");
        assert_eq!(d.model, "meta-llama/Llama-3-8B");
    }

    #[test]
    fn error_mapping() {
        let d = deployment("openai/x", "http://h/v1");
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        let e = error_from_response(
            &d,
            429,
            &h,
            r#"{"error":{"message":"slow","code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(e.upstream_kind(), Some(UpstreamErrorKind::RateLimited));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        let e = error_from_response(
            &d,
            400,
            &HeaderMap::new(),
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":null}}"#,
        );
        assert_eq!(
            e.upstream_kind(),
            Some(UpstreamErrorKind::ContextWindowExceeded)
        );
        let e = error_from_response(
            &d,
            400,
            &HeaderMap::new(),
            r#"{"error":{"code":"content_filter","message":"no"}}"#,
        );
        assert_eq!(
            e.upstream_kind(),
            Some(UpstreamErrorKind::ContentPolicyViolation)
        );
        let e = error_from_response(
            &d,
            401,
            &HeaderMap::new(),
            r#"{"error":{"message":"Incorrect API key provided: sk-secret-123"}}"#,
        );
        assert_eq!(e.status_code(), 401);
        assert!(!e.to_string().contains("sk-secret-123"));
        let e = error_from_response(&d, 502, &HeaderMap::new(), "<html>bad gateway</html>");
        assert!(e.is_retryable());
    }
}
