//! `mock_response`: answers without calling an upstream, with deterministic usage, or raises a named error.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde_json::{json, Map, Value};

use super::reply::Reply;
use super::sse::SseEvent;
use crate::error::{RouterError, UpstreamErrorKind};
use crate::request::Endpoint;
use crate::topology::Deployment;

/// The reply (or error) a mock deployment gives.
pub(super) fn reply(
    d: &Deployment,
    endpoint: Endpoint,
    body: &Map<String, Value>,
    stream: bool,
    text: &str,
    prompt_tokens: u64,
) -> Result<Reply, RouterError> {
    let error = |kind, status: u16, message: &str| {
        Err(RouterError::upstream(
            kind,
            &d.id,
            Some(status),
            message,
            None,
        ))
    };
    match text.trim() {
        "litellm.RateLimitError" => {
            return error(UpstreamErrorKind::RateLimited, 429, "mock rate limit")
        }
        "litellm.InternalServerError" => {
            return error(
                UpstreamErrorKind::InternalServer,
                500,
                "mock internal server error",
            )
        }
        "litellm.ContextWindowExceededError" => {
            return error(
                UpstreamErrorKind::ContextWindowExceeded,
                400,
                "mock: the prompt exceeds the context window",
            )
        }
        "litellm.Timeout" => {
            return Err(RouterError::upstream(
                UpstreamErrorKind::Timeout,
                &d.id,
                None,
                "mock timeout",
                None,
            ))
        }
        _ => {}
    }
    let completion_tokens = u64::try_from(text.split_whitespace().count())
        .unwrap_or(u64::MAX)
        .max(1);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let id = format!("mock-{}", uuid::Uuid::new_v4().simple());
    let model = d.model.clone();
    match endpoint {
        Endpoint::Embeddings => {
            let n = match body.get("input") {
                Some(Value::Array(items)) if !items.iter().all(Value::is_number) => items.len(),
                _ => 1,
            };
            let data: Vec<Value> = (0..n)
                .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.0, 0.1, 0.2, 0.3]}))
                .collect();
            Ok(Reply::Json(json!({
                "object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            })))
        }
        Endpoint::Completions if !stream => Ok(Reply::Json(json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        }))),
        Endpoint::ChatCompletions if !stream => Ok(Reply::Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        }))),
        Endpoint::Completions | Endpoint::ChatCompletions => {
            let chat = endpoint == Endpoint::ChatCompletions;
            let object = if chat {
                "chat.completion.chunk"
            } else {
                "text_completion"
            };
            let chunk = |piece: &str, finish: Value| {
                let choice = if chat {
                    json!({"index": 0, "delta": {"content": piece}, "finish_reason": finish})
                } else {
                    json!({"index": 0, "text": piece, "finish_reason": finish})
                };
                json!({"id": id, "object": object, "created": created, "model": model, "choices": [choice]})
            };
            let mut events: Vec<Value> = Vec::new();
            let words: Vec<&str> = text.split_inclusive(' ').collect();
            for w in &words {
                events.push(chunk(w, Value::Null));
            }
            events.push(chunk("", json!("stop")));
            let include_usage = body
                .get("stream_options")
                .and_then(|o| o.get("include_usage"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if include_usage {
                events.push(
                    json!({"id": id, "object": object, "created": created, "model": model,
                                   "choices": [], "usage": usage}),
                );
            }
            let mut all: Vec<SseEvent> = events
                .into_iter()
                .map(|v| SseEvent {
                    data: v.to_string(),
                })
                .collect();
            all.push(SseEvent {
                data: "[DONE]".into(),
            });
            let mut it = all.into_iter();
            let first = it
                .next()
                .ok_or_else(|| RouterError::Internal("empty mock stream".into()))?;
            Ok(Reply::Stream {
                first,
                rest: futures::stream::iter(it.map(Ok)).boxed(),
            })
        }
    }
}
