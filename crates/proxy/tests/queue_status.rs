//! `/queue/status` against what was sent: a saturated deployment, 1,000 waiting requests over three replica
//! processes on one Redis (depth by priority exact, oldest wait within a second, every replica seeing the
//! same), and the same on the in-memory backend in-process; who may read it.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use common::{client, eventually, Proxy, KEY};
use http_body_util::BodyExt;
use proxy::{app, AppState, Config};
use router::{Backend, Router};
use serde_json::{json, Value};
use tower::ServiceExt;

/// Waiting requests by priority, sent in this order (the least urgent first, so the oldest waiter is not at
/// the head of the queue).
const WAITING: [(u32, usize); 3] = [(9, 600), (5, 300), (0, 100)];

/// One group `chat` whose only deployment admits one request per (long) window: after one request every
/// other waits (their timeout is beyond the window, so none is refused at once for want of capacity).
fn config(router_settings: &str) -> String {
    format!(
        r#"
model_list:
  - model_name: chat
    litellm_params: {{ model: openai/gpt-4o, mock_response: "hi", rpm: 1 }}
    model_info: {{ id: chat-a }}
router_settings:
  num_retries: 0
  timeout: 1200
  usage_window: 600
  polling_interval: 0.05
{router_settings}general_settings:
  master_key: {KEY}
"#
    )
}

fn chat_body(priority: u32) -> String {
    json!({"model": "chat", "messages": [{"role": "user", "content": "hi"}], "priority": priority})
        .to_string()
}

/// Checks a `/queue/status` answer against [`WAITING`]; `waited` is how long the first waiter has been
/// waiting when the answer arrived (at most; at least `waited - took`).
fn check_status(status: &Value, waited: Duration, took: Duration) {
    assert_eq!(status["scope"], "all", "{status}");
    let group = &status["groups"][0];
    assert_eq!(group["model_group"], "chat", "{status}");
    let total: usize = WAITING.iter().map(|(_, n)| n).sum();
    assert_eq!(group["depth"], total, "{group}");
    let by_priority: Vec<(u64, u64)> = group["by_priority"]
        .as_array()
        .expect("by_priority")
        .iter()
        .map(|b| {
            (
                b["priority"].as_u64().expect("priority"),
                b["waiting"].as_u64().expect("waiting"),
            )
        })
        .collect();
    let mut expected: Vec<(u64, u64)> = WAITING
        .iter()
        .map(|(p, n)| (u64::from(*p), *n as u64))
        .collect();
    expected.sort();
    assert_eq!(by_priority, expected, "{group}");
    let oldest = group["oldest_wait_secs"].as_f64().expect("oldest wait");
    let (low, high) = (
        waited.saturating_sub(took).as_secs_f64(),
        waited.as_secs_f64(),
    );
    assert!(
        oldest > low - 1.0 && oldest < high + 1.0,
        "oldest wait {oldest} s, expected within a second of [{low}, {high}]"
    );
    // The oldest waiter is the first of priority 9 (sent first), not the head of the queue.
    let band_9 = group["by_priority"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["priority"] == 9))
        .expect("priority 9");
    assert_eq!(band_9["oldest_wait_secs"], group["oldest_wait_secs"]);
    let deployment = &status["deployments"][0];
    assert_eq!(deployment["id"], "chat-a", "{status}");
    assert_eq!(deployment["rpm_used"], 1, "{deployment}");
    assert_eq!(deployment["at_limit"], json!(["rpm"]), "{deployment}");
    assert_eq!(deployment["cooling_down"], false, "{deployment}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_every_replicas_waiters() {
    let redis = testkit::RedisServer::start().await.expect("redis");
    let config = config(&format!(
        "  redis_url: {}\n  key_prefix: \"{}\"\n",
        redis.url(),
        redis.prefix()
    ));
    let replicas: Vec<Proxy> = (0..3)
        .map(|_| Proxy::start(&config, &[]).expect("replica"))
        .collect();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(1200))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let auth = format!("Bearer {KEY}");
    // Saturate the deployment.
    let first = http
        .post(replicas[0].url("/v1/chat/completions"))
        .header("authorization", &auth)
        .body(chat_body(0))
        .send()
        .await
        .expect("first request");
    assert_eq!(first.status(), 200);

    let sent_at = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut i = 0;
    for (priority, n) in WAITING {
        for _ in 0..n {
            let url = replicas[i % 3].url("/v1/chat/completions");
            i += 1;
            let request = http
                .post(url)
                .header("authorization", &auth)
                .body(chat_body(priority));
            tasks.spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
        }
    }
    let status_client = client();
    let total: u64 = WAITING.iter().map(|(_, n)| *n as u64).sum();
    let read = |url: String| {
        let c = status_client.clone();
        async move {
            let asked = Instant::now();
            let status: Value = c.get(url).send().await.ok()?.json().await.ok()?;
            Some((status, asked.elapsed()))
        }
    };
    let all_waiting = eventually(Duration::from_secs(60), || {
        let read = read(replicas[0].url("/queue/status"));
        async move {
            read.await
                .is_some_and(|(s, _)| s["groups"][0]["depth"] == total)
        }
    })
    .await;
    assert!(
        all_waiting,
        "not all {total} requests waited within 60 s: {:?}",
        read(replicas[0].url("/queue/status")).await
    );
    for replica in &replicas {
        let (status, took) = read(replica.url("/queue/status")).await.expect("status");
        check_status(&status, sent_at.elapsed(), took);
        assert_eq!(status["backend"], "redis", "{status}");
        assert_eq!(status["groups"][0]["live_replicas"], 3, "{status}");
    }
    assert!(
        tasks.try_join_next().is_none(),
        "a waiting request was answered"
    );
    tasks.abort_all();
}

