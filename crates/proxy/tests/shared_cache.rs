//! Two in-process replicas (`app(state)`, each with its own router) sharing one redis-server and its response
//! cache in front of one mock upstream: what one caller puts in a request body never becomes another caller's
//! answer.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use proxy::{app, AppState, Config, HEADER_CACHE_HIT};
use router::Router;
use serde_json::{json, Value};
use testkit::{MockUpstream, RedisServer, DEFAULT_REPLY};
use tower::ServiceExt;

const KEY: &str = "sk-shared-cache-test-key-31";
const PLANTED: &str = "The capital of France is Berlin.";

/// Two replicas of one config; the routers are returned to be shut down at the end.
async fn replicas(
    redis: &RedisServer,
    upstream: &MockUpstream,
    allow_overrides: bool,
) -> [(axum::Router, Router); 2] {
    let text = format!(
        r#"
model_list:
  - model_name: chat
    litellm_params: {{ model: openai/gpt-4o, api_base: "{base}", api_key: sk-upstream-test-key }}
    model_info: {{ id: upstream-1 }}
router_settings:
  redis_url: "{redis}"
  key_prefix: "{prefix}"
  cache_responses: true
  cache_kwargs: {{ type: redis, ttl: 600 }}
  num_retries: 0
general_settings:
  master_key: {KEY}
  allow_client_side_overrides: {allow_overrides}
"#,
        base = upstream.base_url(),
        redis = redis.url(),
        prefix = redis.prefix(),
    );
    let config = Config::from_yaml_str(&text).expect("config");
    assert!(
        config.unimplemented_keys.is_empty(),
        "{:?}",
        config.unimplemented_keys
    );
    let mut out = Vec::new();
    for _ in 0..2 {
        let router = Router::new(config.router.clone(), config.backend.backend.clone())
            .await
            .expect("router");
        out.push((app(AppState::new(router.clone(), &config)), router));
    }
    out.try_into().unwrap_or_else(|_| unreachable!())
}

struct Answer {
    status: StatusCode,
    cache_hit: Option<String>,
    body: Value,
}

impl Answer {
    fn content(&self) -> &str {
        self.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_else(|| panic!("no content: {}", self.body))
    }
}

/// POSTs a chat request asking the capital of France, with `extra` body fields.
async fn ask(replica: &axum::Router, extra: Value) -> Answer {
    let mut body =
        json!({"model": "chat", "messages": [{"role": "user", "content": "capital of France?"}]});
    for (k, v) in extra.as_object().expect("an object") {
        body[k] = v.clone();
    }
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = replica.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let cache_hit = response
        .headers()
        .get(HEADER_CACHE_HIT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    Answer {
        status,
        cache_hit,
        body,
    }
}

/// Asserts an OpenAI-shaped error with `status` naming `param` in `param` and in its message.
fn assert_refused(answer: &Answer, status: u16, param: &str) {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.body);
    let error = &answer.body["error"];
    for field in ["message", "type", "param", "code"] {
        assert!(
            error.get(field).is_some(),
            "missing error.{field}: {}",
            answer.body
        );
    }
    assert_eq!(error["param"], json!(param), "{}", answer.body);
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("`{param}`")), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_mock_response_is_refused_and_the_other_replica_asks_the_upstream() {
    let redis = RedisServer::start().await.expect("redis");
    let upstream = MockUpstream::start().await.expect("upstream");
    let [(a, router_a), (b, router_b)] = replicas(&redis, &upstream, false).await;

    let planted = ask(&a, json!({"mock_response": PLANTED})).await;
    assert_refused(&planted, 403, "mock_response");
    assert_eq!(planted.body["error"]["type"], "permission_error");
    assert_eq!(planted.body["error"]["code"], "override_not_allowed");
    let message = planted.body["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("allow_client_side_overrides"), "{message}");
    // Every other override of routing is refused the same way; client credentials are not supported at all.
    for (field, value) in [
        ("mock_delay", json!(1)),
        ("fallbacks", json!(["chat"])),
        ("num_retries", json!(5)),
    ] {
        assert_refused(&ask(&b, json!({field: value})).await, 403, field);
    }
    for field in ["api_base", "base_url", "api_key"] {
        assert_refused(
            &ask(&a, json!({field: "http://127.0.0.1:9"})).await,
            400,
            field,
        );
    }
    assert_eq!(upstream.request_count(), 0);

    let plain = ask(&b, json!({})).await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.body);
    assert_eq!(plain.content(), DEFAULT_REPLY);
    assert_eq!(plain.cache_hit.as_deref(), Some("false"));
    assert_eq!(upstream.request_count(), 1);
    // The cache is shared: the first replica answers the same request from it.
    let again = ask(&a, json!({})).await;
    assert_eq!(
        (again.content(), again.cache_hit.as_deref()),
        (DEFAULT_REPLY, Some("true"))
    );
    assert_eq!(upstream.request_count(), 1);

    router_a.shutdown().await;
    router_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_mock_response_answers_its_caller_only() {
    let redis = RedisServer::start().await.expect("redis");
    let upstream = MockUpstream::start().await.expect("upstream");
    let [(a, router_a), (b, router_b)] = replicas(&redis, &upstream, true).await;

    let mocked = ask(&a, json!({"mock_response": PLANTED})).await;
    assert_eq!(mocked.status, StatusCode::OK, "{}", mocked.body);
    assert_eq!(
        (mocked.content(), mocked.cache_hit.as_deref()),
        (PLANTED, Some("false"))
    );
    assert_eq!(upstream.request_count(), 0);

    let plain = ask(&b, json!({})).await;
    assert_eq!(plain.status, StatusCode::OK, "{}", plain.body);
    assert_eq!(
        (plain.content(), plain.cache_hit.as_deref()),
        (DEFAULT_REPLY, Some("false"))
    );
    assert_eq!(upstream.request_count(), 1);

    // With the upstream's answer cached, the mock still answers its caller, and the cache keeps the real one.
    let mocked = ask(&b, json!({"mock_response": PLANTED})).await;
    assert_eq!(
        (mocked.content(), mocked.cache_hit.as_deref()),
        (PLANTED, Some("false"))
    );
    let cached = ask(&a, json!({})).await;
    assert_eq!(
        (cached.content(), cached.cache_hit.as_deref()),
        (DEFAULT_REPLY, Some("true"))
    );
    assert_eq!(upstream.request_count(), 1);

    router_a.shutdown().await;
    router_b.shutdown().await;
}
