//! Anthropic wire shapes: the Messages API request the mock reads, its answers (JSON, server-sent events) and
//! its error bodies.
//!
//! Deterministic like the OpenAI mode: prompt tokens are a quarter of the prompt's characters (system, text
//! blocks, tool results), rounded up, at least 1; text in blocks marked `cache_control` counts as
//! `cache_read_input_tokens` instead of `input_tokens`. When the request offers tools (and `tool_choice` is not
//! `none`) and its last turn carries no `tool_result`, the answer is a `tool_use` of the named tool (or the
//! first one) with input `{"query": <reply text>}` and `stop_reason: tool_use`; otherwise the reply text, cut at
//! `max_tokens` words (`max_tokens`) or before a word equal to a stop sequence (`stop_sequence`).

use bytes::Bytes;
use serde_json::{json, Value};

use super::openai::prompt_tokens;

/// The context window quoted by the "prompt is too long" error.
const CONTEXT_WINDOW: u64 = 200_000;

/// Anthropic's error body.
pub(super) fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

/// A parsed Messages request.
#[derive(Debug)]
pub(super) struct MessagesRequest {
    model: String,
    pub(super) stream: bool,
    max_tokens: usize,
    stop_sequences: Vec<String>,
    input_tokens: u64,
    cached_tokens: u64,
    /// The tool to call, when the answer is a tool call.
    tool: Option<String>,
}

impl MessagesRequest {
    /// Reads a Messages request; a 400 error body when Anthropic would refuse it.
    pub(super) fn parse(body: &Value) -> Result<Self, Value> {
        let invalid = |m: &str| error_body("invalid_request_error", m);
        let Some(fields) = body.as_object() else {
            return Err(invalid("request body is not valid JSON"));
        };
        let model = fields
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("model: Field required"))?
            .to_owned();
        let max_tokens = fields
            .get("max_tokens")
            .and_then(Value::as_u64)
            .ok_or_else(|| invalid("max_tokens: Field required"))?;
        let messages = fields
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("messages: Field required"))?;
        let mut chars = 0;
        let mut cached = 0;
        count(fields.get("system"), false, &mut chars, &mut cached);
        for (i, m) in messages.iter().enumerate() {
            match m.get("role").and_then(Value::as_str) {
                Some("user" | "assistant") => {}
                _ => {
                    return Err(invalid(&format!(
                        "messages.{i}.role: Input should be 'user' or 'assistant'"
                    )))
                }
            }
            count(m.get("content"), false, &mut chars, &mut cached);
        }
        let last_has_tool_result = messages
            .last()
            .and_then(|m| m.get("content"))
            .and_then(Value::as_array)
            .is_some_and(|blocks| {
                blocks
                    .iter()
                    .any(|b| b.get("type").and_then(Value::as_str) == Some("tool_result"))
            });
        let tools = fields.get("tools").and_then(Value::as_array);
        let choice = fields.get("tool_choice");
        let choice_type = choice
            .and_then(|c| c.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("auto");
        let tool = match tools {
            Some(tools) if !tools.is_empty() && choice_type != "none" && !last_has_tool_result => {
                let named = choice
                    .filter(|_| choice_type == "tool")
                    .and_then(|c| c.get("name"))
                    .and_then(Value::as_str);
                named
                    .or_else(|| tools[0].get("name").and_then(Value::as_str))
                    .map(str::to_owned)
            }
            _ => None,
        };
        let stop_sequences = fields
            .get("stop_sequences")
            .and_then(Value::as_array)
            .map(|s| {
                s.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let all = prompt_tokens(chars + cached);
        let cached_tokens = if cached == 0 {
            0
        } else {
            prompt_tokens(cached).min(all.saturating_sub(1))
        };
        Ok(Self {
            model,
            stream: fields.get("stream").and_then(Value::as_bool) == Some(true),
            max_tokens: usize::try_from(max_tokens).unwrap_or(usize::MAX),
            stop_sequences,
            input_tokens: all - cached_tokens,
            cached_tokens,
            tool,
        })
    }

    /// All prompt tokens, cached ones included.
    pub(super) fn prompt_tokens(&self) -> u64 {
        self.input_tokens + self.cached_tokens
    }
}

/// Adds the characters of a system or content value to `chars` (or to `cached` under `cache_control`).
fn count(v: Option<&Value>, in_cache: bool, chars: &mut usize, cached: &mut usize) {
    fn add(n: usize, cache: bool, chars: &mut usize, cached: &mut usize) {
        if cache {
            *cached += n;
        } else {
            *chars += n;
        }
    }
    match v {
        Some(Value::String(s)) => add(s.chars().count(), in_cache, chars, cached),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                let cache = in_cache || b.get("cache_control").is_some();
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let n = b
                            .get("text")
                            .and_then(Value::as_str)
                            .map_or(0, |t| t.chars().count());
                        add(n, cache, chars, cached);
                    }
                    Some("tool_result") => count(b.get("content"), cache, chars, cached),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// The answer to a Messages request.
#[derive(Debug)]
pub(super) struct Message<'a> {
    id: String,
    request: &'a MessagesRequest,
    words: Vec<&'a str>,
    text: String,
    stop_reason: &'static str,
    stop_sequence: Option<String>,
}

impl<'a> Message<'a> {
    pub(super) fn new(n: u64, request: &'a MessagesRequest, reply: &'a str) -> Self {
        let mut words: Vec<&str> = reply.split_whitespace().collect();
        let mut stop_reason = "end_turn";
        let mut stop_sequence = None;
        if request.tool.is_some() {
            stop_reason = "tool_use";
        } else {
            if let Some(at) = words
                .iter()
                .position(|w| request.stop_sequences.iter().any(|s| s == w))
            {
                stop_sequence = Some(words[at].to_owned());
                words.truncate(at);
                stop_reason = "stop_sequence";
            }
            if words.len() > request.max_tokens {
                words.truncate(request.max_tokens);
                stop_reason = "max_tokens";
            }
        }
        Self {
            id: format!("msg_mock{n}"),
            request,
            text: reply.to_owned(),
            words,
            stop_reason,
            stop_sequence,
        }
    }

    /// Output tokens: one per word, or one per reply word for a tool call's input.
    pub(super) fn tokens(&self) -> u64 {
        let n = if self.request.tool.is_some() {
            self.text.split_whitespace().count().max(1)
        } else {
            self.words.len()
        };
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    fn usage(&self, output: u64) -> Value {
        json!({
            "input_tokens": self.request.input_tokens,
            "output_tokens": output,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": self.request.cached_tokens,
        })
    }

    fn tool_block(&self, name: &str, input: Value) -> Value {
        json!({"type": "tool_use", "id": format!("toolu_{}", self.id), "name": name, "input": input})
    }

    /// The non-streaming body.
    pub(super) fn to_json(&self) -> Value {
        let content = match &self.request.tool {
            Some(name) => vec![self.tool_block(name, json!({"query": self.text}))],
            None => vec![json!({"type": "text", "text": self.words.join(" ")})],
        };
        json!({
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.request.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self.usage(self.tokens()),
        })
    }

    /// The server-sent events: `message_start`, `ping`, one content block with a delta per word (a tool call's
    /// input in two `input_json_delta` halves), `message_delta` with the stop reason and usage, `message_stop`.
    pub(super) fn to_events(&self) -> Vec<Bytes> {
        let mut events = vec![
            event(
                "message_start",
                &json!({"type": "message_start", "message": {
                    "id": self.id, "type": "message", "role": "assistant", "model": self.request.model,
                    "content": [], "stop_reason": null, "stop_sequence": null, "usage": self.usage(1),
                }}),
            ),
            event("ping", &json!({"type": "ping"})),
        ];
        match &self.request.tool {
            Some(name) => {
                events.push(event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": 0, "content_block": self.tool_block(name, json!({}))}),
                ));
                let input = json!({"query": self.text}).to_string();
                let mid = input.len() / 2;
                let mid = (mid..input.len())
                    .find(|i| input.is_char_boundary(*i))
                    .unwrap_or(input.len());
                for piece in [&input[..mid], &input[mid..]] {
                    events.push(event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": 0,
                                "delta": {"type": "input_json_delta", "partial_json": piece}}),
                    ));
                }
            }
            None => {
                events.push(event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ));
                for (i, w) in self.words.iter().enumerate() {
                    let text = if i == 0 {
                        (*w).to_owned()
                    } else {
                        format!(" {w}")
                    };
                    events.push(event(
                        "content_block_delta",
                        &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
                    ));
                }
            }
        }
        events.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(event(
            "message_delta",
            &json!({"type": "message_delta",
                    "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
                    "usage": {"output_tokens": self.tokens()}}),
        ));
        events.push(event("message_stop", &json!({"type": "message_stop"})));
        events
    }
}

