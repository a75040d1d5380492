//! `POST /v1/messages`: Anthropic's Messages API for Anthropic SDK clients. The request is translated to a chat
//! completion and goes the way every chat completion goes (model groups, priority, limits, retries,
//! fallbacks; an `anthropic/` deployment gets it back in Anthropic's shape, any other an OpenAI body); the
//! answer, the stream and the errors are translated to Anthropic's shapes.

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use router::Endpoint;
use serde_json::{json, Map, Value};

use crate::auth::Caller;
use crate::routes::inference;
use crate::state::AppState;

/// Body fields of ours (and LiteLLM's) that steer routing: passed on as they are.
const PASSED_ON: &[&str] = &[
    "priority",
    "timeout",
    "cache",
    "mock_response",
    "mock_delay",
    "fallbacks",
    "num_retries",
    "stream_timeout",
];

/// Largest answer body read back for translation.
const ANSWER_LIMIT: usize = 256 * 1024 * 1024;

pub(crate) async fn messages(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (body, stream) = match body {
        Ok(bytes) => match to_chat(&bytes) {
            Ok((chat, stream)) => (Ok(Bytes::from(chat.to_string())), stream),
            Err((message, _param)) => {
                return error_response(StatusCode::BAD_REQUEST, &message, None)
            }
        },
        Err(rejection) => (Err(rejection), false),
    };
    let response = inference(state, Endpoint::ChatCompletions, false, caller, body).await;
    from_chat_response(response, stream).await
}

/// Anthropic's error `type` for a status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 415 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        408 | 504 => "timeout_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

