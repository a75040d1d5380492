//! The LiteLLM compatibility table: one test per convention a LiteLLM user relies on, each against our proxy
//! (in process, on a loopback port) in front of the mock upstream. The README's "Coming from LiteLLM"
//! section lists the same rows.
//!
//! | row | convention (LiteLLM 1.108.7) |
//! | --- | --- |
//! | 01 | an upstream timeout answers 408 (`litellm.Timeout`) |
//! | 02 | an upstream 500 answers 500 after the retries |
//! | 03 | an upstream 502 answers 502, 503 answers 503 |
//! | 04 | the response `model` is the name the client sent (group or alias), also in every streamed chunk |
//! | 05 | `litellm_params.max_retries` retries that deployment's failures |
//! | 06 | `model_group_retry_policy` replaces `retry_policy` for its group |
//! | 07 | `retry_after` is the least wait before a retry with nowhere else to go |
//! | 08 | `litellm_settings.stream_timeout` bounds the wait for the first streamed chunk |
//! | 09 | `drop_params` (and `additional_drop_params`) keep unsupported parameters from the upstream |
//! | 10 | `/metrics` is open unless `litellm_settings.require_auth_for_metrics_endpoint: true` |
//! | 11 | `/model/info` and `/model_group/info` in LiteLLM's shapes, without credentials |
//! | 12 | a form-encoded body (`curl -d` without `-H`) is read as JSON |
//! | 13 | a client's `mock_response` is refused (403) unless overrides are allowed; an unknown model is a 400 |
//! | 14 | `cache_params.host`/`port`/`password` name a cache Redis other than the router's |
//! | 15 | streamed answers are cached and replayed as streams (and serve the same request without `stream`) |
//! | 16 | `/v1/completions` on a chat model (`openai/`, `azure/`) is sent as chat and answered as a text completion |
//! | 17 | `background_health_checks` with `health_check_interval` cool failing deployments down and fill `/health` |

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use serde_json::{json, Value};
use testkit::{Behavior, MockUpstream};
use tokio::sync::oneshot;

const KEY: &str = "sk-compat-table-master-key-0123";

/// Our proxy on a loopback port, stopped on drop.
struct Proxy {
    base: String,
    http: reqwest::Client,
    _stop: oneshot::Sender<()>,
}

impl Proxy {
    /// Starts the proxy with `config` (a `config.yaml` document as JSON; the master key is added).
    async fn start(mut config: Value) -> anyhow::Result<Proxy> {
        config["general_settings"]["master_key"] = json!(KEY);
        let config = proxy::Config::from_yaml_str(&config.to_string())?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(proxy::run(listener, config, async move {
            let _ = stopped.await;
        }));
        Ok(Proxy {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            _stop: stop,
        })
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.base))
    }

    /// POSTs a chat request for `model` with `extra` fields; (status, body).
    async fn chat(&self, model: &str, extra: Value) -> anyhow::Result<(u16, Value)> {
        let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        let r = self.post("/v1/chat/completions").json(&body).send().await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }
}

/// A deployment of `group` on `upstream` serving `upstream_model`, with `params` added.
fn deployment(group: &str, upstream_model: &str, upstream: &MockUpstream, params: Value) -> Value {
    let mut p = json!({
        "model": format!("openai/{upstream_model}"),
        "api_base": upstream.base_url(),
        "api_key": "sk-upstream-secret-4242",
    });
    if let (Some(p), Value::Object(extra)) = (p.as_object_mut(), params) {
        p.extend(extra);
    }
    json!({"model_name": group, "litellm_params": p})
}

/// One group `chat` on `upstream` with `settings` as `router_settings` (cooldowns off, so retries of one
/// deployment stay retries).
fn one_group(upstream: &MockUpstream, params: Value, settings: Value) -> Value {
    let mut s = json!({"disable_cooldowns": true, "num_retries": 0});
    if let (Some(s), Value::Object(e)) = (s.as_object_mut(), settings) {
        s.extend(e);
    }
    json!({
        "model_list": [deployment("chat", "gpt-4o-mini-2024-07-18", upstream, params)],
        "router_settings": s,
    })
}