fn get(path: &str, key: Option<&str>) -> Request<Body> {
    let mut request = Request::builder().method(Method::GET).uri(path);
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    request.body(Body::empty()).expect("request")
}

async fn answer(
    app: &axum::Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = app.clone().oneshot(request).await.expect("answer");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_the_memory_backend_and_who_may_read_it() {
    let config = Config::from_yaml_str(&config("")).expect("config");
    let router = Router::new(config.router.clone(), Backend::Memory)
        .await
        .expect("router");
    let app = app(AppState::new(router, &config));
    let chat = |priority: u32| {
        Request::builder()
            .method(Method::POST)
            .uri("/v1/chat/completions")
            .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(chat_body(priority)))
            .expect("request")
    };
    let (status, _, _) = answer(&app, chat(0)).await;
    assert_eq!(status, StatusCode::OK);

    let sent_at = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (priority, n) in WAITING {
        for _ in 0..n {
            let app = app.clone();
            let request = chat(priority);
            tasks.spawn(async move { app.oneshot(request).await.map(|r| r.status()) });
        }
    }
    let total: u64 = WAITING.iter().map(|(_, n)| *n as u64).sum();
    let read = || async {
        let asked = Instant::now();
        let (_, _, body) = answer(&app, get("/queue/status", Some(KEY))).await;
        let status: Value = serde_json::from_slice(&body).expect("JSON");
        (status, asked.elapsed())
    };
    let all_waiting = eventually(Duration::from_secs(60), || async {
        read().await.0["groups"][0]["depth"] == total
    })
    .await;
    assert!(all_waiting, "not all waited: {}", read().await.0);
    let (status, took) = read().await;
    check_status(&status, sent_at.elapsed(), took);
    assert_eq!(status["backend"], "memory", "{status}");
    assert_eq!(status["groups"][0]["live_replicas"], 1, "{status}");

    // No key: 401. A virtual key: its own usage only, none of the queue.
    let (code, _, _) = answer(&app, get("/queue/status", None)).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let generate = Request::builder()
        .method(Method::POST)
        .uri("/key/generate")
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"rpm_limit": 7}).to_string()))
        .expect("request");
    let (code, _, body) = answer(&app, generate).await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let generated: Value = serde_json::from_slice(&body).expect("JSON");
    let virtual_key = generated["key"].as_str().expect("key").to_owned();
    let (code, _, body) = answer(&app, get("/queue/status", Some(&virtual_key))).await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let own: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(own["scope"], "key", "{own}");
    assert_eq!(own["groups"], json!([]), "{own}");
    assert_eq!(own["key"]["rpm_limit"], 7, "{own}");
    assert!(
        !String::from_utf8_lossy(&body).contains(&virtual_key),
        "{own}"
    );

    // The page is open, and keeps to itself.
    let (code, headers, body) = answer(&app, get("/ui", None)).await;
    assert_eq!(code, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains("/ui/app.js"));
    let csp = headers
        .get(header::CONTENT_SECURITY_POLICY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    for asset in ["/ui/app.js", "/ui/style.css"] {
        let (code, _, _) = answer(&app, get(asset, None)).await;
        assert_eq!(code, StatusCode::OK, "{asset}");
    }
    let (code, _, _) = answer(&app, get("/ui/nothing.js", None)).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert!(
        tasks.try_join_next().is_none(),
        "a waiting request was answered"
    );
    tasks.abort_all();
}
