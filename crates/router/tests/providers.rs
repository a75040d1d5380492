//! Provider clients (OpenAI-compatible, Azure, mock), streaming, request pass-through, cache and config errors.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, ensure};
use bytes::Bytes;
use common::{chat, chat_overriding, chat_with, json_body, openai, router, WindowWatch};
use futures::StreamExt;
use router::{AnswerSource, Backend, Endpoint, ResponseBody, RouterConfig, RouterRequest};
use serde_json::{json, Value};
use testkit::{Behavior, MockUpstream};

/// Streams pass events through as they arrive: the first chunk reaches the client while the upstream is
/// still sending; usage is settled from the usage chunk when the stream ends.
async fn streams_chunks_as_they_arrive(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    up.set_reply("one two three four five");
    up.set_behavior(Behavior::ok().with_token_latency(Duration::from_millis(100)));
    // An hour-long window, so the reservation and its settlement read the same window's counters.
    let r = router(
        json!({
            "model_list": [openai("g", "m", &up, json!({"tpm": 100000}))],
            "router_settings": {"usage_window": 3600},
        }),
        backend,
    )
    .await?;
    let resp = r
        .completion(chat_with(
            "g",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ))
        .await?;
    let ResponseBody::Stream(mut s) = resp.body else {
        return Err(anyhow!("expected a stream"));
    };
    let first = s.next().await.ok_or_else(|| anyhow!("empty stream"))??;
    ensure!(first.starts_with(b"data: {"), "{first:?}");
    ensure!(up.in_flight() == 1, "the upstream should still be sending");
    let mut rest: Vec<Bytes> = Vec::new();
    while let Some(chunk) = s.next().await {
        rest.push(chunk?);
    }
    ensure!(
        rest.last().map(|b| b.as_ref()) == Some(&b"data: [DONE]\n\n"[..]),
        "{rest:?}"
    );
    let text: String = rest
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    ensure!(text.contains("\"usage\""), "{text}");
    // The request went out as the client sent it, with the deployment's model.
    let sent = &up.requests()[0].body;
    ensure!(
        sent["stream"] == json!(true)
            && sent["model"] == json!("m")
            && sent["stream_options"]["include_usage"] == json!(true)
    );
    // Settled with the upstream's usage: TPM holds the actual tokens, nothing in flight.
    let h = &r.health().await?[0];
    ensure!(h.in_flight == 0 && h.successes_in_window == 1, "{h:?}");
    let usage_total = text
        .split("data: ")
        .filter_map(|e| serde_json::from_str::<Value>(e.trim()).ok())
        .find_map(|v| v.pointer("/usage/total_tokens").and_then(Value::as_u64))
        .ok_or_else(|| anyhow!("no usage chunk"))?;
    ensure!(h.tpm_used == usage_total, "{h:?} vs {usage_total}");
    Ok(())
}

/// A stream that breaks mid-way ends with an error item and counts as a failure.
async fn broken_stream_is_a_failure(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    up.push_behavior(Behavior::drop_after(2));
    let r = router(
        json!({"model_list": [openai("g", "m", &up, json!({}))]}),
        backend,
    )
    .await?;
    let watch = WindowWatch::start();
    let resp = r
        .completion(chat_with("g", json!({"stream": true})))
        .await?;
    let ResponseBody::Stream(s) = resp.body else {
        return Err(anyhow!("expected a stream"));
    };
    let items: Vec<_> = s.collect().await;
    ensure!(items.first().is_some_and(Result::is_ok), "{items:?}");
    ensure!(items.last().is_some_and(Result::is_err), "{items:?}");
    let h = &r.health().await?[0];
    ensure!(
        (h.failures_in_window == 1 || watch.rolled()) && h.in_flight == 0,
        "{h:?}"
    );
    Ok(())
}

/// The second identical request is served from the cache; `no-cache` bypasses it.
async fn caches_identical_requests(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let cfg = json!({
        "model_list": [openai("g", "m", &up, json!({}))],
        "router_settings": {"cache_responses": true},
    });
    let r = router(cfg, backend).await?;
    let a = r.completion(chat("g")).await?;
    let b = r.completion(chat("g")).await?;
    ensure!(!a.meta.cache_hit && b.meta.cache_hit && up.request_count() == 1);
    ensure!(json_body(a.body) == json_body(b.body));
    let c = r
        .completion(chat_with("g", json!({"cache": {"no-cache": true}})))
        .await?;
    ensure!(!c.meta.cache_hit && up.request_count() == 2);
    // A different body is a different entry; the same request streaming is answered from the entry, as a
    // stream.
    r.completion(chat_with("g", json!({"temperature": 0.5})))
        .await?;
    ensure!(up.request_count() == 3);
    let s = r
        .completion(chat_with("g", json!({"stream": true})))
        .await?;
    ensure!(s.meta.cache_hit && up.request_count() == 3);
    ensure!(matches!(s.body, ResponseBody::Stream(_)));
    let snap = r.metrics().snapshot();
    ensure!(snap.cache_hits == 2, "{snap:?}");
    Ok(())
}