fn error_type(body: &Value) -> &str {
    body["error"]["type"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn row_01_an_upstream_timeout_answers_408() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    upstream.set_behavior(Behavior::ok().with_latency(Duration::from_secs(5)));
    let proxy = Proxy::start(one_group(&upstream, json!({}), json!({}))).await?;
    let (status, body) = proxy.chat("chat", json!({"timeout": 0.3})).await?;
    ensure!(status == 408, "{status} {body}");
    ensure!(error_type(&body) == "timeout_error", "{body}");
    Ok(())
}

#[tokio::test]
async fn row_02_an_upstream_500_answers_500_after_the_retries() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    upstream.set_behavior(Behavior::internal_error());
    let proxy = Proxy::start(one_group(&upstream, json!({}), json!({"num_retries": 1}))).await?;
    let (status, body) = proxy.chat("chat", json!({})).await?;
    ensure!(status == 500, "{status} {body}");
    ensure!(
        upstream.request_count() == 2,
        "{}",
        upstream.request_count()
    );
    Ok(())
}

#[tokio::test]
async fn row_03_upstream_502_and_503_keep_their_status() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    let proxy = Proxy::start(one_group(&upstream, json!({}), json!({}))).await?;
    upstream.push_behavior(Behavior::status(
        502,
        r#"{"error": {"message": "bad gateway"}}"#,
    ));
    let (status, body) = proxy.chat("chat", json!({})).await?;
    ensure!(status == 502, "{status} {body}");
    upstream.push_behavior(Behavior::service_unavailable());
    let (status, body) = proxy.chat("chat", json!({})).await?;
    ensure!(status == 503, "{status} {body}");
    Ok(())
}

#[tokio::test]
async fn row_04_the_response_model_is_the_name_the_client_sent() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    let mut config = one_group(&upstream, json!({}), json!({}));
    config["router_settings"]["model_group_alias"] = json!({"gpt-4": "chat"});
    let proxy = Proxy::start(config).await?;
    let (status, body) = proxy.chat("chat", json!({})).await?;
    ensure!(status == 200 && body["model"] == "chat", "{status} {body}");
    let (status, body) = proxy.chat("gpt-4", json!({})).await?;
    ensure!(status == 200 && body["model"] == "gpt-4", "{status} {body}");
    // The upstream saw its own model name.
    let sent = upstream.requests();
    ensure!(
        sent.iter()
            .all(|r| r.body["model"] == "gpt-4o-mini-2024-07-18"),
        "{sent:?}"
    );

    let r = proxy
        .post("/v1/chat/completions")
        .json(&json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    ensure!(r.status() == 200);
    let text = r.text().await?;
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("chunks are JSON")?;
    ensure!(!chunks.is_empty(), "{text}");
    ensure!(chunks.iter().all(|c| c["model"] == "chat"), "{text}");
    Ok(())
}

#[tokio::test]
async fn row_05_max_retries_of_a_deployment_is_honoured() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    upstream.push_behavior(Behavior::internal_error());
    upstream.push_behavior(Behavior::internal_error());
    let proxy = Proxy::start(one_group(&upstream, json!({"max_retries": 2}), json!({}))).await?;
    let (status, body) = proxy.chat("chat", json!({})).await?;
    ensure!(status == 200, "{status} {body}");
    ensure!(
        upstream.request_count() == 3,
        "{}",
        upstream.request_count()
    );
    Ok(())
}

#[tokio::test]
async fn row_06_model_group_retry_policy_replaces_retry_policy_for_its_group() -> anyhow::Result<()>
{
    let upstream = MockUpstream::start().await?;
    upstream.set_behavior(Behavior::internal_error());
    let config = json!({
        "model_list": [
            deployment("retried", "m", &upstream, json!({})),
            deployment("plain", "m", &upstream, json!({})),
        ],
        "router_settings": {
            "disable_cooldowns": true,
            "num_retries": 0,
            "retry_policy": {"InternalServerErrorRetries": 0},
            "model_group_retry_policy": {"retried": {"InternalServerErrorRetries": 1}},
        },
    });
    let proxy = Proxy::start(config).await?;
    let (status, _) = proxy.chat("plain", json!({})).await?;
    ensure!(
        status == 500 && upstream.request_count() == 1,
        "{status} {}",
        upstream.request_count()
    );
    upstream.clear();
    let (status, _) = proxy.chat("retried", json!({})).await?;
    ensure!(
        status == 500 && upstream.request_count() == 2,
        "{status} {}",
        upstream.request_count()
    );
    Ok(())
}

#[tokio::test]
async fn row_07_retry_after_is_the_least_wait_before_a_retry() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    upstream.push_behavior(Behavior::internal_error());
    let proxy = Proxy::start(one_group(
        &upstream,
        json!({}),
        json!({"num_retries": 1, "retry_after": 1.2}),
    ))
    .await?;
    let (status, body) = proxy.chat("chat", json!({})).await?;
    ensure!(status == 200, "{status} {body}");
    let sent = upstream.requests();
    ensure!(sent.len() == 2, "{sent:?}");
    // The backoff alone waits at most 0.5 s before the first retry.
    let gap = sent[1].at - sent[0].at;
    ensure!(gap >= Duration::from_millis(1200), "{gap:?}");
    Ok(())
}

