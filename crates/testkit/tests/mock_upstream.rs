//! Behaviour of `testkit::MockUpstream` seen by a real HTTP client on 127.0.0.1.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use testkit::{Behavior, MockUpstream, MockUpstreamConfig, Outcome, DEFAULT_REPLY};
use tokio::time::Instant;

/// Generous bound for waits that normally end in milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn chat_body(contents: &[&str]) -> Value {
    let messages: Vec<Value> = contents
        .iter()
        .map(|content| json!({"role": "user", "content": content}))
        .collect();
    json!({"model": "gpt-test", "messages": messages})
}

async fn post(upstream: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", upstream.url()))
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn chat(upstream: &MockUpstream, body: &Value) -> reqwest::Response {
    post(upstream, "/v1/chat/completions", body).await
}

/// Server-sent events of a response as they arrive: each event's data with its arrival time, and the error that
/// ended the body early, if any.
async fn read_events(
    response: reqwest::Response,
) -> (Vec<(String, Instant)>, Option<reqwest::Error>) {
    let mut events = Vec::new();
    let mut buffer = String::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => return (events, Some(error)),
        };
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let data = event.strip_prefix("data: ").unwrap().trim_end().to_owned();
            events.push((data, Instant::now()));
        }
    }
    assert!(buffer.is_empty(), "trailing partial event: {buffer:?}");
    (events, None)
}

fn data_of(events: &[(String, Instant)]) -> Vec<&str> {
    events.iter().map(|(data, _)| data.as_str()).collect()
}

fn error_of(body: &Value) -> (&str, &str, &Value) {
    let error = &body["error"];
    (
        error["type"].as_str().unwrap(),
        error["message"].as_str().unwrap(),
        &error["code"],
    )
}

#[tokio::test]
async fn chat_completion_has_openai_shape_and_deterministic_usage() {
    let upstream = MockUpstream::start().await.unwrap();
    assert_eq!(
        upstream.url(),
        format!("http://127.0.0.1:{}", upstream.port())
    );
    assert_eq!(
        upstream.base_url(),
        format!("http://127.0.0.1:{}/v1", upstream.port())
    );

    // 10 + 3 = 13 characters: ceil(13 / 4) = 4 prompt tokens; the default reply has 5 words.
    let response = chat(&upstream, &chat_body(&["abcdefghij", "klm"])).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], "gpt-test");
    assert_eq!(body["choices"][0]["index"], 0);
    assert_eq!(
        body["choices"][0]["message"],
        json!({"role": "assistant", "content": DEFAULT_REPLY})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9})
    );
}

#[tokio::test]
async fn prompt_tokens_are_a_quarter_of_the_characters_rounded_up_and_at_least_one() {
    let upstream = MockUpstream::start().await.unwrap();
    for (contents, expected) in [
        (vec![""], 1),
        (vec!["abc"], 1),
        (vec!["abcd"], 1),
        (vec!["abcde"], 2),
        (vec!["abcd", "efgh", "i"], 3),
        (vec!["ééééé"], 2),
    ] {
        let body: Value = chat(&upstream, &chat_body(&contents))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["usage"]["prompt_tokens"], expected, "{contents:?}");
    }
}

#[tokio::test]
async fn reply_text_is_configurable_and_max_tokens_cuts_it() {
    let upstream = MockUpstream::start_with(MockUpstreamConfig {
        reply: "one two three".to_owned(),
        ..MockUpstreamConfig::default()
    })
    .await
    .unwrap();
    let body: Value = chat(&upstream, &chat_body(&["x"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "one two three");
    assert_eq!(body["usage"]["completion_tokens"], 3);

    upstream.set_reply("  alpha\tbeta\n gamma delta ");
    let mut request = chat_body(&["x"]);
    request["max_tokens"] = json!(2);
    let body: Value = chat(&upstream, &request).await.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "alpha beta");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 2);

    upstream.push_behavior(Behavior::ok().with_reply("just this"));
    let body: Value = chat(&upstream, &chat_body(&["x"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "just this");
}

#[tokio::test]
async fn completions_embeddings_and_models_answer_on_both_path_forms() {
    let upstream = MockUpstream::start().await.unwrap();
    for prefix in ["/v1", ""] {
        let response = post(
            &upstream,
            &format!("{prefix}/completions"),
            &json!({"model": "text-test", "prompt": ["abcd", "efghi"]}),
        )
        .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["model"], "text-test");
        assert_eq!(body["choices"][0]["text"], DEFAULT_REPLY);
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
        );

        let response = post(
            &upstream,
            &format!("{prefix}/embeddings"),
            &json!({"model": "embed-test", "input": ["abcdefgh", "ij"]}),
        )
        .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["object"], "list");
        assert_eq!(body["model"], "embed-test");
        let data = body["data"].as_array().unwrap();
        assert_eq!(data.len(), 2);
        for (index, item) in data.iter().enumerate() {
            assert_eq!(item["object"], "embedding");
            assert_eq!(item["index"], index);
            assert_eq!(item["embedding"].as_array().unwrap().len(), 4);
        }
        assert_eq!(data[0]["embedding"], data[1]["embedding"]);
        assert_eq!(
            body["usage"],
            json!({"prompt_tokens": 3, "total_tokens": 3})
        );

        let response = client()
            .get(format!("{}{prefix}/models", upstream.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["object"], "list");
        assert_eq!(body["data"][0]["id"], "mock-model");

        let body: Value = post(
            &upstream,
            &format!("{prefix}/chat/completions"),
            &chat_body(&["a"]),
        )
        .await
        .json()
        .await
        .unwrap();
        assert_eq!(body["object"], "chat.completion");
    }
}

