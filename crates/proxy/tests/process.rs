//! Process-level tests: the real `llm-scheduler` binary on `--port 0` against a real redis-server and a mock
//! OpenAI upstream. Each test starts as few processes as it can and makes many assertions on each.

mod common;

use std::time::{Duration, Instant};

use common::{client, eventually, Proxy, KEY};
use futures::StreamExt;
use serde_json::{json, Value};
use testkit::{Behavior, MockUpstream, RedisServer};

fn chat(model: &str, extra: Value) -> Value {
    let mut body =
        json!({"model": model, "messages": [{"role": "user", "content": "hello there"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

async fn status_and_json(response: reqwest::Response) -> (u16, reqwest::header::HeaderMap, Value) {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, json)
}

/// Asserts an OpenAI error body with `status` whose message mentions `needle`.
async fn assert_refused(response: reqwest::Response, status: u16, needle: &str) -> Value {
    let (got, _, body) = status_and_json(response).await;
    assert_eq!(got, status, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "{message:?} should mention {needle:?}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_serves_every_endpoint_and_drains_on_sigterm() {
    let redis = RedisServer::start().await.unwrap();
    let upstream = MockUpstream::start().await.unwrap();
    let config = format!(
        r#"
model_list:
  - model_name: chat
    litellm_params: {{ model: openai/gpt-4o, api_base: "{base}", api_key: os.environ/TEST_UPSTREAM_KEY }}
    model_info: {{ id: upstream-1 }}
  - model_name: embed
    litellm_params: {{ model: openai/text-embedding-3-small, api_base: "{base}", api_key: os.environ/TEST_UPSTREAM_KEY }}
  - model_name: mocked
    litellm_params: {{ model: openai/gpt-4o, mock_response: "hello from the mock" }}
    model_info: {{ id: mocked-1 }}
  - model_name: slow
    litellm_params: {{ model: openai/gpt-4o, mock_response: "eventually", mock_delay: 30 }}
    model_info: {{ id: slow-1 }}
router_settings:
  redis_host: {host}
  redis_port: os.environ/TEST_REDIS_PORT
  key_prefix: "{prefix}"
  # The health check below counts this test's requests in one window: a 60 s window could roll between them.
  usage_window: 3600
litellm_settings:
  num_retries: 0
  success_callback: ["langfuse"]
general_settings:
  master_key: {KEY}
  max_request_size_mb: 1
"#,
        base = upstream.base_url(),
        host = redis.host(),
        prefix = redis.prefix(),
    );
    let port = redis.port().to_string();
    let mut proxy = Proxy::start(
        &config,
        &[
            ("TEST_UPSTREAM_KEY", "sk-upstream-secret-1"),
            ("TEST_REDIS_PORT", &port),
        ],
    )
    .unwrap();
    let http = client();
    let anonymous = reqwest::Client::new();

    // Startup: one warning lists the keys not implemented; the Redis password-free URL is named.
    let output = proxy.output();
    assert!(
        output.contains("litellm_settings.success_callback"),
        "{output}"
    );
    assert!(
        output.contains(&format!("redis://{}:{port}/", redis.host())),
        "{output}"
    );

    // Probes need no key; readiness pings Redis.
    for path in ["/health/liveliness", "/health/readiness"] {
        let r = anonymous.get(proxy.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let (_, _, ready) = status_and_json(
        anonymous
            .get(proxy.url("/health/readiness"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ready["backend"], "redis");

    // Auth: refused without or with a wrong key, accepted as Bearer or x-api-key.
    assert_refused(
        anonymous.get(proxy.url("/v1/models")).send().await.unwrap(),
        401,
        "API key",
    )
    .await;
    let wrong = anonymous
        .get(proxy.url("/v1/models"))
        .bearer_auth("sk-wrong")
        .send()
        .await
        .unwrap();
    assert_refused(wrong, 401, "invalid API key").await;
    let r = anonymous
        .get(proxy.url("/v1/models"))
        .header("x-api-key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, _, models) =
        status_and_json(http.get(proxy.url("/models")).send().await.unwrap()).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["chat", "embed", "mocked", "slow"]);

    // Chat through the upstream: router-only fields stay here, the key comes from os.environ/.
    let r = http
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat(
            "chat",
            json!({"priority": 5, "timeout": 30, "temperature": 0.3}),
        ))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = status_and_json(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        testkit::DEFAULT_REPLY
    );
    assert_eq!(headers["x-llm-scheduler-deployment-id"], "upstream-1");
    assert_eq!(headers["x-llm-scheduler-model-group"], "chat");
    assert_eq!(headers["x-llm-scheduler-attempts"], "1");
    assert_eq!(headers["x-llm-scheduler-cache-hit"], "false");
    for name in [
        "x-llm-scheduler-queue-wait-ms",
        "x-llm-scheduler-overhead-ms",
        "x-llm-scheduler-fallbacks",
    ] {
        assert!(headers.contains_key(name), "missing {name}");
    }
    let seen = upstream.requests();
    let sent = &seen.last().unwrap();
    assert_eq!(
        sent.header("authorization"),
        Some("Bearer sk-upstream-secret-1")
    );
    assert_eq!(sent.body["model"], "gpt-4o");
    assert_eq!(sent.body["temperature"], json!(0.3));
    for field in ["priority", "timeout"] {
        assert!(
            sent.body.get(field).is_none(),
            "{field} was forwarded: {}",
            sent.body
        );
    }

    // Unversioned paths, completions and embeddings.
    let r = http
        .post(proxy.url("/chat/completions"))
        .json(&chat("chat", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(proxy.url("/v1/completions"))
        .json(&json!({"model": "chat", "prompt": "say hi"}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = status_and_json(r).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["choices"][0]["text"].is_string(), "{body}");
    let r = http
        .post(proxy.url("/embeddings"))
        .json(&json!({"model": "embed", "input": ["a", "b"]}))
        .send()
        .await
        .unwrap();
    let (status, _, body) = status_and_json(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().map(Vec::len), Some(2));

    // Streaming arrives chunk by chunk: the first event long before the last.
    upstream.set_reply("one two three four five");
    upstream.set_behavior(Behavior::ok().with_token_latency(Duration::from_millis(150)));
    let started = Instant::now();
    let r = http
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat("chat", json!({"stream": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    let mut first_event = None;
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        if first_event.is_none() && text.contains("data: {") {
            first_event = Some(started.elapsed());
        }
    }
    let total = started.elapsed();
    let first_event = first_event.expect("no data event");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(text.contains("three"), "{text}");
    assert!(
        total - first_event >= Duration::from_millis(450),
        "events were buffered: first after {first_event:?}, end after {total:?}"
    );
    upstream.set_behavior(Behavior::ok());

    // A stream that breaks upstream ends with an error event instead of [DONE].
    upstream.push_behavior(Behavior::drop_after(2));
    let r = http
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat("chat", json!({"stream": true})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("data: {\"error\""), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");

    // The body's `timeout` bounds the upstream call (num_retries: 0 comes from litellm_settings).
    upstream.push_behavior(Behavior::ok().with_latency(Duration::from_secs(5)));
    let started = Instant::now();
    let r = http
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat("chat", json!({"timeout": 0.3})))
        .send()
        .await
        .unwrap();
    assert_refused(r, 408, "timed out").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // Bad input: each refused with its status and a message naming the problem.
    let post = |path: &str| http.post(proxy.url(path));
    assert_refused(
        post("/v1/chat/completions")
            .body("{\"model\":")
            .send()
            .await
            .unwrap(),
        400,
        "not valid JSON",
    )
    .await;
    let body = assert_refused(
        post("/v1/chat/completions")
            .json(&chat("chat", json!({"priority": "high"})))
            .send()
            .await
            .unwrap(),
        400,
        "`priority`",
    )
    .await;
    assert_eq!(body["error"]["param"], "priority");
    for bad in [json!(0.5), json!(-2), json!(2_000_000)] {
        let r = post("/v1/chat/completions")
            .json(&chat("chat", json!({"priority": bad})))
            .send()
            .await
            .unwrap();
        assert_refused(r, 400, "`priority`").await;
    }
    let r = post("/v1/chat/completions")
        .json(&json!({"model": "chat"}))
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, "`messages` is required").await;
    let r = post("/v1/chat/completions")
        .json(&chat("gpt-9", json!({})))
        .send()
        .await
        .unwrap();
    assert_refused(r, 400, "chat, embed, mocked, slow").await;
    let r = post("/v1/chat/completions")
        .json(&chat("chat", json!({"pad": "x".repeat(1_100_000)})))
        .send();
    assert_refused(r.await.unwrap(), 413, "max_request_size_mb").await;
    assert_refused(
        http.get(proxy.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap(),
        405,
        "GET",
    )
    .await;
    assert_refused(
        http.get(proxy.url("/nope")).send().await.unwrap(),
        404,
        "/nope",
    )
    .await;

    // Mock deployments answer without an upstream (the queue endpoint has its own test below).
    let r = post("/v1/chat/completions")
        .json(&chat("mocked", json!({"priority": 0})))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = status_and_json(r).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "hello from the mock"
    );
    assert_eq!(headers["x-llm-scheduler-deployment-id"], "mocked-1");

    // Health and metrics reflect what happened.
    let (status, _, health) =
        status_and_json(http.get(proxy.url("/health")).send().await.unwrap()).await;
    assert_eq!(status, 200, "{health}");
    let upstream_1 = health["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "upstream-1")
        .unwrap();
    assert!(
        upstream_1["rpm_used"].as_u64().unwrap() >= 4,
        "{upstream_1}"
    );
    let metrics = anonymous
        .get(proxy.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        r#"llm_scheduler_requests_total{endpoint="chat_completions",model_group="chat",deployment="upstream-1",status="200"}"#,
        r#"llm_scheduler_requests_total{endpoint="chat_completions",model_group="",deployment="",status="400"}"#,
        r#"llm_scheduler_requests_total{endpoint="embeddings",model_group="embed""#,
        "llm_scheduler_upstream_latency_seconds_bucket",
        "llm_scheduler_backend_up 1",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }

    // A client that goes away is not waited for: the request's future is dropped (counted as 499).
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = impatient
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(KEY)
        .json(&chat("slow", json!({})))
        .send();
    assert!(
        r.await.is_err(),
        "the slow request should have outlived the client"
    );
    let released = eventually(Duration::from_secs(10), || {
        let http = http.clone();
        let url = proxy.url("/metrics");
        async move {
            let text = http.get(url).send().await.unwrap().text().await.unwrap();
            text.contains(r#"model_group="slow",deployment="",status="499"} 1"#)
                && text.contains("llm_scheduler_in_flight_requests 0")
        }
    })
    .await;
    assert!(
        released,
        "{}",
        http.get(proxy.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    );
    // The log arrives through the child's pipe a moment after the metrics show the 499.
    let logged = eventually(Duration::from_secs(5), || async {
        proxy.output().contains("client went away")
    })
    .await;
    assert!(logged, "{}", proxy.output());

    // SIGTERM: the request in flight still gets its answer, then the process exits cleanly.
    upstream.set_behavior(Behavior::ok().with_latency(Duration::from_millis(800)));
    let before = upstream.request_count();
    let in_flight = tokio::spawn({
        let http = http.clone();
        let url = proxy.url("/v1/chat/completions");
        async move {
            http.post(url)
                .json(&chat("chat", json!({})))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    assert!(
        upstream
            .wait_for_requests(before + 1, Duration::from_secs(10))
            .await
    );
    proxy.terminate();
    assert_eq!(in_flight.await.unwrap().unwrap(), 200);
    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(15))).unwrap();
    assert!(status.success(), "{status:?}\n{}", proxy.output());
    let output = proxy.output();
    assert!(
        output.contains("shutdown signal") && output.contains("stopped"),
        "{output}"
    );
    assert!(
        !output.contains("sk-upstream-secret-1"),
        "a secret was logged:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_limits_and_cooldowns_through_redis() {
    let redis = RedisServer::start().await.unwrap();
    let config = format!(
        r#"
model_list:
  - model_name: one-per-minute
    litellm_params: {{ model: openai/gpt-4o, mock_response: "only one", rpm: 1 }}
    model_info: {{ id: single }}
  - model_name: flaky
    litellm_params: {{ model: openai/gpt-4o, mock_response: "litellm.RateLimitError" }}
    model_info: {{ id: flaky-a }}
  - model_name: flaky
    litellm_params: {{ model: openai/gpt-4o, mock_response: "litellm.RateLimitError" }}
    model_info: {{ id: flaky-b }}
router_settings:
  redis_url: {url}
  key_prefix: "{prefix}"
  num_retries: 0
  cooldown_time: 60
  # An hour-long window: the two requests must not straddle a window roll.
  usage_window: 3600
general_settings:
  master_key: {KEY}
"#,
        url = redis.url(),
        prefix = redis.prefix(),
    );
    let a = Proxy::start(&config, &[]).unwrap();
    let b = Proxy::start_with_args(&config, &[], &["--log-format", "json"]).unwrap();
    let line = b
        .output()
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap()
        .to_owned();
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["level"], "INFO", "{line}");
    let http = client();

    // rpm: 1 across the cluster: A takes the only slot of the window, B cannot have another.
    let r = http
        .post(a.url("/v1/chat/completions"))
        .json(&chat("one-per-minute", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(b.url("/v1/chat/completions"))
        .json(&chat("one-per-minute", json!({"timeout": 1})))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = status_and_json(r).await;
    assert!(status == 429 || status == 408, "B got {status}: {body}");
    if status == 429 {
        assert!(headers.contains_key("retry-after"), "{headers:?}");
    }
    let (_, _, health_b) = status_and_json(http.get(b.url("/health")).send().await.unwrap()).await;
    let single = health_b["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "single")
        .unwrap();
    assert_eq!(single["rpm_used"], 1, "{single}");

    // A failure seen by A cools the deployment down for B too.
    let r = http
        .post(a.url("/v1/chat/completions"))
        .json(&chat("flaky", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let (_, _, health_b) = status_and_json(http.get(b.url("/health")).send().await.unwrap()).await;
    let cooled: Vec<&Value> = health_b["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["model_group"] == "flaky" && d["healthy"] == false)
        .collect();
    assert!(
        !cooled.is_empty(),
        "B does not see A's cooldown: {health_b}"
    );
    let metrics = http
        .get(b.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"llm_scheduler_deployment_cooldown{model_group="flaky""#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_waits_for_capacity_and_leaves_the_queue_when_its_client_goes() {
    let redis = RedisServer::start().await.unwrap();
    let config = format!(
        r#"
model_list:
  - model_name: mocked
    litellm_params: {{ model: openai/gpt-4o, mock_response: "hello from the mock", rpm: 1 }}
  - model_name: held
    litellm_params: {{ model: openai/gpt-4o, mock_response: "slow", mock_delay: 20, max_parallel_requests: 1 }}
router_settings:
  redis_url: {url}
  key_prefix: "{prefix}"
  usage_window: 1
general_settings:
  master_key: {KEY}
"#,
        url = redis.url(),
        prefix = redis.prefix(),
    );
    let proxy = Proxy::start(&config, &[]).unwrap();
    let http = client();

    // rpm: 1 with a 1 s window: the second request (priority 0, through the queue) is served in the next window.
    let r = http
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat("mocked", json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http
        .post(proxy.url("/queue/chat/completions"))
        .json(&chat("mocked", json!({"priority": 0, "timeout": 10})))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = status_and_json(r).await;
    assert_eq!(status, 200, "the queued request was not admitted: {body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "hello from the mock"
    );
    let waited: f64 = headers["x-llm-scheduler-queue-wait-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(waited > 0.0, "{waited}");

    // One request holds the only slot of `held`; a second waits in Redis until its client disconnects.
    let holder = tokio::spawn({
        let http = http.clone();
        let url = proxy.url("/v1/chat/completions");
        async move {
            http.post(url)
                .json(&chat("held", json!({})))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let queue_key = format!("{}{{held}}:q", redis.prefix());
    let queue_key = queue_key.as_str();
    let waiter = tokio::spawn({
        let http = http.clone();
        let url = proxy.url("/queue/chat/completions");
        async move {
            http.post(url)
                .json(&chat("held", json!({"priority": 3})))
                .send()
                .await
                .map(|r| r.status())
        }
    });
    let queued = eventually(Duration::from_secs(10), || {
        let mut conn = conn.clone();
        async move {
            redis::cmd("ZCARD")
                .arg(queue_key)
                .query_async::<u64>(&mut conn)
                .await
                .unwrap_or(0)
                == 1
        }
    })
    .await;
    assert!(queued, "the second request never entered the queue");
    let metrics = http
        .get(proxy.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"llm_scheduler_queue_depth{model_group="held",priority="3"} 1"#),
        "{metrics}"
    );
    waiter.abort();
    let left = eventually(Duration::from_secs(5), || {
        let mut conn = conn.clone();
        async move {
            redis::cmd("ZCARD")
                .arg(queue_key)
                .query_async::<u64>(&mut conn)
                .await
                .unwrap_or(1)
                == 0
        }
    })
    .await;
    let depth: u64 = redis::cmd("ZCARD")
        .arg(queue_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        left,
        "the disconnected client's entry is still queued (depth {depth})"
    );

    // The holder's client goes away during the upstream call: its in-flight slot comes back at once,
    // not when the lease expires.
    holder.abort();
    let inflight_keys = format!("{}{{held}}:d:*:if", redis.prefix());
    let inflight_keys = inflight_keys.as_str();
    let released = eventually(Duration::from_secs(5), || {
        let mut conn = conn.clone();
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(inflight_keys)
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            let mut held = 0;
            for key in keys {
                held += redis::cmd("ZCARD")
                    .arg(&key)
                    .query_async::<u64>(&mut conn)
                    .await
                    .unwrap_or(1);
            }
            held == 0
        }
    })
    .await;
    assert!(
        released,
        "the abandoned request still holds its in-flight slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_dies_requests_get_503_with_retry_after() {
    let Some(mut redis) = RedisServer::start_own("kills Redis").await.unwrap() else {
        return;
    };
    let config = format!(
        r#"
model_list:
  - model_name: mocked
    litellm_params: {{ model: openai/gpt-4o, mock_response: "hello from the mock" }}
router_settings:
  redis_url: {url}
  key_prefix: "{prefix}"
general_settings:
  master_key: {KEY}
"#,
        url = redis.url(),
        prefix = redis.prefix(),
    );
    let proxy = Proxy::start(&config, &[]).unwrap();
    let http = client();
    let ask = || {
        http.post(proxy.url("/v1/chat/completions"))
            .json(&chat("mocked", json!({})))
            .send()
    };
    assert_eq!(ask().await.unwrap().status(), 200);

    redis.kill();
    let dead = eventually(Duration::from_secs(10), || {
        let running = redis.is_running();
        async move { !running }
    })
    .await;
    assert!(dead, "redis-server did not die");
    // The kept connection notices the closed socket on its next call at the latest.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, headers, body) = loop {
        let answer = status_and_json(ask().await.unwrap()).await;
        if answer.0 == 503 || Instant::now() >= deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1", "{headers:?}");
    assert_eq!(body["error"]["code"], "backend_unavailable", "{body}");

    let r = reqwest::get(proxy.url("/health/readiness")).await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_redis_does_not_answer_starts_with_a_warning_and_is_not_ready() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        r#"
model_list:
  - model_name: mocked
    litellm_params: {{ model: openai/gpt-4o, mock_response: "hello from the mock" }}
router_settings:
  redis_host: 127.0.0.1
  redis_port: {port}
general_settings:
  master_key: {KEY}
"#
    );
    let proxy = Proxy::start(&config, &[]).unwrap();
    let output = proxy.output();
    let warning = output
        .lines()
        .find(|l| l.contains("Redis does not answer"))
        .unwrap_or_else(|| panic!("no warning about Redis:\n{output}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains(&port.to_string()), "{warning}");

    let anonymous = reqwest::Client::new();
    let r = anonymous
        .get(proxy.url("/health/liveliness"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the process answers");
    let r = anonymous
        .get(proxy.url("/health/readiness"))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = status_and_json(r).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
    let r = client()
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat("mocked", json!({})))
        .send()
        .await
        .unwrap();
    let (status, headers, body) = status_and_json(r).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers["retry-after"], "1");
}

/// The Python interpreter with the official `anthropic` and `openai` SDKs: `SDK_PYTHON`, else `python3`; `None`
/// (the test is skipped, and says so) when the SDKs cannot be imported.
fn sdk_python() -> Option<String> {
    let python = std::env::var("SDK_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import anthropic, openai"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    let line = format!(
        "skipped: sdks_answer_and_stream_through_an_anthropic_deployment ({python} cannot import anthropic \
         and openai; `pip install anthropic openai` and set SDK_PYTHON)"
    );
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(testkit::TESTKIT_SKIP_LOG) {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
    None
}

/// The official Anthropic SDK on `/v1/messages` and the OpenAI SDK on `/v1/chat/completions`, with an
/// `anthropic/` deployment behind both, get correct answers, streams, tool calls and errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdks_answer_and_stream_through_an_anthropic_deployment() {
    let Some(python) = sdk_python() else {
        return;
    };
    const REPLY: &str = "Hello from the Anthropic mock";
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_reply(REPLY);
    let config = format!(
        r#"
model_list:
  - model_name: claude
    litellm_params: {{ model: anthropic/claude-sonnet-4-5, api_base: "{}", api_key: sk-ant-upstream-key }}
router_settings:
  num_retries: 0
general_settings:
  master_key: {KEY}
"#,
        upstream.url()
    );
    let proxy = Proxy::start(&config, &[]).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/sdk_clients.py");
    let mut child = std::process::Command::new(python)
        .arg(script)
        .env("PROXY_URL", proxy.url(""))
        .env("PROXY_KEY", KEY)
        .env("EXPECTED", REPLY)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The mock serves on this runtime: wait for the script off it, bounded.
    let output = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait_with_output()
    })
    .await
    .unwrap()
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && text.contains("sdk checks passed"),
        "{text}\nproxy:\n{}",
        proxy.output()
    );
    // Both SDKs reached the Anthropic upstream natively.
    let requests = upstream.requests();
    assert_eq!(requests.len(), 6, "three calls from each SDK");
    assert!(requests.iter().all(|r| r.path == "/v1/messages"));
}
