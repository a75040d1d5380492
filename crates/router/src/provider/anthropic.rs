//! Anthropic's Messages API: OpenAI chat-completion requests translated to it and its answers translated back
//! (content parts and images, tools and tool calls, stop reasons, usage with cache tokens), as LiteLLM does.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::error::RouterError;

/// `max_tokens` sent when the request names none (LiteLLM's `DEFAULT_ANTHROPIC_CHAT_MAX_TOKENS`).
pub(crate) const DEFAULT_MAX_TOKENS: u64 = 4096;

fn bad(message: impl Into<String>, param: &str) -> RouterError {
    RouterError::BadRequest {
        message: message.into(),
        param: Some(param.to_owned()),
    }
}

/// The Messages API body for an OpenAI chat-completion body (`model` already the deployment's).
pub(crate) fn request(body: &Value) -> Result<Value, RouterError> {
    let Some(b) = body.as_object() else {
        return Err(bad("the request body must be a JSON object", "messages"));
    };
    let mut out = Map::new();
    out.insert(
        "model".into(),
        b.get("model").cloned().unwrap_or(Value::Null),
    );
    let (system, messages) = messages(b.get("messages"))?;
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), Value::Array(messages));
    let max_tokens = match b
        .get("max_completion_tokens")
        .or_else(|| b.get("max_tokens"))
    {
        None | Some(Value::Null) => DEFAULT_MAX_TOKENS,
        Some(v) => v
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("`max_tokens` must be a positive integer", "max_tokens"))?,
    };
    out.insert("max_tokens".into(), json!(max_tokens));
    match b.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            if !items.is_empty() {
                out.insert("stop_sequences".into(), Value::Array(items.clone()));
            }
        }
        Some(_) => {
            return Err(bad(
                "`stop` must be a string or an array of strings",
                "stop",
            ))
        }
    }
    for key in ["temperature", "top_p", "top_k", "stream", "thinking"] {
        if let Some(v) = b.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(Value::String(user)) = b.get("user") {
        out.insert("metadata".into(), json!({ "user_id": user }));
    }
    if let Some(tools) = b.get("tools").filter(|v| !v.is_null()) {
        out.insert("tools".into(), self::tools(tools)?);
    }
    let parallel = b.get("parallel_tool_calls").and_then(Value::as_bool);
    if let Some(choice) = b.get("tool_choice").filter(|v| !v.is_null()) {
        out.insert("tool_choice".into(), tool_choice(choice, parallel)?);
    } else if parallel == Some(false) && out.contains_key("tools") {
        out.insert(
            "tool_choice".into(),
            json!({"type": "auto", "disable_parallel_tool_use": true}),
        );
    }
    Ok(Value::Object(out))
}

/// (system blocks, messages): system and developer messages become the top-level `system`; tool results
/// become `tool_result` blocks of a user turn; consecutive turns of one role are merged (Anthropic wants
/// them alternating).
fn messages(v: Option<&Value>) -> Result<(Vec<Value>, Vec<Value>), RouterError> {
    let Some(Value::Array(list)) = v else {
        return Err(bad("`messages` must be an array", "messages"));
    };
    let mut system = Vec::new();
    let mut out: Vec<(String, Vec<Value>)> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(content_blocks(m.get("content"), i)?);
                continue;
            }
            "user" => ("user", content_blocks(m.get("content"), i)?),
            "assistant" => {
                let mut blocks = content_blocks(m.get("content"), i)?;
                // Anthropic refuses empty text blocks, which assistant turns with tool calls often carry.
                blocks.retain(|b| b.get("text").and_then(Value::as_str) != Some(""));
                for call in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    blocks.push(tool_use(call, i)?);
                }
                ("assistant", blocks)
            }
            "tool" | "function" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        bad(
                            format!("messages[{i}]: a tool message needs `tool_call_id`"),
                            "messages",
                        )
                    })?;
                let content = match m.get("content") {
                    Some(Value::String(s)) => json!(s),
                    Some(c @ Value::Array(_)) => Value::Array(content_blocks(Some(c), i)?),
                    _ => json!(""),
                };
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": content})],
                )
            }
            other => {
                return Err(bad(
                    format!("messages[{i}]: unknown role `{other}`"),
                    "messages",
                ))
            }
        };
        match out.last_mut() {
            Some((last, existing)) if last == role => existing.extend(blocks),
            _ => out.push((role.to_owned(), blocks)),
        }
    }
    let messages = out
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, messages))
}

