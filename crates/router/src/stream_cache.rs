//! Streamed answers in the response cache: a relayed stream assembled into the whole answer it spelled out
//! (stored like any answer), and a cached answer replayed as a stream, as LiteLLM does.

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use serde_json::{json, Map, Value};

use crate::error::RouterError;
use crate::request::Endpoint;

/// Gathers the chunks of one streamed answer into the non-streaming answer they spell out. Only plain text
/// answers of one choice are gathered: a stream with tool calls, several choices or an unreadable chunk is
/// not cached.
pub(crate) struct Assembler {
    endpoint: Endpoint,
    head: Map<String, Value>,
    role: Option<Value>,
    text: String,
    finish_reason: Value,
    usage: Value,
    cacheable: bool,
    done: bool,
}

impl Assembler {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            head: Map::new(),
            role: None,
            text: String::new(),
            finish_reason: Value::Null,
            usage: Value::Null,
            cacheable: true,
            done: false,
        }
    }

    /// One event as relayed (`data: ...\n\n`).
    pub(crate) fn observe(&mut self, bytes: &[u8]) {
        if !self.cacheable {
            return;
        }
        let Some(data) = bytes.strip_prefix(b"data: ").map(<[u8]>::trim_ascii) else {
            self.cacheable = false;
            return;
        };
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        let Ok(Value::Object(chunk)) = serde_json::from_slice::<Value>(data) else {
            self.cacheable = false;
            return;
        };
        for key in ["id", "created", "model", "system_fingerprint"] {
            if let Some(v) = chunk.get(key).filter(|v| !v.is_null()) {
                self.head.entry(key).or_insert_with(|| v.clone());
            }
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = usage.clone();
        }
        let choices = chunk.get("choices").and_then(Value::as_array);
        for choice in choices.into_iter().flatten() {
            if choice.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                self.cacheable = false;
                return;
            }
            if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
                self.finish_reason = reason.clone();
            }
            let piece = match self.endpoint {
                Endpoint::ChatCompletions => {
                    let delta = choice.get("delta").cloned().unwrap_or(Value::Null);
                    if delta.get("tool_calls").is_some_and(|t| !t.is_null())
                        || delta.get("function_call").is_some_and(|t| !t.is_null())
                    {
                        self.cacheable = false;
                        return;
                    }
                    if let Some(role) = delta.get("role").filter(|r| !r.is_null()) {
                        self.role.get_or_insert_with(|| role.clone());
                    }
                    delta
                        .get("content")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                }
                Endpoint::Completions => choice
                    .get("text")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                Endpoint::Embeddings => None,
            };
            if let Some(piece) = piece {
                self.text.push_str(&piece);
            }
        }
    }

    /// The whole answer, when the stream ended with `[DONE]` and everything in it could be gathered.
    pub(crate) fn finish(self) -> Option<Value> {
        if !(self.cacheable && self.done) || self.head.is_empty() {
            return None;
        }
        let mut answer = self.head;
        let choice = match self.endpoint {
            Endpoint::ChatCompletions => {
                answer.insert("object".into(), json!("chat.completion"));
                json!({
                    "index": 0,
                    "message": {"role": self.role.unwrap_or_else(|| json!("assistant")), "content": self.text},
                    "finish_reason": self.finish_reason,
                })
            }
            Endpoint::Completions => {
                answer.insert("object".into(), json!("text_completion"));
                json!({"index": 0, "text": self.text, "finish_reason": self.finish_reason, "logprobs": null})
            }
            Endpoint::Embeddings => return None,
        };
        answer.insert("choices".into(), json!([choice]));
        if !self.usage.is_null() {
            answer.insert("usage".into(), self.usage);
        }
        Some(Value::Object(answer))
    }
}