fn error_body(status: StatusCode, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

fn error_response(status: StatusCode, message: &str, keep: Option<&Response>) -> Response {
    let mut response = (status, axum::Json(error_body(status, message))).into_response();
    if let Some(original) = keep {
        for name in [header::RETRY_AFTER, header::CONNECTION] {
            if let Some(v) = original.headers().get(&name) {
                response.headers_mut().insert(name, v.clone());
            }
        }
    }
    response
}

type Invalid = (String, &'static str);

fn invalid(message: impl Into<String>, param: &'static str) -> Invalid {
    (message.into(), param)
}

/// The chat-completion body for a Messages body, and whether it streams.
fn to_chat(bytes: &[u8]) -> Result<(Value, bool), Invalid> {
    let v: Value = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("request body is not valid JSON: {e}"), "body"))?;
    let Value::Object(b) = v else {
        return Err(invalid("request body must be a JSON object", "body"));
    };
    let mut out = Map::new();
    match b.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => {
            out.insert("model".into(), json!(m));
        }
        _ => return Err(invalid("model: Field required", "model")),
    }
    let max_tokens = b
        .get("max_tokens")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid("max_tokens: Field required", "max_tokens"))?;
    out.insert("max_tokens".into(), json!(max_tokens));
    let Some(Value::Array(list)) = b.get("messages") else {
        return Err(invalid("messages: Field required", "messages"));
    };
    let mut messages = Vec::new();
    match b.get("system") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => messages.push(json!({"role": "system", "content": s})),
        Some(Value::Array(blocks)) => {
            messages.push(json!({"role": "system", "content": parts(blocks, "system")?}));
        }
        Some(_) => {
            return Err(invalid(
                "system: must be a string or a list of text blocks",
                "system",
            ))
        }
    }
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str);
        let content = m.get("content");
        match (role, content) {
            (Some(role @ ("user" | "assistant")), Some(Value::String(s))) => {
                messages.push(json!({"role": role, "content": s}));
            }
            (Some("user"), Some(Value::Array(blocks))) => {
                // Tool results are messages of their own in OpenAI's shape, ahead of the user's other parts.
                let (results, rest): (Vec<&Value>, Vec<&Value>) = blocks
                    .iter()
                    .partition(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"));
                for r in results {
                    let content = match r.get("content") {
                        Some(Value::String(s)) => json!(s),
                        Some(Value::Array(blocks)) => {
                            let text: Vec<&str> = blocks
                                .iter()
                                .filter_map(|b| b.get("text").and_then(Value::as_str))
                                .collect();
                            json!(text.join("\n"))
                        }
                        _ => json!(""),
                    };
                    messages.push(json!({
                        "role": "tool",
                        "tool_call_id": r.get("tool_use_id").cloned().unwrap_or(Value::Null),
                        "content": content,
                    }));
                }
                if !rest.is_empty() {
                    let rest: Vec<Value> = rest.into_iter().cloned().collect();
                    messages.push(json!({"role": "user", "content": parts(&rest, "messages")?}));
                }
            }
            (Some("assistant"), Some(Value::Array(blocks))) => {
                let mut text = String::new();
                let mut calls = Vec::new();
                for block in blocks {
                    match block.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            text.push_str(block.get("text").and_then(Value::as_str).unwrap_or(""));
                        }
                        Some("tool_use") => calls.push(json!({
                            "id": block.get("id").cloned().unwrap_or(Value::Null),
                            "type": "function",
                            "function": {
                                "name": block.get("name").cloned().unwrap_or(Value::Null),
                                "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                            },
                        })),
                        _ => {}
                    }
                }
                let mut message = json!({"role": "assistant", "content": text});
                if !calls.is_empty() {
                    message["tool_calls"] = Value::Array(calls);
                }
                messages.push(message);
            }
            _ => {
                return Err(invalid(
                    format!(
                        "messages.{i}: needs `role` user or assistant and `content` (a string or blocks)"
                    ),
                    "messages",
                ))
            }
        }
    }
    out.insert("messages".into(), Value::Array(messages));
    if let Some(Value::Array(stop)) = b.get("stop_sequences") {
        out.insert("stop".into(), Value::Array(stop.clone()));
    }
    for key in ["temperature", "top_p", "top_k", "thinking"] {
        if let Some(v) = b.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(user) = b
        .get("metadata")
        .and_then(|m| m.get("user_id"))
        .and_then(Value::as_str)
    {
        out.insert("user".into(), json!(user));
    }
    if let Some(Value::Array(tools)) = b.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut f = json!({
                    "name": t.get("name").cloned().unwrap_or(Value::Null),
                    "parameters": t.get("input_schema").cloned().unwrap_or_else(|| json!({"type": "object"})),
                });
                if let Some(d) = t.get("description") {
                    f["description"] = d.clone();
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        out.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = b.get("tool_choice") {
        let c = match choice.get("type").and_then(Value::as_str) {
            Some("auto") => json!("auto"),
            Some("any") => json!("required"),
            Some("none") => json!("none"),
            Some("tool") => {
                json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => return Err(invalid("tool_choice: unknown type", "tool_choice")),
        };
        if choice.get("disable_parallel_tool_use") == Some(&json!(true)) {
            out.insert("parallel_tool_calls".into(), json!(false));
        }
        out.insert("tool_choice".into(), c);
    }
    let stream = b.get("stream") == Some(&json!(true));
    if stream {
        out.insert("stream".into(), json!(true));
        // The usage chunk gives `message_delta` its figures.
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    for key in PASSED_ON {
        if let Some(v) = b.get(*key) {
            out.insert((*key).into(), v.clone());
        }
    }
    Ok((Value::Object(out), stream))
}

/// Anthropic content blocks as OpenAI content parts (text with its `cache_control`, images as `image_url`).
fn parts(blocks: &[Value], param: &'static str) -> Result<Vec<Value>, Invalid> {
    let mut out = Vec::with_capacity(blocks.len());
    for b in blocks {
        let mut part = match b.get("type").and_then(Value::as_str) {
            Some("text") => {
                json!({"type": "text", "text": b.get("text").cloned().unwrap_or(json!(""))})
            }
            Some("image") => {
                let source = b.get("source").unwrap_or(&Value::Null);
                let url = match source.get("type").and_then(Value::as_str) {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        source
                            .get("media_type")
                            .and_then(Value::as_str)
                            .unwrap_or("image/png"),
                        source.get("data").and_then(Value::as_str).unwrap_or("")
                    ),
                    _ => source
                        .get("url")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                };
                json!({"type": "image_url", "image_url": {"url": url}})
            }
            // Documents and the like: an `anthropic/` deployment takes them as they are.
            Some(_) => b.clone(),
            None => return Err(invalid("content blocks need a `type`", param)),
        };
        if let (Some(cc), Some(p)) = (b.get("cache_control"), part.as_object_mut()) {
            p.insert("cache_control".into(), cc.clone());
        }
        out.push(part);
    }
    Ok(out)
}

/// Anthropic's `stop_reason` for OpenAI's `finish_reason`.
fn stop_reason(finish: Option<&str>) -> &'static str {
    match finish {
        Some("length") => "max_tokens",
        Some("tool_calls" | "function_call") => "tool_use",
        Some("content_filter") => "refusal",
        _ => "end_turn",
    }
}

/// Anthropic's usage for OpenAI's (cached tokens out of `input_tokens`, as Anthropic counts them).
fn usage(u: Option<&Value>) -> Value {
    let get = |p: &str| u.and_then(|u| u.pointer(p)).and_then(Value::as_u64);
    let read = get("/cache_read_input_tokens")
        .or_else(|| get("/prompt_tokens_details/cached_tokens"))
        .unwrap_or(0);
    let created = get("/cache_creation_input_tokens").unwrap_or(0);
    let prompt = get("/prompt_tokens").unwrap_or(0);
    json!({
        "input_tokens": prompt.saturating_sub(read + created),
        "output_tokens": get("/completion_tokens").unwrap_or(0),
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
    })
}

/// The Messages answer for a chat completion.
fn to_message(v: &Value) -> Value {
    let m = v.pointer("/choices/0/message");
    let mut content = Vec::new();
    if let Some(text) = m
        .and_then(|m| m.get("content"))
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": text}));
    }
    for call in m
        .and_then(|m| m.get("tool_calls"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let args = call
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .and_then(|a| serde_json::from_str::<Value>(a).ok())
            .unwrap_or_else(|| json!({}));
        content.push(json!({
            "type": "tool_use",
            "id": call.get("id").cloned().unwrap_or(Value::Null),
            "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null),
            "input": args,
        }));
    }
    let finish = v
        .pointer("/choices/0/finish_reason")
        .and_then(Value::as_str);
    json!({
        "id": v.get("id").cloned().unwrap_or(Value::Null),
        "type": "message",
        "role": "assistant",
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": null,
        "usage": usage(v.get("usage")),
    })
}

async fn from_chat_response(response: Response, stream: bool) -> Response {
    let status = response.status();
    let (parts, body) = response.into_parts();
    if !status.is_success() {
        let bytes = axum::body::to_bytes(body, ANSWER_LIMIT)
            .await
            .unwrap_or_default();
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.pointer("/error/message")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        let original = Response::from_parts(parts, Body::empty());
        return error_response(status, &message, Some(&original));
    }
    let is_sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if stream && is_sse {
        let mut translator = StreamTranslator::default();
        let mut buffer = Vec::new();
        let events = body.into_data_stream().map(move |chunk| {
            let mut out = String::new();
            match chunk {
                Ok(bytes) => {
                    buffer.extend_from_slice(&bytes);
                    while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                        let block: Vec<u8> = buffer.drain(..end + 2).collect();
                        let text = String::from_utf8_lossy(&block);
                        let data: String = text
                            .lines()
                            .filter_map(|l| {
                                l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:"))
                            })
                            .collect::<Vec<_>>()
                            .join("\n");
                        translator.push(&data, &mut out);
                    }
                }
                Err(e) => translator.fail(StatusCode::BAD_GATEWAY, &e.to_string(), &mut out),
            }
            Ok::<_, std::convert::Infallible>(Bytes::from(out))
        });
        let mut response = Response::from_parts(parts, Body::from_stream(events));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        response.headers_mut().remove(header::CONTENT_LENGTH);
        return response;
    }
    let bytes = axum::body::to_bytes(body, ANSWER_LIMIT)
        .await
        .unwrap_or_default();
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) => {
            let mut response = Response::from_parts(parts, Body::from(to_message(&v).to_string()));
            response.headers_mut().remove(header::CONTENT_LENGTH);
            response
        }
        Err(_) => error_response(
            StatusCode::BAD_GATEWAY,
            "the answer could not be read",
            None,
        ),
    }
}

