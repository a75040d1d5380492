//! Anthropic's streaming events (`message_start`, `content_block_*`, `message_delta`, `message_stop`, `ping`,
//! `error`) translated event by event into OpenAI `chat.completion.chunk`s ending with `[DONE]`.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use serde_json::{json, Value};

use super::anthropic::{finish_reason, now_secs, usage};
use super::errors::anthropic_stream_error;
use super::sse::SseEvent;
use crate::error::RouterError;
use crate::topology::Deployment;

/// The translation state of one stream.
#[derive(Debug, Default)]
pub(crate) struct Translator {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// `message_start`'s usage, completed by `message_delta`'s.
    usage: serde_json::Map<String, Value>,
    /// Content block index -> OpenAI tool call index.
    tools: HashMap<u64, u64>,
    finish: Option<&'static str>,
    done: bool,
}

impl Translator {
    pub(crate) fn new(include_usage: bool) -> Self {
        Self {
            include_usage,
            created: now_secs(),
            ..Self::default()
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> SseEvent {
        let v = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        SseEvent {
            data: v.to_string(),
        }
    }

    /// The OpenAI events for one Anthropic event; an `error` event is an error.
    pub(crate) fn push(
        &mut self,
        d: &Deployment,
        event: &SseEvent,
    ) -> Result<Vec<SseEvent>, RouterError> {
        if self.done {
            return Ok(Vec::new());
        }
        let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let m = v.get("message").unwrap_or(&Value::Null);
                let text = |k: &str| {
                    m.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                self.id = text("id");
                self.model = text("model");
                if let Some(Value::Object(u)) = m.get("usage") {
                    self.usage.extend(u.clone());
                }
                out.push(self.chunk(json!({"role": "assistant", "content": ""}), None));
            }
            Some("content_block_start") => {
                let block = v.get("content_block").unwrap_or(&Value::Null);
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let n = u64::try_from(self.tools.len()).unwrap_or(u64::MAX);
                        self.tools.insert(index, n);
                        out.push(self.chunk(
                            json!({"tool_calls": [{
                                "index": n,
                                "id": block.get("id").cloned().unwrap_or(Value::Null),
                                "type": "function",
                                "function": {"name": block.get("name").cloned().unwrap_or(Value::Null), "arguments": ""},
                            }]}),
                            None,
                        ));
                    }
                    Some("text") => {
                        if let Some(t) = block
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            out.push(self.chunk(json!({"content": t}), None));
                        }
                    }
                    _ => {}
                }
            }
            Some("content_block_delta") => {
                let delta = v.get("delta").unwrap_or(&Value::Null);
                let index = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let field = |k: &str| delta.get(k).and_then(Value::as_str).unwrap_or_default();
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        out.push(self.chunk(json!({"content": field("text")}), None));
                    }
                    Some("input_json_delta") => {
                        let n = self.tools.get(&index).copied().unwrap_or(0);
                        out.push(self.chunk(
                            json!({"tool_calls": [{"index": n, "function": {"arguments": field("partial_json")}}]}),
                            None,
                        ));
                    }
                    Some("thinking_delta") => {
                        out.push(self.chunk(json!({"reasoning_content": field("thinking")}), None));
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(Value::Object(u)) = v.get("usage") {
                    // Cumulative figures: the later ones replace the earlier.
                    for (k, val) in u {
                        if !val.is_null() {
                            self.usage.insert(k.clone(), val.clone());
                        }
                    }
                }
                let stop = v.pointer("/delta/stop_reason").and_then(Value::as_str);
                let finish = finish_reason(stop);
                self.finish = Some(finish);
                out.push(self.chunk(json!({}), Some(finish)));
            }
            Some("message_stop") => {
                self.done = true;
                if self.finish.is_none() {
                    out.push(self.chunk(json!({}), Some("stop")));
                }
                if self.include_usage {
                    let v = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage(&Value::Object(self.usage.clone())),
                    });
                    out.push(SseEvent {
                        data: v.to_string(),
                    });
                }
                out.push(SseEvent {
                    data: "[DONE]".into(),
                });
            }
            Some("error") => {
                self.done = true;
                return Err(anthropic_stream_error(d, &event.data));
            }
            // `ping`, `content_block_stop` and event types added later carry nothing for the client.
            _ => {}
        }
        Ok(out)
    }
}

/// The OpenAI events of an Anthropic event stream, as they arrive.
pub(crate) fn translate(
    d: Arc<Deployment>,
    events: BoxStream<'static, Result<SseEvent, RouterError>>,
    include_usage: bool,
) -> BoxStream<'static, Result<SseEvent, RouterError>> {
    struct State {
        d: Arc<Deployment>,
        events: BoxStream<'static, Result<SseEvent, RouterError>>,
        t: Translator,
        ready: VecDeque<SseEvent>,
        ended: bool,
    }
    let state = State {
        d,
        events,
        t: Translator::new(include_usage),
        ready: VecDeque::new(),
        ended: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(e) = st.ready.pop_front() {
                return Some((Ok(e), st));
            }
            if st.ended {
                return None;
            }
            match st.events.next().await {
                Some(Ok(event)) => match st.t.push(&st.d, &event) {
                    Ok(out) => st.ready.extend(out),
                    Err(e) => {
                        st.ended = true;
                        return Some((Err(e), st));
                    }
                },
                Some(Err(e)) => {
                    st.ended = true;
                    return Some((Err(e), st));
                }
                None => st.ended = true,
            }
        }
    })
    .boxed()
}