#[tokio::test]
async fn malformed_requests_and_unknown_paths_get_openai_errors() {
    let upstream = MockUpstream::start().await.unwrap();
    let response = client()
        .post(format!("{}/v1/chat/completions", upstream.url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_of(&body).0, "invalid_request_error");

    let response = chat(&upstream, &json!({"messages": []})).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["param"], "model");

    let response = post(&upstream, "/v1/nowhere", &json!({})).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_of(&body).1, "Invalid URL (POST /v1/nowhere)");

    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0].body, json!("{not json"));
    assert_eq!(recorded[2].path, "/v1/nowhere");
}

#[tokio::test]
async fn stream_sends_a_chunk_per_word_then_the_usage_chunk_and_done() {
    let upstream = MockUpstream::start().await.unwrap();
    let mut request = chat_body(&["abcdefgh"]);
    request["stream"] = json!(true);
    request["stream_options"] = json!({"include_usage": true});
    let response = chat(&upstream, &request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let (events, error) = read_events(response).await;
    assert!(error.is_none());
    let data = data_of(&events);

    // 5 words, the finish chunk, the usage chunk, [DONE].
    assert_eq!(data.len(), 8, "{data:?}");
    assert_eq!(*data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..7]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let id = &chunks[0]["id"];
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(&chunk["id"], id);
        assert_eq!(chunk["model"], "gpt-test");
    }
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks[..5]
        .iter()
        .map(|chunk| {
            assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
            assert_eq!(chunk["usage"], Value::Null);
            chunk["choices"][0]["delta"]["content"].as_str().unwrap()
        })
        .collect();
    assert_eq!(text, DEFAULT_REPLY);
    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(
        chunks[6]["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7})
    );
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_chunk() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_reply("a b");
    let mut request = chat_body(&["x"]);
    request["stream"] = json!(true);
    let (events, error) = read_events(chat(&upstream, &request).await).await;
    assert!(error.is_none());
    let data = data_of(&events);
    assert_eq!(data.len(), 4, "{data:?}");
    for chunk in &data[..3] {
        let chunk: Value = serde_json::from_str(chunk).unwrap();
        assert!(chunk.get("usage").is_none());
        assert_eq!(chunk["choices"].as_array().unwrap().len(), 1);
    }
    assert_eq!(data[3], "[DONE]");

    let request = json!({"model": "text-test", "prompt": "x", "stream": true});
    let (events, _) = read_events(post(&upstream, "/v1/completions", &request).await).await;
    let texts: Vec<String> = data_of(&events)[..3]
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(texts, ["a", " b", ""]);
}

#[tokio::test]
async fn stream_chunks_arrive_one_by_one_at_the_token_latency() {
    let upstream = MockUpstream::start().await.unwrap();
    let gap = Duration::from_millis(80);
    upstream.set_reply("w1 w2 w3 w4");
    upstream.set_behavior(Behavior::ok().with_token_latency(gap));
    let mut request = chat_body(&["x"]);
    request["stream"] = json!(true);

    let (events, error) = read_events(chat(&upstream, &request).await).await;
    assert!(error.is_none());
    // 4 words, finish, [DONE]: the server waits `gap` before each of the last 5 events, so if the first event
    // reached the client when it was sent, the last one arrives at least about 5 gaps later.
    assert_eq!(events.len(), 6);
    let first = events[0].1;
    let last = events[5].1;
    assert!(
        last - first >= gap * 4,
        "first and last chunk arrived {:?} apart",
        last - first
    );
    for pair in events.windows(2) {
        assert!(pair[1].1 > pair[0].1);
    }
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let upstream = MockUpstream::start().await.unwrap();
    let latency = Duration::from_millis(150);
    upstream.set_behavior(Behavior::ok().with_latency(latency));
    let started = Instant::now();
    assert_eq!(chat(&upstream, &chat_body(&["x"])).await.status(), 200);
    assert!(started.elapsed() >= latency);
}

#[tokio::test]
async fn queued_errors_are_used_in_arrival_order_then_the_default_applies() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.push_behavior(Behavior::context_length_exceeded());
    upstream.push_behavior(Behavior::unauthorized());
    upstream.push_behavior(Behavior::not_found());
    upstream.push_behavior(Behavior::rate_limited(7));
    upstream.push_behavior(Behavior::outcome(Outcome::RateLimited {
        retry_after_secs: None,
    }));
    upstream.push_behavior(Behavior::internal_error());
    upstream.push_behavior(Behavior::service_unavailable());
    upstream.push_behavior(Behavior::status(418, r#"{"teapot":true}"#));
    assert_eq!(upstream.queued_behaviors(), 8);

    let request = chat_body(&["abcdefghijkl"]);
    let mut answers = Vec::new();
    for _ in 0..9 {
        let response = chat(&upstream, &request).await;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|value| value.to_str().unwrap().to_owned());
        let body: Value = response.json().await.unwrap();
        answers.push((status, retry_after, body));
    }
    assert_eq!(upstream.queued_behaviors(), 0);

    let statuses: Vec<u16> = answers.iter().map(|(status, _, _)| *status).collect();
    assert_eq!(statuses, [400, 401, 404, 429, 429, 500, 503, 418, 200]);
    let retry_after: Vec<Option<&str>> = answers.iter().map(|(_, r, _)| r.as_deref()).collect();
    assert_eq!(retry_after[3], Some("7"));
    assert!(retry_after
        .iter()
        .enumerate()
        .all(|(i, r)| i == 3 || r.is_none()));

    let context = &answers[0].2["error"];
    assert_eq!(context["type"], "invalid_request_error");
    assert_eq!(context["param"], "messages");
    assert_eq!(context["code"], "context_length_exceeded");
    assert!(context["message"]
        .as_str()
        .unwrap()
        .starts_with("This model's maximum context length is 8192 tokens. However, your messages resulted in 3 tokens."));
    assert_eq!(error_of(&answers[1].2).2, "invalid_api_key");
    assert_eq!(error_of(&answers[2].2).2, "model_not_found");
    assert!(error_of(&answers[2].2).1.contains("gpt-test"));
    assert_eq!(error_of(&answers[3].2).2, "rate_limit_exceeded");
    assert_eq!(error_of(&answers[5].2).0, "server_error");
    assert_eq!(error_of(&answers[6].2).0, "server_error");
    assert_eq!(answers[7].2, json!({"teapot": true}));
    assert_eq!(answers[8].2["object"], "chat.completion");
}

#[tokio::test]
async fn default_behaviour_applies_until_changed_and_queued_ones_take_precedence() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior::service_unavailable());
    upstream.push_behavior(Behavior::ok());
    let request = chat_body(&["x"]);
    assert_eq!(chat(&upstream, &request).await.status(), 200);
    assert_eq!(chat(&upstream, &request).await.status(), 503);
    assert_eq!(chat(&upstream, &request).await.status(), 503);
    upstream.set_behavior(Behavior::ok());
    assert_eq!(chat(&upstream, &request).await.status(), 200);
}