/// OpenAI chunks -> Anthropic events for one stream.
#[derive(Debug, Default)]
struct StreamTranslator {
    started: bool,
    /// The open content block: (index, is a tool call).
    open: Option<(u64, bool)>,
    next_index: u64,
    finish: Option<String>,
    usage: Option<Value>,
    done: bool,
}

fn event(out: &mut String, name: &str, data: &Value) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata: ");
    out.push_str(&data.to_string());
    out.push_str("\n\n");
}

impl StreamTranslator {
    fn start(&mut self, chunk: &Value, out: &mut String) {
        if self.started {
            return;
        }
        self.started = true;
        event(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": chunk.get("id").cloned().unwrap_or(Value::Null),
                "type": "message", "role": "assistant",
                "model": chunk.get("model").cloned().unwrap_or(Value::Null),
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            }}),
        );
    }

    fn close(&mut self, out: &mut String) {
        if let Some((index, _)) = self.open.take() {
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
            );
        }
    }

    fn open_block(&mut self, tool: bool, block: Value, out: &mut String) -> u64 {
        self.close(out);
        let index = self.next_index;
        self.next_index += 1;
        self.open = Some((index, tool));
        event(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn push(&mut self, data: &str, out: &mut String) {
        if self.done || data.is_empty() {
            return;
        }
        if data.trim() == "[DONE]" {
            self.finish_message(out);
            return;
        }
        let Ok(chunk) = serde_json::from_str::<Value>(data) else {
            return;
        };
        if let Some(err) = chunk.get("error") {
            let message = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the stream broke");
            let status = err.get("type").and_then(Value::as_str).map_or(
                StatusCode::BAD_GATEWAY,
                |t| match t {
                    "rate_limit_error" => StatusCode::TOO_MANY_REQUESTS,
                    "timeout_error" => StatusCode::GATEWAY_TIMEOUT,
                    _ => StatusCode::BAD_GATEWAY,
                },
            );
            self.fail(status, message, out);
            return;
        }
        self.start(&chunk, out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            let index = match self.open {
                Some((i, false)) => i,
                _ => self.open_block(false, json!({"type": "text", "text": ""}), out),
            };
            event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}}),
            );
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(id) = call.get("id").filter(|v| !v.is_null()) {
                self.open_block(
                    true,
                    json!({"type": "tool_use", "id": id, "name": call.pointer("/function/name").cloned().unwrap_or(Value::Null), "input": {}}),
                    out,
                );
            }
            if let (Some((index, true)), Some(args)) = (
                self.open,
                call.pointer("/function/arguments")
                    .and_then(Value::as_str)
                    .filter(|a| !a.is_empty()),
            ) {
                event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": args}}),
                );
            }
        }
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(f.to_owned());
        }
    }

    fn finish_message(&mut self, out: &mut String) {
        self.done = true;
        if !self.started {
            self.start(&Value::Null, out);
        }
        self.close(out);
        let usage = usage(self.usage.as_ref());
        event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(self.finish.as_deref()), "stop_sequence": null},
                    "usage": usage}),
        );
        event(out, "message_stop", &json!({"type": "message_stop"}));
    }

    fn fail(&mut self, status: StatusCode, message: &str, out: &mut String) {
        if self.done {
            return;
        }
        self.done = true;
        event(out, "error", &error_body(status, message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_become_chat_messages() {
        let body = json!({
            "model": "claude", "max_tokens": 100, "system": "Be brief.",
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "w", "input": {"q": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}, {"type": "text", "text": "and?"}]},
            ],
            "tools": [{"name": "w", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any"},
            "stop_sequences": ["X"], "stream": true, "priority": 3,
        });
        let (chat, stream) = to_chat(body.to_string().as_bytes()).unwrap();
        assert!(stream);
        let m = chat["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            json!("{\"q\":1}")
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "sunny"})
        );
        assert_eq!(m[4]["role"], json!("user"));
        assert_eq!(chat["tool_choice"], json!("required"));
        assert_eq!(chat["tools"][0]["function"]["name"], json!("w"));
        assert_eq!(chat["stop"], json!(["X"]));
        assert_eq!(chat["priority"], json!(3));
        assert_eq!(chat["stream_options"]["include_usage"], json!(true));
        let e = to_chat(br#"{"model": "c", "messages": []}"#).unwrap_err();
        assert_eq!(e.1, "max_tokens");
    }

    #[test]
    fn chunks_become_events() {
        let mut t = StreamTranslator::default();
        let mut out = String::new();
        for data in [
            r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","type":"function","function":{"name":"w","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"c1","model":"m","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
            "[DONE]",
        ] {
            t.push(data, &mut out);
        }
        let names: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert!(out.contains(r#""stop_reason":"tool_use""#), "{out}");
        assert!(out.contains(r#""output_tokens":2"#), "{out}");
    }
}
