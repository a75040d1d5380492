//! Provider families against the mock upstream: the OpenAI-compatible prefixes (path, auth header, the model
//! name after the prefix), Anthropic natively (request translation, answers, tool calls, streams, errors), and
//! deployments skipped for an unsupported prefix.

mod common;

use std::time::Duration;

use anyhow::{anyhow, ensure};
use common::{chat, chat_overriding, chat_with, json_body, openai, router};
use futures::StreamExt;
use router::{Backend, ResponseBody, Router, UpstreamErrorKind};
use serde_json::{json, Value};
use testkit::{Behavior, MockUpstream};

/// Every OpenAI-compatible family is called at `{api_base}/chat/completions` with a Bearer key and the model
/// name after its prefix; the answer comes back as the upstream sent it.
#[tokio::test]
async fn openai_compatible_families_send_the_model_after_the_prefix() -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let families = [
        "groq",
        "together_ai",
        "fireworks_ai",
        "deepseek",
        "mistral",
        "openrouter",
        "xai",
        "perplexity",
        "deepinfra",
        "hosted_vllm",
        "gemini",
        "cohere",
        "azure_ai",
        "ollama_chat",
        "ollama",
    ];
    let list: Vec<Value> = families
        .iter()
        .map(|f| {
            // Ollama's base is the server root; `/v1` is added.
            let base = if f.starts_with("ollama") {
                up.url()
            } else {
                up.base_url()
            };
            json!({"model_name": f, "litellm_params": {
                "model": format!("{f}/org/model-of-{f}"), "api_base": base, "api_key": format!("key-{f}"),
            }})
        })
        .collect();
    let r = router(json!({"model_list": list}), Backend::Memory).await?;
    for (i, f) in families.iter().enumerate() {
        let v = json_body(r.completion(chat(f)).await?.body);
        ensure!(
            v["choices"][0]["message"]["content"] == json!(testkit::DEFAULT_REPLY),
            "{f}: {v}"
        );
        let sent = &up.requests()[i];
        ensure!(sent.path == "/v1/chat/completions", "{f}: {}", sent.path);
        ensure!(
            sent.header("authorization") == Some(format!("Bearer key-{f}").as_str()),
            "{f}: {:?}",
            sent.headers
        );
        ensure!(
            sent.body["model"] == json!(format!("org/model-of-{f}")),
            "{f}: {}",
            sent.body
        );
    }
    Ok(())
}

fn anthropic(group: &str, up: &MockUpstream, extra: Value) -> Value {
    let mut params = json!({"model": "anthropic/claude-test", "api_base": up.url(), "api_key": "sk-ant-test-key"});
    if let (Some(p), Value::Object(e)) = (params.as_object_mut(), extra) {
        p.extend(e);
    }
    json!({"model_name": group, "litellm_params": params})
}

async fn anthropic_router(up: &MockUpstream, settings: Value) -> anyhow::Result<Router> {
    router(
        json!({"model_list": [anthropic("claude", up, json!({}))], "router_settings": settings}),
        Backend::Memory,
    )
    .await
}

