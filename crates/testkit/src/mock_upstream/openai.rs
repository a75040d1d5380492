//! OpenAI wire shapes: what the mock reads from a request and the bodies it answers with.

use bytes::Bytes;
use serde_json::{json, Value};

/// Model id listed by `GET /v1/models` and used when an OpenAI request names none.
pub(super) const MODEL_ID: &str = "mock-model";

/// The vector returned for every embedding input.
const EMBEDDING: [f32; 4] = [0.1, 0.2, 0.3, 0.4];

/// The context window quoted by the `context_length_exceeded` error.
const CONTEXT_WINDOW: u64 = 8192;

/// The inference APIs the mock serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Endpoint {
    /// `chat/completions`
    Chat,
    /// `completions`
    Completions,
    /// `embeddings`
    Embeddings,
}

/// The parts of an inference request that shape the answer.
#[derive(Debug)]
pub(super) struct Inference {
    pub(super) model: String,
    pub(super) stream: bool,
    pub(super) include_usage: bool,
    pub(super) max_tokens: Option<usize>,
    pub(super) prompt_tokens: u64,
    pub(super) inputs: usize,
}

impl Inference {
    /// Reads an inference request; `model` overrides the body's model (Azure names it in the path).
    /// Fails with a 400 error body when the request is not one OpenAI would accept.
    pub(super) fn parse(
        endpoint: Endpoint,
        body: &Value,
        model: Option<&str>,
    ) -> Result<Self, Value> {
        let Some(fields) = body.as_object() else {
            return Err(invalid_request(
                "We could not parse the JSON body of your request.",
                None,
            ));
        };
        let model = match (model, fields.get("model").and_then(Value::as_str)) {
            (Some(model), _) | (None, Some(model)) => model.to_owned(),
            (None, None) => {
                return Err(invalid_request(
                    "you must provide a model parameter",
                    Some("model"),
                ))
            }
        };
        let (chars, inputs) = match endpoint {
            Endpoint::Chat => {
                let Some(messages) = fields.get("messages").and_then(Value::as_array) else {
                    return Err(invalid_request(
                        "'messages' is a required property",
                        Some("messages"),
                    ));
                };
                let chars = messages
                    .iter()
                    .map(|message| text_chars(message.get("content")))
                    .sum();
                (chars, 1)
            }
            Endpoint::Completions => (text_chars(fields.get("prompt")), 1),
            Endpoint::Embeddings => match fields.get("input") {
                Some(input @ Value::Array(items)) => (text_chars(Some(input)), items.len()),
                Some(input) => (text_chars(Some(input)), 1),
                None => {
                    return Err(invalid_request(
                        "'input' is a required property",
                        Some("input"),
                    ))
                }
            },
        };
        let max_tokens = ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|key| fields.get(*key).and_then(Value::as_u64))
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        Ok(Self {
            model,
            stream: endpoint != Endpoint::Embeddings
                && fields.get("stream").and_then(Value::as_bool) == Some(true),
            include_usage: body
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                == Some(true),
            max_tokens,
            prompt_tokens: prompt_tokens(chars),
            inputs,
        })
    }
}

/// Deterministic prompt token count: a quarter of the characters, rounded up, at least 1.
pub(super) fn prompt_tokens(chars: usize) -> u64 {
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX).max(1)
}

/// Characters of a text field: a string, an array of strings, or an array of content parts with `text`.
fn text_chars(value: Option<&Value>) -> usize {
    match value {
        Some(Value::String(text)) => text.chars().count(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::Object(part) => text_chars(part.get("text")),
                other => text_chars(Some(other)),
            })
            .sum(),
        _ => 0,
    }
}

/// A generated completion: the words of the reply text, cut to `max_tokens`.
#[derive(Debug)]
pub(super) struct Completion<'a> {
    pub(super) id: String,
    pub(super) created: u64,
    pub(super) model: &'a str,
    pub(super) words: Vec<&'a str>,
    pub(super) finish_reason: &'static str,
    pub(super) prompt_tokens: u64,
}

impl<'a> Completion<'a> {
    /// Completes `request` with `reply`: one completion token per whitespace-separated word.
    pub(super) fn new(id: String, created: u64, request: &'a Inference, reply: &'a str) -> Self {
        let mut words: Vec<&str> = reply.split_whitespace().collect();
        let mut finish_reason = "stop";
        if let Some(max) = request.max_tokens {
            if words.len() > max {
                words.truncate(max);
                finish_reason = "length";
            }
        }
        Self {
            id,
            created,
            model: &request.model,
            words,
            finish_reason,
            prompt_tokens: request.prompt_tokens,
        }
    }