/// A cached whole answer as the stream of events a streaming request expects: the text in one chunk, the
/// finish reason in the next, the usage in a last chunk when the request asked for it
/// (`stream_options.include_usage`), then `[DONE]`.
pub(crate) fn replay(
    endpoint: Endpoint,
    answer: &Value,
    include_usage: bool,
) -> BoxStream<'static, Result<Bytes, RouterError>> {
    let mut head = Map::new();
    for key in ["id", "created", "model", "system_fingerprint"] {
        if let Some(v) = answer.get(key) {
            head.insert(key.to_owned(), v.clone());
        }
    }
    let choice = answer.pointer("/choices/0");
    let reason = choice
        .and_then(|c| c.get("finish_reason"))
        .cloned()
        .unwrap_or(json!("stop"));
    let chunk = |choice: Value| {
        let mut c = head.clone();
        match endpoint {
            Endpoint::Completions => c.insert("object".into(), json!("text_completion")),
            _ => c.insert("object".into(), json!("chat.completion.chunk")),
        };
        c.insert("choices".into(), json!([choice]));
        c
    };
    let mut events = Vec::with_capacity(4);
    match endpoint {
        Endpoint::Completions => {
            let text = choice
                .and_then(|c| c.get("text"))
                .cloned()
                .unwrap_or(json!(""));
            events.push(chunk(
                json!({"index": 0, "text": text, "finish_reason": null}),
            ));
            events.push(chunk(
                json!({"index": 0, "text": "", "finish_reason": reason}),
            ));
        }
        _ => {
            let message = choice.and_then(|c| c.get("message"));
            let role = message
                .and_then(|m| m.get("role"))
                .cloned()
                .unwrap_or(json!("assistant"));
            let content = message
                .and_then(|m| m.get("content"))
                .cloned()
                .unwrap_or(json!(""));
            events.push(chunk(json!({"index": 0, "delta": {"role": role, "content": content}, "finish_reason": null})));
            events.push(chunk(
                json!({"index": 0, "delta": {}, "finish_reason": reason}),
            ));
        }
    }
    if include_usage {
        if let Some(usage) = answer.get("usage") {
            let mut last = chunk(json!(null));
            last.insert("choices".into(), json!([]));
            last.insert("usage".into(), usage.clone());
            events.push(last);
        }
    }
    let mut frames: Vec<Result<Bytes, RouterError>> = events
        .into_iter()
        .map(|e| Ok(Bytes::from(format!("data: {}\n\n", Value::Object(e)))))
        .collect();
    frames.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    futures::stream::iter(frames).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_assembles_and_replays_to_the_same_text() {
        let mut a = Assembler::new(Endpoint::ChatCompletions);
        for data in [
            r#"{"id":"c1","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}"#,
            r#"{"id":"c1","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            r#"{"id":"c1","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#,
            "[DONE]",
        ] {
            a.observe(format!("data: {data}\n\n").as_bytes());
        }
        let whole = a.finish().expect("assembled");
        assert_eq!(whole["choices"][0]["message"]["content"], "Hello");
        assert_eq!(whole["choices"][0]["finish_reason"], "stop");
        assert_eq!(whole["usage"]["total_tokens"], 3);

        let frames: Vec<Bytes> = replay(Endpoint::ChatCompletions, &whole, true)
            .map(|f| f.expect("frame"))
            .collect()
            .await;
        let mut again = Assembler::new(Endpoint::ChatCompletions);
        for f in &frames {
            again.observe(f);
        }
        assert_eq!(again.finish(), Some(whole));
    }

    #[test]
    fn tool_calls_and_unfinished_streams_are_not_gathered() {
        let mut a = Assembler::new(Endpoint::ChatCompletions);
        a.observe(
            br#"data: {"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0}]}}]}"#,
        );
        a.observe(b"data: [DONE]\n\n");
        assert!(a.finish().is_none());
        let mut b = Assembler::new(Endpoint::ChatCompletions);
        b.observe(br#"data: {"id":"c","choices":[{"index":0,"delta":{"content":"x"}}]}"#);
        assert!(b.finish().is_none(), "no [DONE]");
    }
}
