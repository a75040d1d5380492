//! The one place provider error payloads become [`RouterError`]s: status, error body (OpenAI's
//! `{"error": {"message", "code"}}`, Anthropic's `{"type": "error", "error": {"type", "message"}}`) and
//! `Retry-After`, mapped the way LiteLLM 1.108.7 maps them (its `exception_mapping_utils`), including which
//! documented bodies mean "the prompt is longer than the context window".

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::sse::SseEvent;
use crate::error::{RouterError, UpstreamError, UpstreamErrorKind};
use crate::topology::{Deployment, ProviderKind};

/// An `{"error": ...}` event inside an OpenAI-style stream.
pub(crate) fn stream_error(d: &Deployment, event: &SseEvent) -> Option<RouterError> {
    if !event.data.contains("\"error\"") {
        return None;
    }
    let v: Value = serde_json::from_str(&event.data).ok()?;
    v.get("error")?;
    let status = v
        .pointer("/error/status")
        .or_else(|| v.pointer("/error/code"))
        .and_then(Value::as_u64)
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (400..600).contains(s))
        .unwrap_or(500);
    Some(error_from_response(
        d,
        status,
        &HeaderMap::new(),
        &event.data,
    ))
}

/// An Anthropic `error` event inside a stream (`{"type": "error", "error": {"type": "overloaded_error", ...}}`),
/// mapped as the same error answered with its status would be.
pub(crate) fn anthropic_stream_error(d: &Deployment, data: &str) -> RouterError {
    let kind = serde_json::from_str::<Value>(data)
        .ok()
        .and_then(|v| v.pointer("/error/type")?.as_str().map(str::to_owned));
    let status = match kind.as_deref() {
        Some("invalid_request_error") => 400,
        Some("authentication_error") => 401,
        Some("permission_error") => 403,
        Some("not_found_error") => 404,
        Some("request_too_large") => 413,
        Some("rate_limit_error") => 429,
        Some("timeout_error") => 504,
        Some("overloaded_error") => 529,
        _ => 500,
    };
    error_from_response(d, status, &HeaderMap::new(), data)
}

/// Maps an upstream error response to the typed error.
pub(crate) fn error_from_response(
    d: &Deployment,
    status: u16,
    headers: &HeaderMap,
    body: &str,
) -> RouterError {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let err_obj = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |k: &str| -> Option<String> {
        err_obj.and_then(|e| e.get(k)).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let message = field("message")
        .or_else(|| err_obj.and_then(Value::as_str).map(str::to_owned))
        .or_else(|| {
            parsed
                .as_ref()
                .and_then(|v| v.get("message"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .or_else(|| {
            parsed
                .as_ref()
                .and_then(|v| v.get("detail"))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
        })
        .unwrap_or_else(|| body.chars().take(500).collect());
    let code = field("code");
    let kind = match d.kind {
        ProviderKind::Anthropic => anthropic_kind(status, field("type").as_deref(), &message),
        ProviderKind::OpenAi | ProviderKind::Azure => {
            openai_kind(status, code.as_deref(), &message)
        }
    };
    let secret = d.api_key.as_ref().map(|k| k.expose());
    let mut err = RouterError::upstream(kind, &d.id, Some(status), message, secret);
    if let RouterError::Upstream(u) = &mut err {
        let u: &mut UpstreamError = u;
        u.retry_after = retry_after(headers);
        u.code = code.map(|c| crate::error::redact(c, secret));
        u.param = field("param");
    }
    err
}

/// Documented context-window messages of OpenAI-compatible servers (OpenAI, vLLM, Groq, Mistral, ...) and
/// Anthropic's ("prompt is too long"), as LiteLLM's `is_error_str_context_window_exceeded` lists them.
fn is_context_window(lower: &str) -> bool {
    [
        "context length",
        "context_length",
        "maximum context",
        "context window",
        "too many tokens",
        "prompt is too long",
        "prompt: length",
        "input is too long",
        "reduce the length",
    ]
    .iter()
    .any(|p| lower.contains(p))
}

fn openai_kind(status: u16, code: Option<&str>, message: &str) -> UpstreamErrorKind {
    let lower = message.to_ascii_lowercase();
    let code_is = |names: &[&str]| code.is_some_and(|c| names.contains(&c));
    match status {
        400 | 413 | 422 => {
            if code_is(&["context_length_exceeded", "string_above_max_length"])
                || is_context_window(&lower)
            {
                UpstreamErrorKind::ContextWindowExceeded
            } else if code_is(&["content_policy_violation", "content_filter"])
                || [
                    "content management policy",
                    "content_policy",
                    "safety system",
                    "content filter",
                ]
                .iter()
                .any(|p| lower.contains(p))
            {
                UpstreamErrorKind::ContentPolicyViolation
            } else {
                UpstreamErrorKind::BadRequest
            }
        }
        401 => UpstreamErrorKind::Authentication,
        403 => UpstreamErrorKind::PermissionDenied,
        404 => UpstreamErrorKind::NotFound,
        408 => UpstreamErrorKind::Timeout,
        429 => UpstreamErrorKind::RateLimited,
        503 | 529 => UpstreamErrorKind::ServiceUnavailable,
        504 => UpstreamErrorKind::Timeout,
        409 | 500..=599 => UpstreamErrorKind::InternalServer,
        _ => UpstreamErrorKind::BadRequest,
    }
}

/// LiteLLM's `_map_anthropic_exception`: the context window first (any status), then overload (529 or an
/// `overloaded_error` body: an `InternalServerError`, retried and cooled down), then the status.
fn anthropic_kind(status: u16, error_type: Option<&str>, message: &str) -> UpstreamErrorKind {
    let lower = message.to_ascii_lowercase();
    if (400..500).contains(&status) && is_context_window(&lower) {
        return UpstreamErrorKind::ContextWindowExceeded;
    }
    if error_type == Some("overloaded_error") || message.contains("Overloaded") {
        return UpstreamErrorKind::InternalServer;
    }
    if lower.contains("content filtering policy") {
        return UpstreamErrorKind::ContentPolicyViolation;
    }
    match status {
        400 | 413 | 422 => UpstreamErrorKind::BadRequest,
        401 => UpstreamErrorKind::Authentication,
        403 => UpstreamErrorKind::PermissionDenied,
        404 => UpstreamErrorKind::NotFound,
        408 | 504 => UpstreamErrorKind::Timeout,
        429 => UpstreamErrorKind::RateLimited,
        503 => UpstreamErrorKind::ServiceUnavailable,
        409 | 500..=599 => UpstreamErrorKind::InternalServer,
        _ => UpstreamErrorKind::BadRequest,
    }
}

/// `retry-after-ms` (milliseconds) or `retry-after` (seconds).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let num = |name: &str| -> Option<f64> {
        headers
            .get(name)?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e7)
    };
    num("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .or_else(|| num("retry-after").map(Duration::from_secs_f64))
}