/// An OpenAI `content` (string or parts) as Anthropic content blocks.
fn content_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, RouterError> {
    let parts = match content {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::String(s)) => return Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(parts)) => parts,
        Some(_) => {
            return Err(bad(
                format!("messages[{i}].content must be a string or an array of parts"),
                "messages",
            ))
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("text");
        let mut block = match kind {
            "text" => json!({
                "type": "text",
                "text": part.get("text").and_then(Value::as_str).unwrap_or_default(),
            }),
            "image_url" => {
                let url = part
                    .get("image_url")
                    .and_then(|u| u.get("url").or(Some(u)))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        bad(
                            format!("messages[{i}]: an image_url part needs `image_url.url`"),
                            "messages",
                        )
                    })?;
                json!({"type": "image", "source": image_source(url)})
            }
            // Already Anthropic blocks (clients of `/v1/messages`, or a client that speaks both).
            "image" | "document" | "tool_use" | "tool_result" | "thinking" => part.clone(),
            other => {
                return Err(bad(
                    format!(
                        "messages[{i}]: content part type `{other}` is not supported by Anthropic"
                    ),
                    "messages",
                ))
            }
        };
        if let (Some(cc), Some(b)) = (part.get("cache_control"), block.as_object_mut()) {
            b.insert("cache_control".into(), cc.clone());
        }
        out.push(block);
    }
    Ok(out)
}

/// A `data:` URL as a base64 source; any other URL as a URL source.
fn image_source(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:") {
        if let Some((meta, data)) = rest.split_once(',') {
            let media_type = meta.strip_suffix(";base64").unwrap_or(meta);
            return json!({"type": "base64", "media_type": media_type, "data": data});
        }
    }
    json!({"type": "url", "url": url})
}

fn tool_use(call: &Value, i: usize) -> Result<Value, RouterError> {
    let f = call.get("function");
    let name = f.and_then(|f| f.get("name")).and_then(Value::as_str);
    let id = call.get("id").and_then(Value::as_str);
    let (Some(name), Some(id)) = (name, id) else {
        return Err(bad(
            format!("messages[{i}].tool_calls: each call needs `id` and `function.name`"),
            "messages",
        ));
    };
    let input = match f.and_then(|f| f.get("arguments")) {
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str::<Value>(s).map_err(|_| {
            bad(
                format!("messages[{i}].tool_calls: `arguments` of `{name}` is not JSON"),
                "messages",
            )
        })?,
        Some(v @ Value::Object(_)) => v.clone(),
        _ => json!({}),
    };
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

fn tools(v: &Value) -> Result<Value, RouterError> {
    let Value::Array(list) = v else {
        return Err(bad("`tools` must be an array", "tools"));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        // An Anthropic-shaped tool (`name` + `input_schema`) passes as is.
        if t.get("input_schema").is_some() {
            out.push(t.clone());
            continue;
        }
        let f = t.get("function").ok_or_else(|| {
            bad(
                format!("tools[{i}]: only `function` tools are supported"),
                "tools",
            )
        })?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("tools[{i}].function.name is required"), "tools"))?;
        let mut tool = json!({
            "name": name,
            "input_schema": f.get("parameters").cloned().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        });
        if let Some(d) = f.get("description").and_then(Value::as_str) {
            tool["description"] = json!(d);
        }
        if let Some(cc) = t.get("cache_control") {
            tool["cache_control"] = cc.clone();
        }
        out.push(tool);
    }
    Ok(Value::Array(out))
}