    /// Number of completion tokens.
    pub(super) fn tokens(&self) -> u64 {
        u64::try_from(self.words.len()).unwrap_or(u64::MAX)
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens(),
            "total_tokens": self.prompt_tokens + self.tokens(),
        })
    }

    /// The non-streaming response body.
    pub(super) fn to_json(&self, endpoint: Endpoint) -> Value {
        let text = self.words.join(" ");
        let (object, choice) = match endpoint {
            Endpoint::Completions => (
                "text_completion",
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": self.finish_reason}),
            ),
            Endpoint::Chat | Endpoint::Embeddings => (
                "chat.completion",
                json!({
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": self.finish_reason,
                }),
            ),
        };
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(),
        })
    }

    /// The server-sent events of the streaming response: one chunk per word, a chunk with the finish reason, a
    /// usage chunk with no choices when `include_usage`, then `[DONE]`.
    pub(super) fn to_events(&self, endpoint: Endpoint, include_usage: bool) -> Vec<Bytes> {
        let (object, piece, finish): (&str, fn(usize, &str) -> Value, Value) = match endpoint {
            Endpoint::Completions => (
                "text_completion",
                |_, text| json!({"index": 0, "text": text, "logprobs": null, "finish_reason": null}),
                json!({"index": 0, "text": "", "logprobs": null, "finish_reason": self.finish_reason}),
            ),
            Endpoint::Chat | Endpoint::Embeddings => (
                "chat.completion.chunk",
                |index, text| {
                    let delta = if index == 0 {
                        json!({"role": "assistant", "content": text})
                    } else {
                        json!({"content": text})
                    };
                    json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": null})
                },
                json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": self.finish_reason}),
            ),
        };
        let chunk = |choices: Value, usage: Value| {
            let mut chunk = json!({
                "id": self.id,
                "object": object,
                "created": self.created,
                "model": self.model,
                "choices": choices,
            });
            if include_usage {
                chunk["usage"] = usage;
            }
            event(&chunk.to_string())
        };

        let mut events = Vec::with_capacity(self.words.len() + 3);
        if self.words.is_empty() {
            events.push(chunk(json!([piece(0, "")]), Value::Null));
        }
        for (index, word) in self.words.iter().enumerate() {
            let text = if index == 0 {
                (*word).to_owned()
            } else {
                format!(" {word}")
            };
            events.push(chunk(json!([piece(index, &text)]), Value::Null));
        }
        events.push(chunk(json!([finish]), Value::Null));
        if include_usage {
            events.push(chunk(json!([]), self.usage()));
        }
        events.push(event("[DONE]"));
        events
    }
}

/// One server-sent event carrying `data`.
fn event(data: &str) -> Bytes {
    Bytes::from(format!("data: {data}\n\n"))
}

/// The embeddings response: the fixed vector once per input.
pub(super) fn embeddings_json(request: &Inference) -> Value {
    let data: Vec<Value> = (0..request.inputs)
        .map(|index| json!({"object": "embedding", "index": index, "embedding": EMBEDDING}))
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": request.prompt_tokens, "total_tokens": request.prompt_tokens},
    })
}

/// The `GET /v1/models` response.
pub(super) fn models_json(created: u64) -> Value {
    json!({
        "object": "list",
        "data": [{"id": MODEL_ID, "object": "model", "created": created, "owned_by": "mock-upstream"}],
    })
}

/// OpenAI's error body.
pub(super) fn error_body(
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

/// A 400 `invalid_request_error` body.
pub(super) fn invalid_request(message: &str, param: Option<&str>) -> Value {
    error_body(message, "invalid_request_error", param, None)
}

/// The body OpenAI sends when the prompt does not fit the model.
pub(super) fn context_length_exceeded(prompt_tokens: u64) -> Value {
    error_body(
        &format!(
            "This model's maximum context length is {CONTEXT_WINDOW} tokens. However, your messages resulted in \
             {prompt_tokens} tokens. Please reduce the length of the messages."
        ),
        "invalid_request_error",
        Some("messages"),
        Some("context_length_exceeded"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_tokens_round_up_and_never_reach_zero() {
        assert_eq!(prompt_tokens(0), 1);
        assert_eq!(prompt_tokens(4), 1);
        assert_eq!(prompt_tokens(5), 2);
        assert_eq!(prompt_tokens(12), 3);
    }

    #[test]
    fn chat_content_parts_count_their_text() {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "system", "content": "abcd"},
                {"role": "user", "content": [{"type": "text", "text": "efgh"}, {"type": "image_url"}]},
            ],
        });
        let request = Inference::parse(Endpoint::Chat, &body, None).unwrap();
        assert_eq!(request.prompt_tokens, 2);
    }
}