#[tokio::test]
async fn custom_status_sends_its_headers_and_body() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.push_behavior(Behavior::outcome(Outcome::Status {
        status: 529,
        headers: vec![("x-custom".to_owned(), "yes".to_owned())],
        body: r#"{"error":{"message":"overloaded","type":"overloaded_error"}}"#.to_owned(),
    }));
    let response = chat(&upstream, &chat_body(&["x"])).await;
    assert_eq!(response.status(), 529);
    assert_eq!(response.headers()["x-custom"], "yes");
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn a_hanging_request_lasts_until_the_client_gives_up() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.push_behavior(Behavior::hang());
    let started = Instant::now();
    let error = client()
        .post(format!("{}/chat/completions", upstream.base_url()))
        .json(&chat_body(&["x"]))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(error.is_timeout(), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The server notices the closed connection and stops counting the request.
    assert!(upstream.wait_for_in_flight(0, PATIENCE).await);
    assert_eq!(chat(&upstream, &chat_body(&["x"])).await.status(), 200);
}

#[tokio::test]
async fn shutdown_breaks_hanging_requests_and_closes_the_port() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior::hang());
    let url = format!("{}/chat/completions", upstream.base_url());
    let hanging =
        tokio::spawn(async move { client().post(url).json(&chat_body(&["x"])).send().await });
    assert!(upstream.wait_for_in_flight(1, PATIENCE).await);

    let addr = upstream.addr();
    tokio::time::timeout(PATIENCE, upstream.shutdown())
        .await
        .unwrap();
    let answer = tokio::time::timeout(PATIENCE, hanging)
        .await
        .unwrap()
        .unwrap();
    assert!(answer.is_err(), "{answer:?}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let upstream = MockUpstream::start().await.unwrap();
    let addr = upstream.addr();
    drop(upstream);
    let mut closed = false;
    for _ in 0..1000 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(closed);
}