fn content(body: ResponseBody) -> Value {
    json_body(body)["choices"][0]["message"]["content"].clone()
}

/// A caller's `mock_response` is refused unless the caller may override routing; allowed, it answers without
/// the upstream, is never stored in the response cache and is never answered from it. The operator's mock
/// deployments are cached like upstreams.
async fn request_mocks_never_reach_the_cache(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let cfg = json!({
        "model_list": [
            openai("g", "m", &up, json!({})),
            {"model_name": "mocked", "litellm_params": {"model": "openai/gpt-4o", "mock_response": "configured"}},
        ],
        "router_settings": {"cache_responses": true},
    });
    let r = router(cfg, backend).await?;
    let planted = json!({"mock_response": "The capital of France is Berlin."});
    let err = r
        .completion(chat_with("g", planted.clone()))
        .await
        .err()
        .ok_or_else(|| anyhow!("expected a refusal"))?;
    ensure!(
        err.status_code() == 403 && err.param() == Some("mock_response"),
        "{err}"
    );

    let mocked = r.completion(chat_overriding("g", planted.clone())).await?;
    ensure!(mocked.meta.source == AnswerSource::RequestMock && !mocked.meta.cache_hit);
    ensure!(content(mocked.body) == json!("The capital of France is Berlin."));
    let real = r.completion(chat("g")).await?;
    ensure!(
        real.meta.source == AnswerSource::Upstream && !real.meta.cache_hit,
        "{:?}",
        real.meta
    );
    ensure!(content(real.body) == json!(testkit::DEFAULT_REPLY) && up.request_count() == 1);
    // With the upstream's answer cached, a mock request still gets its own text.
    let again = r.completion(chat_overriding("g", planted)).await?;
    ensure!(
        !again.meta.cache_hit && content(again.body) == json!("The capital of France is Berlin.")
    );
    let hit = r.completion(chat("g")).await?;
    ensure!(hit.meta.cache_hit && hit.meta.source == AnswerSource::Cache);
    ensure!(content(hit.body) == json!(testkit::DEFAULT_REPLY) && up.request_count() == 1);

    let first = r.completion(chat("mocked")).await?;
    ensure!(first.meta.source == AnswerSource::DeploymentMock && !first.meta.cache_hit);
    ensure!(r.completion(chat("mocked")).await?.meta.cache_hit);
    Ok(())
}

/// Unknown fields reach the upstream untouched; router-only fields never do.
async fn passes_unknown_fields_and_strips_router_fields(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let r = router(
        json!({"model_list": [openai("g", "upstream-model", &up, json!({"temperature": 0.1}))]}),
        backend,
    )
    .await?;
    let req = chat_overriding(
        "g",
        json!({
            "vendor_extension": {"nested": [1, 2]}, "top_k": 5, "temperature": 0.7,
            "priority": 3, "metadata": {"user": "x"}, "num_retries": 0, "timeout": 30, "cache": {"ttl": 1},
            "fallbacks": [], "stream_timeout": 5,
        }),
    );
    r.completion(req).await?;
    let body = &up.requests()[0].body;
    ensure!(
        body["vendor_extension"] == json!({"nested": [1, 2]}) && body["top_k"] == json!(5),
        "{body}"
    );
    ensure!(
        body["model"] == json!("upstream-model") && body["temperature"] == json!(0.7),
        "{body}"
    );
    for key in router::ROUTER_ONLY_FIELDS {
        ensure!(body.get(key).is_none(), "{key} leaked: {body}");
    }
    // litellm_params body defaults apply when the client does not set them.
    r.completion(chat("g")).await?;
    ensure!(up.requests()[1].body["temperature"] == json!(0.1));
    Ok(())
}

