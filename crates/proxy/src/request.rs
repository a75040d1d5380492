//! Reading an inference request body: OpenAI shape checks and the router-only fields (`priority`, `timeout`,
//! `cache`), each refused with a 400 naming the field when malformed.

use std::time::Duration;

use queue_core::Priority;
use router::{CacheControl, Endpoint, RouterRequest};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// A validated request, ready for the router.
#[derive(Debug)]
pub(crate) struct InferenceRequest {
    /// What the router gets.
    pub(crate) router_request: RouterRequest,
}

/// Parses and validates `body` for `endpoint`.
pub(crate) fn parse(
    endpoint: Endpoint,
    body: &[u8],
    force_queue: bool,
) -> Result<InferenceRequest, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "request body is empty: expected a JSON object",
            None,
        ));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}"), None))?;
    let Value::Object(mut body) = value else {
        return Err(ApiError::bad_request(
            format!("request body must be a JSON object, got {}", kind(&value)),
            None,
        ));
    };

    let model = match body.get("model") {
        None | Some(Value::Null) => {
            return Err(ApiError::bad_request("`model` is required", Some("model")))
        }
        Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("`model` must be a non-empty string, got {}", kind(other)),
                Some("model"),
            ))
        }
    };
    check_input(endpoint, &body)?;
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("`stream` must be a boolean, got {}", kind(other)),
                Some("stream"),
            ))
        }
    };
    if stream && endpoint == Endpoint::Embeddings {
        return Err(ApiError::bad_request(
            "`stream` is not supported for embeddings",
            Some("stream"),
        ));
    }

    let priority = take_priority(&mut body)?;
    let timeout = take_timeout(&mut body)?;
    let cache = take_cache(&mut body)?;

    Ok(InferenceRequest {
        router_request: RouterRequest {
            endpoint,
            model,
            body,
            priority,
            timeout,
            force_queue,
            cache,
            // Set from the caller's permissions once it is known to be authenticated.
            overrides_allowed: false,
        },
    })
}

/// The endpoint's required input field: `messages`, `prompt` or `input`.
fn check_input(endpoint: Endpoint, body: &Map<String, Value>) -> Result<(), ApiError> {
    let (field, ok): (&str, fn(&Value) -> bool) = match endpoint {
        Endpoint::ChatCompletions => (
            "messages",
            |v| matches!(v, Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object)),
        ),
        Endpoint::Completions => ("prompt", |v| match v {
            Value::String(_) => true,
            Value::Array(items) => !items.is_empty(),
            _ => false,
        }),
        Endpoint::Embeddings => ("input", |v| match v {
            Value::String(s) => !s.is_empty(),
            Value::Array(items) => !items.is_empty(),
            _ => false,
        }),
    };
    let expected = match endpoint {
        Endpoint::ChatCompletions => "a non-empty array of message objects",
        Endpoint::Completions => "a string or a non-empty array",
        Endpoint::Embeddings => "a non-empty string or a non-empty array",
    };
    match body.get(field) {
        None | Some(Value::Null) => Err(ApiError::bad_request(
            format!("`{field}` is required"),
            Some(field),
        )),
        Some(v) if ok(v) => Ok(()),
        Some(v) => Err(ApiError::bad_request(
            format!("`{field}` must be {expected}, got {}", describe(v)),
            Some(field),
        )),
    }
}

/// Removes and validates `priority`: an integer in `0..=2^20`, lower served first. Never forwarded upstream.
fn take_priority(body: &mut Map<String, Value>) -> Result<Option<Priority>, ApiError> {
    let value = match body.remove("priority") {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    let refuse = |got: String| {
        ApiError::bad_request(
            format!(
                "`priority` must be an integer from 0 to {} (lower is served first), got {got}",
                Priority::MAX.get()
            ),
            Some("priority"),
        )
    };
    let Some(n) = value.as_i64() else {
        return Err(refuse(describe(&value)));
    };
    Priority::try_from(n)
        .map(Some)
        .map_err(|_| refuse(n.to_string()))
}

/// Removes and validates `timeout`: seconds, a positive number.
fn take_timeout(body: &mut Map<String, Value>) -> Result<Option<Duration>, ApiError> {
    let value = match body.remove("timeout") {
        None | Some(Value::Null) => return Ok(None),
        Some(v) => v,
    };
    // Numeric strings are accepted too, as LiteLLM does.
    let secs = value
        .as_f64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
        .filter(|s: &f64| s.is_finite() && *s > 0.0);
    secs.and_then(|s| Duration::try_from_secs_f64(s).ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::bad_request(
                format!(
                    "`timeout` must be a positive number of seconds, got {}",
                    describe(&value)
                ),
                Some("timeout"),
            )
        })
}

/// Removes and validates LiteLLM's `cache` controls: `{"no-cache": bool, "no-store": bool, "ttl": secs,
/// "s-maxage": secs}`.
fn take_cache(body: &mut Map<String, Value>) -> Result<CacheControl, ApiError> {
    match body.remove("cache") {
        None => Ok(CacheControl::default()),
        Some(value) => CacheControl::from_json(&value).map_err(ApiError::from),
    }
}