#[tokio::test]
async fn a_dropped_stream_breaks_after_the_scripted_number_of_chunks() {
    let upstream = MockUpstream::start().await.unwrap();
    let mut request = chat_body(&["x"]);
    request["stream"] = json!(true);
    for after in [0, 2, 4] {
        upstream.push_behavior(Behavior::drop_after(after));
        let response = chat(&upstream, &request).await;
        assert_eq!(response.status(), 200);
        let (events, error) = read_events(response).await;
        assert!(
            error.is_some(),
            "the stream after {after} chunks ended cleanly"
        );
        assert_eq!(events.len(), after);
        assert!(data_of(&events).iter().all(|d| *d != "[DONE]"));
    }
    assert!(upstream.wait_for_in_flight(0, PATIENCE).await);
}

#[tokio::test]
async fn a_dropped_json_body_is_truncated() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.push_behavior(Behavior::drop_after(1));
    let response = chat(&upstream, &chat_body(&["x"])).await;
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err());
}

#[tokio::test]
async fn azure_paths_require_an_api_key_and_answer_as_the_deployment() {
    let upstream = MockUpstream::start().await.unwrap();
    let url = |endpoint: &str| {
        format!(
            "{}/openai/deployments/my-gpt/{endpoint}?api-version=2024-06-01",
            upstream.url()
        )
    };
    let request = json!({"messages": [{"role": "user", "content": "abcd"}]});

    let response = client()
        .post(url("chat/completions"))
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(error_of(&body).2, "401");

    let response = client()
        .post(url("chat/completions"))
        .header("api-key", "azure-secret")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["model"], "my-gpt");
    assert_eq!(body["usage"]["prompt_tokens"], 1);

    for (endpoint, request) in [
        ("completions", json!({"prompt": "abcd"})),
        ("embeddings", json!({"input": "abcd"})),
    ] {
        let response = client()
            .post(url(endpoint))
            .header("api-key", "azure-secret")
            .json(&request)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{endpoint}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["model"], "my-gpt");
    }

    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 4);
    assert_eq!(
        recorded[1].path,
        "/openai/deployments/my-gpt/chat/completions?api-version=2024-06-01"
    );
    assert_eq!(recorded[0].header("api-key"), None);
    assert_eq!(recorded[1].header("API-Key"), Some("azure-secret"));
}

#[tokio::test]
async fn the_recorder_keeps_every_request_exactly() {
    let upstream = MockUpstream::start().await.unwrap();
    let before_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let before = Instant::now();
    let request = json!({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "priority": 3});
    let response = client()
        .post(format!("{}/chat/completions", upstream.base_url()))
        .bearer_auth("sk-test")
        .header("X-Trace", "abc")
        .json(&request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let response = client()
        .get(format!("{}/models?limit=1", upstream.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    assert_eq!(upstream.request_count(), 2);
    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 2);
    let chat = &recorded[0];
    assert_eq!(chat.method, "POST");
    assert_eq!(chat.path, "/v1/chat/completions");
    assert_eq!(chat.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(chat.headers["x-trace"], "abc");
    assert_eq!(chat.headers["content-type"], "application/json");
    assert!(chat
        .headers
        .keys()
        .all(|name| *name == name.to_ascii_lowercase()));
    assert_eq!(chat.body, request);
    assert!(chat.at >= before && chat.at <= Instant::now());
    assert!(chat.epoch_ms >= before_ms);

    let models = &recorded[1];
    assert_eq!(models.method, "GET");
    assert_eq!(models.path, "/models?limit=1");
    assert_eq!(models.body, Value::Null);
    assert!(models.at >= chat.at);

    upstream.clear();
    assert_eq!(upstream.request_count(), 0);
    assert!(upstream.requests().is_empty());
}

#[tokio::test]
async fn recording_can_be_turned_off_while_arrivals_are_still_counted() {
    let upstream = MockUpstream::start_with(MockUpstreamConfig {
        record: false,
        ..MockUpstreamConfig::default()
    })
    .await
    .unwrap();
    assert_eq!(chat(&upstream, &chat_body(&["x"])).await.status(), 200);
    assert_eq!(upstream.request_count(), 1);
    assert!(upstream.requests().is_empty());
    upstream.set_recording(true);
    assert_eq!(chat(&upstream, &chat_body(&["x"])).await.status(), 200);
    assert_eq!(upstream.request_count(), 2);
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn wait_for_requests_wakes_on_arrival_and_times_out_otherwise() {
    let upstream = MockUpstream::start().await.unwrap();
    assert!(
        !upstream
            .wait_for_requests(1, Duration::from_millis(50))
            .await
    );

    let url = format!("{}/chat/completions", upstream.base_url());
    let senders: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client().post(url).json(&chat_body(&["x"])).send().await })
        })
        .collect();
    assert!(upstream.wait_for_requests(3, PATIENCE).await);
    for sender in senders {
        assert_eq!(sender.await.unwrap().unwrap().status(), 200);
    }
    assert!(
        !upstream
            .wait_for_requests(4, Duration::from_millis(50))
            .await
    );
}