/// A client that drops the stream gives the capacity back without counting a failure.
async fn dropped_stream_is_released(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    up.set_behavior(Behavior::ok().with_token_latency(Duration::from_millis(200)));
    let r = router(
        json!({"model_list": [openai("g", "m", &up, json!({"max_parallel_requests": 1}))]}),
        backend,
    )
    .await?;
    let resp = r
        .completion(chat_with("g", json!({"stream": true})))
        .await?;
    let ResponseBody::Stream(mut s) = resp.body else {
        return Err(anyhow!("expected a stream"));
    };
    s.next().await.ok_or_else(|| anyhow!("empty stream"))??;
    ensure!(r.health().await?[0].in_flight == 1);
    drop(s);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let h = r.health().await?.remove(0);
        if h.in_flight == 0 {
            ensure!(
                h.failures_in_window == 0 && h.successes_in_window == 0,
                "{h:?}"
            );
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "still in flight: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The slot is free again.
    r.completion(chat("g")).await?;
    Ok(())
}

on_both_backends!(
    streams_chunks_as_they_arrive,
    broken_stream_is_a_failure,
    dropped_stream_is_released,
    caches_identical_requests,
    request_mocks_never_reach_the_cache,
    passes_unknown_fields_and_strips_router_fields,
);

/// A log sink for the tracing subscriber.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Azure requests go to the deployment URL with `api-key`; the key appears in no error, log or Debug output.
#[tokio::test]
async fn azure_uses_the_deployment_url_and_hides_the_key() -> anyhow::Result<()> {
    const KEY: &str = "azure-secret-key-0123456789";
    let logs = LogBuffer::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let up = MockUpstream::start().await?;
    let cfg = RouterConfig::from_json(json!({
        "model_list": [{"model_name": "gpt", "litellm_params": {
            "model": "azure/my-deployment", "api_base": up.url(), "api_key": KEY, "api_version": "2024-06-01",
        }}],
        "router_settings": {"num_retries": 0},
    }))?;
    ensure!(!format!("{cfg:?}").contains(KEY));
    let r = router::Router::new(cfg, Backend::Memory).await?;
    r.completion(chat("gpt")).await?;
    let req = &up.requests()[0];
    ensure!(
        req.path == "/openai/deployments/my-deployment/chat/completions?api-version=2024-06-01",
        "{}",
        req.path
    );
    ensure!(req.header("api-key") == Some(KEY) && req.header("authorization").is_none());

    let echo = json!({"error": {"message": format!("Access denied for key {KEY}"), "code": "401"}})
        .to_string();
    up.push_behavior(Behavior::status(401, echo));
    let err = r
        .completion(chat("gpt"))
        .await
        .err()
        .ok_or_else(|| anyhow!("expected an error"))?;
    ensure!(err.status_code() == 401, "{err}");
    ensure!(
        !err.to_string().contains(KEY) && !format!("{err:?}").contains(KEY),
        "{err:?}"
    );
    ensure!(!format!("{r:?}").contains(KEY) && !format!("{:?}", r.deployments()).contains(KEY));
    let logged =
        String::from_utf8_lossy(&logs.0.lock().map_err(|_| anyhow!("poisoned"))?).into_owned();
    ensure!(logged.contains("upstream attempt failed"), "{logged}");
    ensure!(!logged.contains(KEY), "{logged}");
    Ok(())
}

/// mock_response answers without an upstream (or raises the named error), per deployment or per request.
#[tokio::test]
async fn mock_responses() -> anyhow::Result<()> {
    let cfg = json!({
        "model_list": [
            {"model_name": "mock", "litellm_params": {"model": "openai/gpt-4o", "mock_response": "Hi there"}},
            {"model_name": "limited", "litellm_params": {"model": "gpt-4o", "mock_response": "litellm.RateLimitError"}},
        ],
        "router_settings": {"num_retries": 0},
    });
    let r = router(cfg, Backend::Memory).await?;
    let v = json_body(r.completion(chat("mock")).await?.body);
    ensure!(
        v["choices"][0]["message"]["content"] == json!("Hi there"),
        "{v}"
    );
    ensure!(v["usage"]["completion_tokens"] == json!(2), "{v}");
    let err = r
        .completion(chat("limited"))
        .await
        .err()
        .ok_or_else(|| anyhow!("expected an error"))?;
    ensure!(err.status_code() == 429, "{err}");
    let err = r
        .completion(chat_overriding(
            "mock",
            json!({"mock_response": "litellm.ContextWindowExceededError"}),
        ))
        .await
        .err()
        .ok_or_else(|| anyhow!("expected an error"))?;
    ensure!(err.is_context_window(), "{err}");
    // A mock delay counts against the timeout.
    let err = r
        .completion(chat_overriding(
            "mock",
            json!({"mock_delay": 5, "timeout": 0.2}),
        ))
        .await
        .err()
        .ok_or_else(|| anyhow!("expected a timeout"))?;
    ensure!(err.status_code() == 408, "{err}");
    // Streams of mocks end with [DONE].
    let resp = r
        .completion(chat_with("mock", json!({"stream": true})))
        .await?;
    let ResponseBody::Stream(s) = resp.body else {
        return Err(anyhow!("expected a stream"));
    };
    let chunks: Vec<Bytes> = s.map(|c| c.unwrap_or_default()).collect().await;
    ensure!(
        chunks.last().map(|b| b.as_ref()) == Some(&b"data: [DONE]\n\n"[..]),
        "{chunks:?}"
    );
    Ok(())
}

/// Text completions reach the completions endpoint of a completion model and go through chat on a chat
/// model (LiteLLM's `openai/`); embeddings reach theirs; a deployment can be named by its provider model.
#[tokio::test]
async fn completions_embeddings_and_direct_deployment_names() -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let text_model = json!({
        "model_name": "text",
        "litellm_params": {"model": "text-completion-openai/davinci", "api_base": up.base_url(), "api_key": "sk-test"},
    });
    let r = router(
        json!({"model_list": [openai("g", "m", &up, json!({})), openai("g", "n", &up, json!({})), text_model]}),
        Backend::Memory,
    )
    .await?;
    let req = RouterRequest::from_json(
        Endpoint::Completions,
        json!({"model": "text", "prompt": "Once upon"}),
    )?;
    let v = json_body(r.completion(req).await?.body);
    ensure!(v["choices"][0]["text"].is_string(), "{v}");
    let req = RouterRequest::from_json(
        Endpoint::Completions,
        json!({"model": "openai/m", "prompt": "Once upon"}),
    )?;
    let v = json_body(r.completion(req).await?.body);
    ensure!(
        v["object"] == "text_completion" && v["choices"][0]["text"].is_string(),
        "{v}"
    );
    ensure!(
        up.requests()[1].body["messages"] == json!([{"role": "user", "content": "Once upon"}]),
        "{:?}",
        up.requests()[1].body
    );
    let req = RouterRequest::from_json(
        Endpoint::Embeddings,
        json!({"model": "openai/n", "input": ["a", "b"]}),
    )?;
    let v = json_body(r.completion(req).await?.body);
    ensure!(v["data"].as_array().map(Vec::len) == Some(2), "{v}");
    let paths: Vec<String> = up.requests().iter().map(|r| r.path.clone()).collect();
    ensure!(
        paths == ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"],
        "{paths:?}"
    );
    ensure!(up.requests()[2].body["model"] == json!("n"));
    let err = r
        .completion(chat("nope"))
        .await
        .err()
        .ok_or_else(|| anyhow!("expected an error"))?;
    ensure!(
        err.status_code() == 404 && err.to_string().contains('g'),
        "{err}"
    );
    Ok(())
}