#[tokio::test]
async fn row_08_litellm_settings_stream_timeout_bounds_the_first_chunk() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    upstream.set_behavior(Behavior::ok().with_latency(Duration::from_secs(5)));
    let mut config = one_group(&upstream, json!({}), json!({}));
    config["litellm_settings"] = json!({"stream_timeout": 0.3, "request_timeout": 30});
    let proxy = Proxy::start(config).await?;
    let started = Instant::now();
    let (status, body) = proxy.chat("chat", json!({"stream": true})).await?;
    ensure!(status == 408, "{status} {body}");
    ensure!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn row_09_drop_params_keeps_unsupported_parameters_from_the_upstream() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    let config = json!({
        "model_list": [
            deployment("dropping", "m", &upstream, json!({})),
            deployment("no-temperature", "m", &upstream,
                json!({"drop_params": false, "additional_drop_params": ["temperature"]})),
        ],
        "litellm_settings": {"drop_params": true},
    });
    let proxy = Proxy::start(config).await?;
    let extra = json!({"top_k": 5, "temperature": 0.1});
    let (status, _) = proxy.chat("dropping", extra.clone()).await?;
    ensure!(status == 200);
    let (status, _) = proxy.chat("no-temperature", extra).await?;
    ensure!(status == 200);
    let sent = upstream.requests();
    ensure!(sent.len() == 2, "{sent:?}");
    let (dropping, named) = (&sent[0].body, &sent[1].body);
    ensure!(
        dropping.get("top_k").is_none() && dropping["temperature"] == 0.1,
        "{dropping}"
    );
    ensure!(
        named.get("temperature").is_none() && named["top_k"] == 5,
        "{named}"
    );
    Ok(())
}

#[tokio::test]
async fn row_10_metrics_are_open_unless_litellm_settings_require_auth() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    let open = Proxy::start(one_group(&upstream, json!({}), json!({}))).await?;
    let status = open.get("/metrics").send().await?.status();
    ensure!(status == 200, "{status}");
    let mut config = one_group(&upstream, json!({}), json!({}));
    config["litellm_settings"] = json!({"require_auth_for_metrics_endpoint": true});
    let closed = Proxy::start(config).await?;
    let status = closed.get("/metrics").send().await?.status();
    ensure!(status == 401, "{status}");
    let status = closed
        .get("/metrics")
        .bearer_auth(KEY)
        .send()
        .await?
        .status();
    ensure!(status == 200, "{status}");
    Ok(())
}

#[tokio::test]
async fn row_11_model_info_and_model_group_info_in_litellm_shapes() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    let mut config = json!({
        "model_list": [
            deployment("chat", "gpt-4o-mini", &upstream, json!({"rpm": 10})),
            deployment("chat", "gpt-4o-mini", &upstream, json!({"rpm": 5, "extra_headers": {"x-secret": "hdr-secret-77"}})),
        ],
    });
    config["model_list"][0]["model_info"] =
        json!({"id": "dep-a", "mode": "chat", "input_cost_per_token": 1e-6});
    let proxy = Proxy::start(config).await?;

    let r = proxy.get("/model/info").bearer_auth(KEY).send().await?;
    ensure!(r.status() == 200);
    let text = r.text().await?;
    ensure!(
        !text.contains("sk-upstream-secret-4242") && !text.contains("hdr-secret-77"),
        "{text}"
    );
    let info: Value = serde_json::from_str(&text)?;
    let data = info["data"].as_array().context("data")?;
    ensure!(data.len() == 2, "{info}");
    let first = data
        .iter()
        .find(|d| d["model_info"]["id"] == "dep-a")
        .context("dep-a")?;
    ensure!(first["model_name"] == "chat", "{first}");
    ensure!(
        first["litellm_params"]["model"] == "openai/gpt-4o-mini",
        "{first}"
    );
    ensure!(first["litellm_params"].get("api_key").is_none(), "{first}");
    ensure!(
        first["model_info"]["input_cost_per_token"] == 1e-6,
        "{first}"
    );
    ensure!(
        first["model_info"]["litellm_provider"] == "openai",
        "{first}"
    );

    let r = proxy
        .get("/model_group/info")
        .bearer_auth(KEY)
        .send()
        .await?;
    ensure!(r.status() == 200);
    let groups: Value = r.json().await?;
    let chat = &groups["data"][0];
    ensure!(
        chat["model_group"] == "chat" && chat["providers"] == json!(["openai"]),
        "{groups}"
    );
    ensure!(chat["rpm"] == 15 && chat["mode"] == "chat", "{groups}");
    ensure!(
        chat["supported_openai_params"]
            .as_array()
            .is_some_and(|p| p.contains(&json!("tools"))),
        "{groups}"
    );
    let status = proxy.get("/model/info").send().await?.status();
    ensure!(status == 401, "{status}");
    Ok(())
}