/// OpenAI's `tool_choice` as Anthropic's.
fn tool_choice(v: &Value, parallel: Option<bool>) -> Result<Value, RouterError> {
    let mut choice = match v {
        Value::String(s) => match s.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" | "any" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            other => {
                return Err(bad(
                    format!("unknown `tool_choice` `{other}`"),
                    "tool_choice",
                ))
            }
        },
        Value::Object(o) => {
            match o
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| o.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => json!({"type": "tool", "name": name}),
                None => return Err(bad("`tool_choice` names no function", "tool_choice")),
            }
        }
        _ => {
            return Err(bad(
                "`tool_choice` must be a string or an object",
                "tool_choice",
            ))
        }
    };
    if parallel == Some(false) && choice["type"] != "none" {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    Ok(choice)
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason` (LiteLLM's map).
pub(crate) fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "compaction") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// OpenAI's `usage` for Anthropic's: prompt tokens count the cached ones too (as LiteLLM reports them),
/// with the cache figures kept beside.
pub(crate) fn usage(u: &Value) -> Value {
    let get = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let input = get("input_tokens");
    let created = get("cache_creation_input_tokens");
    let read = get("cache_read_input_tokens");
    let output = get("output_tokens");
    let prompt = input + created + read;
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": created},
        "cache_creation_input_tokens": created,
        "cache_read_input_tokens": read,
    })
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The OpenAI chat completion for a Messages API answer; `None` when `v` is not one.
pub(crate) fn response(v: &Value) -> Option<Value> {
    let content = v.get("content")?.as_array()?;
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    for block in content {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default()),
            Some("thinking") => reasoning
                .push_str(block.get("thinking").and_then(Value::as_str).unwrap_or_default()),
            Some("tool_use") => tool_calls.push(json!({
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
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { json!(text) },
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = json!(reasoning);
    }
    let stop_reason = v.get("stop_reason").and_then(Value::as_str);
    Some(json!({
        "id": v.get("id").cloned().unwrap_or(Value::Null),
        "object": "chat.completion",
        "created": now_secs(),
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(stop_reason),
        }],
        "usage": usage(v.get("usage").unwrap_or(&Value::Null)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_tools_stop_and_the_max_tokens_default() {
        let body = json!({
            "model": "claude-x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ]},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"q\":1}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
                {"role": "user", "content": "thanks"},
            ],
            "stop": "END",
            "temperature": 0.2,
            "n": 1,
            "tools": [{"type": "function", "function": {"name": "look", "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "user": "u1",
        });
        let out = request(&body).unwrap();
        assert_eq!(
            out["system"],
            json!([{"type": "text", "text": "Be brief."}])
        );
        assert_eq!(out["max_tokens"], json!(DEFAULT_MAX_TOKENS));
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["temperature"], json!(0.2));
        assert!(out.get("n").is_none());
        assert_eq!(out["metadata"], json!({"user_id": "u1"}));
        assert_eq!(out["tool_choice"], json!({"type": "any"}));
        assert_eq!(
            out["tools"],
            json!([{"name": "look", "description": "d", "input_schema": {"type": "object"}}])
        );
        let m = out["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3, "{m:?}");
        assert_eq!(
            m[0]["content"][1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "AAAA"})
        );
        assert_eq!(
            m[1]["content"],
            json!([{"type": "tool_use", "id": "call_1", "name": "look", "input": {"q": 1}}])
        );
        // The tool result and the next user text share one user turn.
        assert_eq!(m[2]["content"][0]["type"], json!("tool_result"));
        assert_eq!(
            m[2]["content"][1],
            json!({"type": "text", "text": "thanks"})
        );
    }

    #[test]
    fn answers_translate_back() {
        let v = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "look", "input": {"q": "cat"}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 90, "cache_creation_input_tokens": 0},
        });
        let out = response(&v).unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], json!("tool_calls"));
        assert_eq!(
            out["choices"][0]["message"]["content"],
            json!("Let me look.")
        );
        let call = &out["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["id"], json!("toolu_1"));
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"q": "cat"}));
        assert_eq!(out["usage"]["prompt_tokens"], json!(100));
        assert_eq!(out["usage"]["total_tokens"], json!(105));
        assert_eq!(
            out["usage"]["prompt_tokens_details"]["cached_tokens"],
            json!(90)
        );
        assert_eq!(finish_reason(Some("max_tokens")), "length");
        assert_eq!(finish_reason(Some("stop_sequence")), "stop");
    }

    #[test]
    fn bad_shapes_are_400s() {
        let e = request(&json!({"model": "m", "messages": "hi"})).unwrap_err();
        assert_eq!(e.status_code(), 400);
        let e = request(&json!({"model": "m", "messages": [], "stop": 3})).unwrap_err();
        assert_eq!(e.param(), Some("stop"));
        let e = request(&json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}))
            .unwrap_err();
        assert_eq!(e.status_code(), 400);
    }
}