/// One named server-sent event.
fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The error Anthropic sends when the prompt does not fit the model.
pub(super) fn prompt_too_long(prompt_tokens: u64) -> Value {
    error_body(
        "invalid_request_error",
        &format!("prompt is too long: {prompt_tokens} tokens > {CONTEXT_WINDOW} maximum"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_are_called_until_a_result_comes_back() {
        let tools = json!([{"name": "lookup", "input_schema": {"type": "object"}}]);
        let r = MessagesRequest::parse(&json!({
            "model": "claude", "max_tokens": 10, "tools": tools,
            "messages": [{"role": "user", "content": "hi"}],
        }))
        .unwrap();
        let m = Message::new(1, &r, "a b");
        assert_eq!(m.to_json()["content"][0]["input"], json!({"query": "a b"}));
        let r = MessagesRequest::parse(&json!({
            "model": "claude", "max_tokens": 10, "tools": tools,
            "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}],
        }))
        .unwrap();
        assert_eq!(
            Message::new(1, &r, "a b").to_json()["stop_reason"],
            json!("end_turn")
        );
    }

    #[test]
    fn refuses_what_anthropic_refuses() {
        let e = MessagesRequest::parse(&json!({"model": "c", "messages": []})).unwrap_err();
        assert_eq!(e["error"]["type"], json!("invalid_request_error"));
        let e = MessagesRequest::parse(&json!({
            "model": "c", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}],
        }))
        .unwrap_err();
        assert!(e["error"]["message"].as_str().unwrap().contains("role"));
    }
}