#[tokio::test]
async fn peak_in_flight_counts_fifty_concurrent_requests() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_behavior(Behavior::ok().with_latency(Duration::from_millis(300)));
    let client = client();
    let url = format!("{}/chat/completions", upstream.base_url());
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let request = client.post(&url).json(&chat_body(&["x"]));
            tokio::spawn(async move { request.send().await })
        })
        .collect();

    assert!(
        upstream.wait_for_in_flight(50, PATIENCE).await,
        "in flight: {}",
        upstream.in_flight()
    );
    assert_eq!(upstream.peak_in_flight(), 50);
    for request in requests {
        assert_eq!(request.await.unwrap().unwrap().status(), 200);
    }
    assert!(upstream.wait_for_in_flight(0, PATIENCE).await);
    assert_eq!(upstream.peak_in_flight(), 50);
    upstream.reset_peak();
    assert_eq!(upstream.peak_in_flight(), 0);
}

#[tokio::test]
async fn a_stream_stays_in_flight_until_its_body_ends() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.set_reply("a b c");
    upstream.set_behavior(Behavior::ok().with_token_latency(Duration::from_millis(100)));
    let mut request = chat_body(&["x"]);
    request["stream"] = json!(true);
    let response = chat(&upstream, &request).await;
    assert_eq!(response.status(), 200);
    // Headers are in, the body is still coming.
    assert_eq!(upstream.in_flight(), 1);
    let (events, _) = read_events(response).await;
    assert_eq!(events.len(), 5);
    assert!(upstream.wait_for_in_flight(0, PATIENCE).await);
}

#[tokio::test]
async fn the_binary_prints_its_address_and_serves() {
    use tokio::io::AsyncBufReadExt;

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
        .args(["--port", "0", "--reply", "from the binary", "--no-record"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let url = line.strip_prefix("mock-upstream listening on ").unwrap();
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");

    let body: Value = client()
        .post(format!("{url}/v1/chat/completions"))
        .json(&chat_body(&["x"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "from the binary");

    // SIGTERM ends the process cleanly.
    let pid = child.id().unwrap().to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn the_admin_route_serves_the_log_as_json_and_clears_it() {
    let upstream = MockUpstream::start().await.unwrap();
    for content in ["a", "b"] {
        assert_eq!(chat(&upstream, &chat_body(&[content])).await.status(), 200);
    }
    let admin = format!("{}/__mock/requests", upstream.url());
    let log: Value = client()
        .get(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log["count"], 2);
    assert_eq!(log["in_flight"], 0);
    assert_eq!(log["peak_in_flight"], 1);
    assert_eq!(log["recording"], true);
    let requests = log["requests"].as_array().unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1]["path"], "/v1/chat/completions");
    assert_eq!(requests[1]["body"]["messages"][0]["content"], "b");
    assert!(requests[0]["epoch_ms"].as_u64().unwrap() > 0);
    // Reading the log is not itself a request of the mock.
    assert_eq!(upstream.request_count(), 2);

    let cleared = client().delete(&admin).send().await.unwrap();
    assert_eq!(cleared.status(), 204);
    assert_eq!(upstream.request_count(), 0);
    let log: Value = client()
        .get(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(log["count"], 0);
    assert_eq!(log["requests"], json!([]));
}