/// A chat completion goes out as a Messages request (path, headers, system, max_tokens default, stop) and its
/// answer, stop reason and usage (cache tokens included) come back in OpenAI's shape.
#[tokio::test]
async fn anthropic_requests_and_answers_are_translated() -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    up.set_reply("one two STOP three");
    let r = anthropic_router(&up, json!({})).await?;
    let request = chat_with(
        "claude",
        json!({
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "A long and cached system prompt.", "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AAAA"}},
                ]},
            ],
            "stop": ["STOP"],
            "temperature": 0.5,
        }),
    );
    let v = json_body(r.completion(request).await?.body);
    let sent = &up.requests()[0];
    ensure!(sent.path == "/v1/messages", "{}", sent.path);
    ensure!(sent.header("x-api-key") == Some("sk-ant-test-key"));
    ensure!(sent.header("anthropic-version") == Some("2023-06-01"));
    ensure!(sent.header("authorization").is_none());
    let b = &sent.body;
    ensure!(b["model"] == json!("claude-test"), "{b}");
    ensure!(b["max_tokens"] == json!(4096), "{b}");
    ensure!(b["stop_sequences"] == json!(["STOP"]), "{b}");
    ensure!(b["temperature"] == json!(0.5), "{b}");
    ensure!(
        b["system"][0]["cache_control"] == json!({"type": "ephemeral"}),
        "{b}"
    );
    ensure!(
        b["messages"][0]["content"][1]["source"]["media_type"] == json!("image/jpeg"),
        "{b}"
    );

    ensure!(v["object"] == json!("chat.completion"), "{v}");
    ensure!(
        v["choices"][0]["message"]["content"] == json!("one two"),
        "{v}"
    );
    ensure!(v["choices"][0]["finish_reason"] == json!("stop"), "{v}");
    let u = &v["usage"];
    let cached = u["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0);
    ensure!(cached > 0, "{v}");
    ensure!(u["completion_tokens"] == json!(2), "{v}");
    ensure!(
        u["total_tokens"].as_u64() == Some(u["prompt_tokens"].as_u64().unwrap_or(0) + 2),
        "{v}"
    );

    // max_tokens caps the answer: finish_reason `length`.
    let v = json_body(
        r.completion(chat_with("claude", json!({"max_tokens": 1})))
            .await?
            .body,
    );
    ensure!(up.requests()[1].body["max_tokens"] == json!(1));
    ensure!(v["choices"][0]["finish_reason"] == json!("length"), "{v}");
    Ok(())
}

/// Tool definitions go out as Anthropic tools; the tool call comes back as OpenAI `tool_calls`, and the
/// assistant turn with the call plus the tool's result go back as `tool_use` and `tool_result` blocks.
#[tokio::test]
async fn anthropic_tool_calls_round_trip() -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    up.set_reply("weather in Paris");
    let r = anthropic_router(&up, json!({})).await?;
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
    }}]);
    let v = json_body(
        r.completion(chat_with(
            "claude",
            json!({"tools": tools, "tool_choice": "auto"}),
        ))
        .await?
        .body,
    );
    let sent = &up.requests()[0].body;
    ensure!(
        sent["tools"][0]["name"] == json!("get_weather")
            && sent["tools"][0]["input_schema"]["type"] == json!("object"),
        "{sent}"
    );
    ensure!(sent["tool_choice"] == json!({"type": "auto"}), "{sent}");
    let choice = &v["choices"][0];
    ensure!(choice["finish_reason"] == json!("tool_calls"), "{v}");
    let call = &choice["message"]["tool_calls"][0];
    ensure!(call["function"]["name"] == json!("get_weather"), "{v}");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or(""))?;
    ensure!(args == json!({"query": "weather in Paris"}), "{args}");

    // The second turn: the call and its result.
    let id = call["id"].clone();
    let messages = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": id, "content": "sunny, 21 C"},
    ]);
    up.set_reply("It is sunny");
    let v = json_body(
        r.completion(chat_with(
            "claude",
            json!({"messages": messages, "tools": tools}),
        ))
        .await?
        .body,
    );
    let sent = &up.requests()[1].body;
    let turns = sent["messages"]
        .as_array()
        .ok_or_else(|| anyhow!("{sent}"))?;
    ensure!(turns.len() == 3, "{sent}");
    ensure!(
        turns[1]["content"][0]
            == json!({"type": "tool_use", "id": id, "name": "get_weather", "input": {"query": "weather in Paris"}}),
        "{sent}"
    );
    ensure!(
        turns[2]["role"] == json!("user")
            && turns[2]["content"][0]
                == json!({"type": "tool_result", "tool_use_id": id, "content": "sunny, 21 C"}),
        "{sent}"
    );
    ensure!(
        v["choices"][0]["message"]["content"] == json!("It is sunny")
            && v["choices"][0]["finish_reason"] == json!("stop"),
        "{v}"
    );
    Ok(())
}