/// "a string", "an array", ... for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A short description of a bad value: numbers as written, strings quoted (cut), others by kind.
fn describe(value: &Value) -> String {
    match value {
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            let cut: String = s.chars().take(40).collect();
            if cut.len() < s.len() {
                format!("a string (\"{cut}…\")")
            } else {
                format!("a string (\"{cut}\")")
            }
        }
        Value::Array(items) if items.is_empty() => "an empty array".to_owned(),
        other => kind(other).to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn chat(body: Value) -> Result<InferenceRequest, ApiError> {
        parse(
            Endpoint::ChatCompletions,
            body.to_string().as_bytes(),
            false,
        )
    }

    fn refused(result: Result<InferenceRequest, ApiError>) -> ApiError {
        match result {
            Ok(r) => panic!("expected an error, got {r:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn router_fields_are_taken_out_of_the_body() {
        let req = chat(
            json!({"model": "g", "messages": [{"role": "user", "content": "hi"}],
                              "priority": 3, "timeout": 2.5, "cache": {"no-cache": true, "ttl": 60},
                              "temperature": 0.1, "stream": true}),
        )
        .unwrap();
        let r = &req.router_request;
        assert_eq!(r.priority.map(Priority::get), Some(3));
        assert_eq!(r.timeout, Some(Duration::from_millis(2500)));
        assert!(r.cache.no_cache);
        assert_eq!(r.cache.ttl, Some(Duration::from_secs(60)));
        assert!(
            !r.body.contains_key("priority")
                && !r.body.contains_key("timeout")
                && !r.body.contains_key("cache")
        );
        assert_eq!(r.body["temperature"], json!(0.1));
        assert!(r.is_stream());
    }

    #[test]
    fn bad_priorities_are_refused_naming_the_field() {
        for bad in [
            json!("high"),
            json!(1.5),
            json!(-1),
            json!(2_000_000),
            json!(true),
            json!([1]),
            json!(u64::MAX),
        ] {
            let err = refused(chat(
                json!({"model": "g", "messages": [{"role": "user"}], "priority": bad}),
            ));
            assert_eq!(err.status().as_u16(), 400);
            assert_eq!(err.param(), Some("priority"));
            assert!(err.message().contains("`priority`"), "{}", err.message());
        }
        let max = chat(json!({"model": "g", "messages": [{"role": "user"}], "priority": 1 << 20}))
            .unwrap();
        assert_eq!(max.router_request.priority, Some(Priority::MAX));
        let none =
            chat(json!({"model": "g", "messages": [{"role": "user"}], "priority": null})).unwrap();
        assert_eq!(none.router_request.priority, None);
    }

    #[test]
    fn missing_and_malformed_fields_name_themselves() {
        let cases = [
            (
                Endpoint::ChatCompletions,
                json!({"messages": [{"role": "user"}]}),
                "model",
            ),
            (
                Endpoint::ChatCompletions,
                json!({"model": "", "messages": [{"role": "user"}]}),
                "model",
            ),
            (
                Endpoint::ChatCompletions,
                json!({"model": 4, "messages": [{"role": "user"}]}),
                "model",
            ),
            (Endpoint::ChatCompletions, json!({"model": "g"}), "messages"),
            (
                Endpoint::ChatCompletions,
                json!({"model": "g", "messages": []}),
                "messages",
            ),
            (
                Endpoint::ChatCompletions,
                json!({"model": "g", "messages": "hi"}),
                "messages",
            ),
            (Endpoint::Completions, json!({"model": "g"}), "prompt"),
            (
                Endpoint::Completions,
                json!({"model": "g", "prompt": 5}),
                "prompt",
            ),
            (Endpoint::Embeddings, json!({"model": "g"}), "input"),
            (
                Endpoint::Embeddings,
                json!({"model": "g", "input": "x", "stream": true}),
                "stream",
            ),
            (
                Endpoint::ChatCompletions,
                json!({"model": "g", "messages": [{}], "stream": "yes"}),
                "stream",
            ),
            (
                Endpoint::ChatCompletions,
                json!({"model": "g", "messages": [{}], "timeout": "soon"}),
                "timeout",
            ),
            (
                Endpoint::ChatCompletions,
                json!({"model": "g", "messages": [{}], "timeout": 0}),
                "timeout",
            ),
            (
                Endpoint::ChatCompletions,
                json!({"model": "g", "messages": [{}], "cache": 1}),
                "cache",
            ),
            (
                Endpoint::ChatCompletions,
                json!({"model": "g", "messages": [{}], "cache": {"ttl": "x"}}),
                "cache",
            ),
        ];
        for (endpoint, body, field) in cases {
            let err = refused(parse(endpoint, body.to_string().as_bytes(), false));
            assert_eq!(err.status().as_u16(), 400, "{body}");
            assert_eq!(err.param(), Some(field), "{body}: {}", err.message());
            assert!(
                err.message().contains(&format!("`{field}`")),
                "{}",
                err.message()
            );
        }
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_refused() {
        for body in ["", "  ", "{", "[1]", "\"x\"", "{\"model\": \"g\",}"] {
            let err = refused(parse(Endpoint::ChatCompletions, body.as_bytes(), false));
            assert_eq!(err.status().as_u16(), 400, "{body}");
            assert!(err.message().contains("JSON"), "{}", err.message());
        }
    }
}