#[tokio::test]
async fn row_12_a_form_encoded_body_is_read_as_json() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    let proxy = Proxy::start(one_group(&upstream, json!({}), json!({}))).await?;
    let r = proxy
        .post("/v1/chat/completions")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(r#"{"model": "chat", "messages": [{"role": "user", "content": "hi"}]}"#)
        .send()
        .await?;
    let status = r.status();
    let body: Value = r.json().await?;
    ensure!(status == 200 && body["model"] == "chat", "{status} {body}");
    Ok(())
}

#[tokio::test]
async fn row_13_client_mock_response_is_refused_and_an_unknown_model_is_a_400() -> anyhow::Result<()>
{
    let upstream = MockUpstream::start().await?;
    let proxy = Proxy::start(one_group(&upstream, json!({}), json!({}))).await?;
    let (status, body) = proxy
        .chat("chat", json!({"mock_response": "planted"}))
        .await?;
    ensure!(
        status == 403 && body["error"]["param"] == "mock_response",
        "{status} {body}"
    );
    let (status, body) = proxy.chat("nope", json!({})).await?;
    ensure!(
        status == 400 && body["error"]["param"] == "model",
        "{status} {body}"
    );
    ensure!(upstream.request_count() == 0);
    Ok(())
}

#[tokio::test]
async fn row_14_cache_params_host_and_port_name_a_cache_redis_of_its_own() -> anyhow::Result<()> {
    let redis = testkit::RedisServer::start().await?;
    let upstream = MockUpstream::start().await?;
    // Two replicas that share nothing but the cache's Redis (their admission state is in memory).
    let mut config = one_group(&upstream, json!({}), json!({}));
    config["litellm_settings"] = json!({
        "cache": true,
        "cache_params": {"type": "redis", "host": redis.host(), "port": redis.port(), "namespace": redis.prefix()},
    });
    let parsed = proxy::Config::from_yaml_str(&config.to_string())?;
    ensure!(
        parsed.unimplemented_keys.is_empty(),
        "{:?}",
        parsed.unimplemented_keys
    );
    ensure!(!parsed.backend.is_redis());
    let (a, b) = (
        Proxy::start(config.clone()).await?,
        Proxy::start(config).await?,
    );
    let body = json!({"model": "chat", "messages": [{"role": "user", "content": "cached?"}]});
    let first = a.post("/v1/chat/completions").json(&body).send().await?;
    ensure!(first.status() == 200 && first.headers()[proxy::HEADER_CACHE_HIT] == "false");
    let second = b.post("/v1/chat/completions").json(&body).send().await?;
    ensure!(second.status() == 200 && second.headers()[proxy::HEADER_CACHE_HIT] == "true");
    ensure!(
        upstream.request_count() == 1,
        "{}",
        upstream.request_count()
    );
    ensure!(!redis.keys().await?.is_empty());
    Ok(())
}

/// The `content` of a chat answer's events, in order.
fn streamed_text(text: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if data == "[DONE]" {
            return Ok(out);
        }
        let chunk: Value = serde_json::from_str(data)?;
        if let Some(piece) = chunk
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            out.push_str(piece);
        }
    }
    anyhow::bail!("no [DONE]: {text}")
}

#[tokio::test]
async fn row_15_streamed_answers_are_cached_and_replayed_as_streams() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    upstream.set_reply("one two three four");
    let mut config = one_group(&upstream, json!({}), json!({}));
    config["litellm_settings"] = json!({"cache": true});
    let proxy = Proxy::start(config).await?;
    let body = json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "count"}]});
    let mut texts = Vec::new();
    for expect_hit in ["false", "true"] {
        let r = proxy
            .post("/v1/chat/completions")
            .json(&body)
            .send()
            .await?;
        ensure!(r.status() == 200 && r.headers()[proxy::HEADER_CACHE_HIT] == expect_hit);
        ensure!(r.headers()["content-type"] == "text/event-stream");
        texts.push(streamed_text(&r.text().await?)?);
    }
    ensure!(
        texts[0] == "one two three four" && texts[0] == texts[1],
        "{texts:?}"
    );
    // The same request without `stream` reads the same entry as a whole answer.
    let mut whole = body.clone();
    whole["stream"] = json!(false);
    let r = proxy
        .post("/v1/chat/completions")
        .json(&whole)
        .send()
        .await?;
    ensure!(r.headers()[proxy::HEADER_CACHE_HIT] == "true");
    let answer: Value = r.json().await?;
    ensure!(
        answer["choices"][0]["message"]["content"] == "one two three four"
            && answer["model"] == "chat",
        "{answer}"
    );
    ensure!(
        upstream.request_count() == 1,
        "{}",
        upstream.request_count()
    );
    Ok(())
}