/// The OpenAI chunks of a translated stream, parsed, without `[DONE]` (checked to be last).
async fn chunks(body: ResponseBody) -> anyhow::Result<Vec<Value>> {
    let ResponseBody::Stream(mut s) = body else {
        return Err(anyhow!("expected a stream"));
    };
    let mut text = String::new();
    while let Some(item) = s.next().await {
        text.push_str(&String::from_utf8_lossy(&item?));
    }
    ensure!(text.ends_with("data: [DONE]\n\n"), "{text}");
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).map_err(|e| anyhow!("{e}: {d}")))
        .collect()
}

/// Streams are translated event by event: a role chunk, content deltas, the finish reason, the usage chunk
/// when asked for; a streamed tool call's arguments arrive in pieces that join to its input. The reservation
/// is settled with the reported usage.
#[tokio::test]
async fn anthropic_streams_become_openai_chunks() -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    up.set_reply("alpha beta gamma");
    up.set_behavior(Behavior::ok().with_token_latency(Duration::from_millis(20)));
    let r = anthropic_router(&up, json!({"usage_window": 3600})).await?;
    let resp = r
        .completion(chat_with(
            "claude",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .await?;
    let all = chunks(resp.body).await?;
    ensure!(up.requests()[0].body["stream"] == json!(true));
    ensure!(
        all[0]["choices"][0]["delta"]["role"] == json!("assistant"),
        "{all:?}"
    );
    ensure!(all
        .iter()
        .all(|c| c["object"] == json!("chat.completion.chunk")));
    let text: String = all
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
        })
        .collect();
    ensure!(text == "alpha beta gamma", "{text}");
    let finish: Vec<&Value> = all
        .iter()
        .filter_map(|c| c.pointer("/choices/0/finish_reason"))
        .filter(|f| !f.is_null())
        .collect();
    ensure!(finish == [&json!("stop")], "{all:?}");
    let usage = all
        .last()
        .and_then(|c| c.get("usage"))
        .ok_or_else(|| anyhow!("no usage chunk: {all:?}"))?;
    ensure!(usage["completion_tokens"] == json!(3), "{usage}");
    common::wait_in_flight(&r, 0).await?;
    let h = &r.health().await?[0];
    ensure!(
        Some(h.tpm_used) == usage["total_tokens"].as_u64(),
        "{h:?} {usage}"
    );

    // A streamed tool call.
    up.set_reply("Paris");
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let resp = r
        .completion(chat_with("claude", json!({"stream": true, "tools": tools})))
        .await?;
    let all = chunks(resp.body).await?;
    ensure!(
        all.iter().all(|c| c.get("usage").is_none()),
        "usage only when asked"
    );
    let calls: Vec<&Value> = all
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0"))
        .collect();
    ensure!(
        calls.first().map(|c| &c["function"]["name"]) == Some(&json!("get_weather")),
        "{all:?}"
    );
    let args: String = calls
        .iter()
        .filter_map(|c| c.pointer("/function/arguments").and_then(Value::as_str))
        .collect();
    ensure!(
        serde_json::from_str::<Value>(&args)? == json!({"query": "Paris"}),
        "{args}"
    );
    ensure!(
        all.iter()
            .any(|c| c.pointer("/choices/0/finish_reason") == Some(&json!("tool_calls"))),
        "{all:?}"
    );
    Ok(())
}