/// Configuration errors name the key path.
#[tokio::test]
async fn config_errors_name_the_key_path() -> anyhow::Result<()> {
    let cases = [
        (
            json!({"model_list": [
                {"model_name": "a", "litellm_params": {"model": "openai/x"}},
                {"model_name": "a", "litellm_params": {"model": "hosted_vllm/llama"}},
            ]}),
            "model_list[1].litellm_params.api_base",
        ),
        (
            json!({"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/x", "timeout": -1}}]}),
            "model_list[0].litellm_params.timeout",
        ),
        (
            json!({"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/x"}}],
                   "router_settings": {"fallbacks": [{"a": ["b"]}]}}),
            "router_settings.fallbacks[0].a[0]",
        ),
        (
            json!({"model_list": [{"model_name": "a", "litellm_params": {"model": "hosted_vllm/x"}}]}),
            "model_list[0].litellm_params.api_base",
        ),
        (
            json!({"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/x"}}],
                   "router_settings": {"routing_strategy": "cost-based-routing"}}),
            "router_settings.routing_strategy",
        ),
    ];
    for (cfg, path) in cases {
        let err = router(cfg, Backend::Memory)
            .await
            .err()
            .ok_or_else(|| anyhow!("{path}: expected an error"))?;
        ensure!(err.to_string().contains(path), "{path}: {err}");
    }
    // Entries without model_info.id get the same stable id on every replica.
    let cfg = json!({"model_list": [{"model_name": "a", "litellm_params": {"model": "openai/x", "rpm": "10"}}]});
    let a = router(cfg.clone(), Backend::Memory).await?.deployments();
    let b = router(cfg, Backend::Memory).await?.deployments();
    ensure!(
        a[0].id == b[0].id && a[0].id.len() == 16 && a[0].rpm == Some(10),
        "{a:?}"
    );
    Ok(())
}