#[tokio::test]
async fn row_16_completions_on_a_chat_model_go_through_chat_and_back() -> anyhow::Result<()> {
    let upstream = MockUpstream::start().await?;
    upstream.set_reply("a time there was");
    let proxy = Proxy::start(one_group(&upstream, json!({}), json!({}))).await?;
    let r = proxy
        .post("/v1/completions")
        .json(&json!({"model": "chat", "prompt": "Once upon", "max_tokens": 8}))
        .send()
        .await?;
    ensure!(r.status() == 200);
    let v: Value = r.json().await?;
    ensure!(
        v["object"] == "text_completion" && v["model"] == "chat",
        "{v}"
    );
    ensure!(v["choices"][0]["text"] == "a time there was", "{v}");
    let sent = upstream.requests();
    ensure!(sent[0].path == "/v1/chat/completions", "{}", sent[0].path);
    ensure!(
        sent[0].body["messages"] == json!([{"role": "user", "content": "Once upon"}]),
        "{}",
        sent[0].body
    );
    ensure!(
        sent[0].body.get("prompt").is_none() && sent[0].body["max_tokens"] == 8,
        "{}",
        sent[0].body
    );

    let r = proxy
        .post("/v1/completions")
        .json(&json!({"model": "chat", "prompt": "Once upon", "stream": true}))
        .send()
        .await?;
    ensure!(r.status() == 200);
    let text = r.text().await?;
    let mut streamed = String::new();
    for data in text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
    {
        let chunk: Value = serde_json::from_str(data)?;
        ensure!(chunk["object"] == "text_completion", "{chunk}");
        streamed.push_str(chunk["choices"][0]["text"].as_str().unwrap_or_default());
    }
    ensure!(
        streamed == "a time there was" && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn row_17_background_health_checks_cool_failing_deployments_down() -> anyhow::Result<()> {
    let (good, bad) = (MockUpstream::start().await?, MockUpstream::start().await?);
    bad.set_behavior(Behavior::internal_error());
    let mut config = json!({
        "model_list": [
            deployment("chat", "m", &good, json!({})),
            deployment("chat", "m", &bad, json!({})),
        ],
        "router_settings": {"num_retries": 0, "cooldown_time": 60},
        "general_settings": {"background_health_checks": true, "health_check_interval": 0.2},
    });
    config["model_list"][0]["model_info"] = json!({"id": "good"});
    config["model_list"][1]["model_info"] = json!({"id": "bad"});
    let proxy = Proxy::start(config).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let health = loop {
        let health: Value = proxy
            .get("/health")
            .bearer_auth(KEY)
            .send()
            .await?
            .json()
            .await?;
        let checks = &health["background_health_checks"];
        let listed = |list: &str| checks[list].as_array().is_some_and(|l| l.len() == 1);
        if listed("healthy_endpoints") && listed("unhealthy_endpoints") {
            break health;
        }
        ensure!(
            Instant::now() < deadline,
            "no health check results: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let checks = &health["background_health_checks"];
    ensure!(checks["unhealthy_endpoints"][0]["id"] == "bad", "{health}");
    ensure!(checks["healthy_endpoints"][0]["id"] == "good", "{health}");
    let bad_state = health["deployments"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["id"] == "bad"))
        .context("bad deployment")?;
    ensure!(bad_state["healthy"] == false, "{health}");
    // The cooled-down deployment gets no requests.
    let before = bad.request_count();
    for _ in 0..4 {
        let r = proxy
            .post("/v1/chat/completions")
            .json(&json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await?;
        ensure!(r.status() == 200 && r.headers()[proxy::HEADER_DEPLOYMENT_ID] == "good");
    }
    let probes = bad.requests();
    ensure!(
        probes[before..]
            .iter()
            .all(|r| r.body["messages"][0]["content"] == "ping"),
        "{probes:?}"
    );
    Ok(())
}