/// Anthropic's errors map as LiteLLM maps them: 529 overloaded is a retryable server error (the retry
/// succeeds), 429 keeps its Retry-After, "prompt is too long" is a context-window error that goes to
/// `context_window_fallbacks`, an error event mid-stream breaks the stream.
#[tokio::test]
async fn anthropic_errors_map_to_the_error_classes() -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let openai_up = MockUpstream::start().await?;
    let r = router(
        json!({
            "model_list": [anthropic("claude", &up, json!({})), openai("big", "big-model", &openai_up, json!({}))],
            "router_settings": {
                "num_retries": 1, "retry_after": 0, "cooldown_time": 0,
                "context_window_fallbacks": [{"claude": ["big"]}],
            },
        }),
        Backend::Memory,
    )
    .await?;

    up.push_behavior(Behavior::service_unavailable());
    let resp = r.completion(chat("claude")).await?;
    ensure!(resp.meta.attempts == 2, "{:?}", resp.meta);
    ensure!(up.request_count() == 2);

    up.push_behavior(Behavior::service_unavailable());
    up.push_behavior(Behavior::service_unavailable());
    let err = r
        .completion(chat("claude"))
        .await
        .err()
        .ok_or_else(|| anyhow!("expected an error"))?;
    ensure!(
        err.upstream_kind() == Some(UpstreamErrorKind::InternalServer) && err.is_retryable(),
        "{err}"
    );
    ensure!(err.to_string().contains("Overloaded"), "{err}");

    // No retry: the router would wait out the Retry-After first.
    up.push_behavior(Behavior::rate_limited(7));
    let err = r
        .completion(chat_overriding("claude", json!({"num_retries": 0})))
        .await
        .err()
        .ok_or_else(|| anyhow!("expected an error"))?;
    ensure!(
        err.status_code() == 429 && err.retry_after() == Some(Duration::from_secs(7)),
        "{err}"
    );

    up.push_behavior(Behavior::context_length_exceeded());
    let resp = r.completion(chat("claude")).await?;
    ensure!(resp.meta.model_group == "big", "{:?}", resp.meta);
    ensure!(openai_up.request_count() == 1);

    up.push_behavior(Behavior::unauthorized());
    let err = r
        .completion(chat("claude"))
        .await
        .err()
        .ok_or_else(|| anyhow!("expected an error"))?;
    ensure!(err.status_code() == 401, "{err}");

    // An `error` event mid-stream.
    let overloaded = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"model\":\"c\",\"usage\":{\"input_tokens\":1}}}\n\n\
                      event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    up.push_behavior(Behavior::outcome(testkit::Outcome::Status {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        body: overloaded.into(),
    }));
    let resp = r
        .completion(chat_with("claude", json!({"stream": true})))
        .await?;
    let ResponseBody::Stream(mut s) = resp.body else {
        return Err(anyhow!("expected a stream"));
    };
    let mut failed = None;
    while let Some(item) = s.next().await {
        if let Err(e) = item {
            failed = Some(e);
        }
    }
    let e = failed.ok_or_else(|| anyhow!("the stream should end with an error"))?;
    ensure!(
        e.upstream_kind() == Some(UpstreamErrorKind::InternalServer),
        "{e}"
    );
    Ok(())
}

/// An entry with an unsupported prefix is skipped (listed, not served); the rest serve, and a fallback to
/// its group is passed over.
#[tokio::test]
async fn unsupported_prefixes_are_skipped() -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let r = router(
        json!({
            "model_list": [
                openai("g", "m", &up, json!({})),
                {"model_name": "bedrock-claude", "litellm_params": {"model": "bedrock/anthropic.claude-v2"}},
                openai("h", "n", &up, json!({})),
            ],
            "router_settings": {"num_retries": 0, "fallbacks": [{"g": ["bedrock-claude", "h"]}]},
        }),
        Backend::Memory,
    )
    .await?;
    let skipped = r.skipped_deployments();
    ensure!(skipped.len() == 1, "{skipped:?}");
    ensure!(
        skipped[0].path == "model_list[1]"
            && skipped[0].model == "bedrock/anthropic.claude-v2"
            && skipped[0].reason.contains("`bedrock`")
            && skipped[0].reason.contains("anthropic"),
        "{skipped:?}"
    );
    ensure!(!r.model_groups().contains(&"bedrock-claude".to_owned()));
    up.push_behavior(Behavior::internal_error());
    let resp = r.completion(chat("g")).await?;
    ensure!(resp.meta.model_group == "h", "{:?}", resp.meta);
    Ok(())
}
