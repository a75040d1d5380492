//! `/v1/completions` on a chat-only deployment, as LiteLLM does it: the prompt sent as a chat call and the
//! chat answer (whole or streamed) turned back into a text completion.

use futures::stream::{BoxStream, StreamExt};
use serde_json::{json, Map, Value};

use crate::error::RouterError;
use crate::provider::{Reply, SseEvent};
use crate::topology::Deployment;

/// Completions parameters that have no chat counterpart and are left out of the chat call.
const COMPLETIONS_ONLY: &[&str] = &["prompt", "echo", "best_of", "suffix", "logprobs"];

/// Whether a text completion for `d` goes through chat: LiteLLM's `openai/` and `azure/` deployments speak
/// chat (its `text-completion-openai/` and `azure_text/` speak completions), except instruct models and
/// deployments whose `model_info.mode` is `completion`. Mock deployments answer completions themselves.
pub(crate) fn through_chat(d: &Deployment) -> bool {
    matches!(d.provider.as_str(), "openai" | "azure")
        && d.mock_response.is_none()
        && !d.model.contains("instruct")
        && d.model_info.get("mode").and_then(Value::as_str) != Some("completion")
}

/// The chat body of a completions body: the prompt as one user message, the shared parameters kept.
pub(crate) fn chat_body(body: &Map<String, Value>) -> Result<Map<String, Value>, RouterError> {
    let prompt = match body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_owned()
        }
        _ => return Err(RouterError::BadRequest {
            message:
                "this model answers chat: `prompt` must be one string (several prompts or token \
                          arrays need a completion model, e.g. `text-completion-openai/`)"
                    .into(),
            param: Some("prompt".into()),
        }),
    };
    let mut out: Map<String, Value> = body
        .iter()
        .filter(|(k, _)| !COMPLETIONS_ONLY.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.insert(
        "messages".into(),
        json!([{"role": "user", "content": prompt}]),
    );
    Ok(out)
}

/// A chat answer as the text completion the client asked for.
pub(crate) fn reply_as_text(reply: Reply) -> Reply {
    match reply {
        Reply::Json(v) => Reply::Json(answer_as_text(&v)),
        Reply::Stream { first, rest } => Reply::Stream {
            first: event_as_text(first),
            rest: rest.map(|e| e.map(event_as_text)).boxed()
                as BoxStream<'static, Result<SseEvent, RouterError>>,
        },
    }
}

fn answer_as_text(v: &Value) -> Value {
    let mut out = head(v);
    let choices: Vec<Value> = v
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "index": c.get("index").cloned().unwrap_or(json!(0)),
                "text": c.pointer("/message/content").and_then(Value::as_str).unwrap_or_default(),
                "finish_reason": c.get("finish_reason").cloned().unwrap_or(Value::Null),
                "logprobs": null,
            })
        })
        .collect();
    out.insert("choices".into(), Value::Array(choices));
    if let Some(usage) = v.get("usage") {
        out.insert("usage".into(), usage.clone());
    }
    Value::Object(out)
}

fn event_as_text(event: SseEvent) -> SseEvent {
    if event.is_done() {
        return event;
    }
    let Ok(v) = serde_json::from_str::<Value>(&event.data) else {
        return event;
    };
    if v.get("error").is_some() {
        return event;
    }
    let mut out = head(&v);
    let choices: Vec<Value> = v
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            json!({
                "index": c.get("index").cloned().unwrap_or(json!(0)),
                "text": c.pointer("/delta/content").and_then(Value::as_str).unwrap_or_default(),
                "finish_reason": c.get("finish_reason").cloned().unwrap_or(Value::Null),
                "logprobs": null,
            })
        })
        .collect();
    out.insert("choices".into(), Value::Array(choices));
    if let Some(usage) = v.get("usage").filter(|u| !u.is_null()) {
        out.insert("usage".into(), usage.clone());
    }
    SseEvent {
        data: Value::Object(out).to_string(),
    }
}

/// `id`, `created`, `model`, `system_fingerprint` of a chat answer, with the text completion's `object`.
fn head(v: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for key in ["id", "created", "model", "system_fingerprint"] {
        if let Some(x) = v.get(key) {
            out.insert(key.to_owned(), x.clone());
        }
    }
    out.insert("object".into(), json!("text_completion"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_becomes_one_user_message_and_the_answer_text() {
        let body = json!({"model": "g", "prompt": ["Once upon"], "max_tokens": 5, "echo": false});
        let chat = chat_body(body.as_object().unwrap()).unwrap();
        assert_eq!(
            chat["messages"],
            json!([{"role": "user", "content": "Once upon"}])
        );
        assert_eq!(chat["max_tokens"], 5);
        assert!(!chat.contains_key("prompt") && !chat.contains_key("echo"));
        let many = json!({"prompt": ["a", "b"]});
        assert!(chat_body(many.as_object().unwrap()).is_err());

        let answer = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "a time"}, "finish_reason": "stop"}],
            "usage": {"total_tokens": 3}});
        let Reply::Json(text) = reply_as_text(Reply::Json(answer)) else {
            unreachable!()
        };
        assert_eq!(text["object"], "text_completion");
        assert_eq!(text["choices"][0]["text"], "a time");
        assert_eq!(text["usage"]["total_tokens"], 3);
        let chunk = event_as_text(SseEvent {
            data: r#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}"#.into(),
        });
        let v: Value = serde_json::from_str(&chunk.data).unwrap();
        assert_eq!(v["choices"][0]["text"], "a");
        assert_eq!(v["object"], "text_completion");
    }
}
