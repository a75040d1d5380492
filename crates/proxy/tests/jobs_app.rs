//! Durable jobs in process on the memory backend (one replica): the seed's submit / poll / read `result`
//! flow, cancels, timeouts and every kind of bad input, through `tower::ServiceExt::oneshot`.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use proxy::{app, AppState, Config};
use router::{Backend, Router};
use serde_json::{json, Value};
use tower::ServiceExt;

const KEY: &str = "sk-jobs-in-process-key-7";

const CONFIG: &str = r#"
model_list:
  - model_name: gpt-4o
    litellm_params: { model: openai/gpt-4o, mock_response: "hello from the mock" }
  - model_name: embed
    litellm_params: { model: openai/text-embedding-3-small, mock_response: "x" }
  - model_name: slow
    litellm_params: { model: openai/gpt-4o, mock_response: "slow answer", mock_delay: 0.6, max_parallel_requests: 1 }
router_settings:
  num_retries: 0
  job_workers: 4
general_settings:
  master_key: sk-jobs-in-process-key-7
"#;

async fn app_for_test() -> axum::Router {
    let config = Config::from_yaml_str(CONFIG).unwrap();
    let router = Router::new(config.router.clone(), Backend::Memory)
        .await
        .unwrap();
    app(AppState::new(router, &config))
}

fn request(method: Method, path: &str, body: Option<Value>, key: &str) -> Request<Body> {
    let builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {key}"));
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap(),
        None => builder.body(Body::empty()).unwrap(),
    }
}

async fn send(app: &axum::Router, req: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

async fn submit(app: &axum::Router, body: Value) -> (StatusCode, Value) {
    send(
        app,
        request(Method::POST, "/queue/request", Some(body), KEY),
    )
    .await
}

async fn poll(app: &axum::Router, id: &str, wait: u32) -> (StatusCode, Value) {
    let path = format!("/queue/response/{id}?wait={wait}");
    send(app, request(Method::GET, &path, None, KEY)).await
}

/// Polls (long polls of a second) until the job is finished; panics after `limit`.
async fn finished(app: &axum::Router, id: &str, limit: Duration) -> Value {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let (status, job) = poll(app, id, 1).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if job["status"] == "finished" {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "job {id} did not finish within {limit:?}: {job}"
        );
    }
}

fn assert_error(status: StatusCode, body: &Value, want: u16, needle: &str) {
    assert_eq!(status.as_u16(), want, "{body}");
    let error = &body["error"];
    for field in ["message", "type", "param", "code"] {
        assert!(error.get(field).is_some(), "missing error.{field}: {body}");
    }
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "{message:?} should mention {needle:?}"
    );
}

fn chat(model: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[tokio::test]
async fn the_seed_flow_submit_poll_and_read_the_result() {
    let app = app_for_test().await;
    let (status, ticket) = submit(&app, chat("gpt-4o", json!({"priority": 3}))).await;
    assert_eq!(status, StatusCode::OK, "{ticket}");
    assert_eq!(ticket["status"], "queued");
    let id = ticket["id"].as_str().unwrap().to_owned();
    assert_eq!(ticket["url"], format!("/queue/response/{id}"));
    assert!(ticket["eta"].as_f64().is_some_and(|e| e >= 0.0), "{ticket}");

    let job = finished(&app, &id, Duration::from_secs(10)).await;
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["status_code"], 200);
    assert_eq!(
        job["result"]["choices"][0]["message"]["content"], "hello from the mock",
        "{job}"
    );
    assert_eq!(job["attempts"], 1);

    // The same body on the synchronous route answers the same shape.
    let (status, sync) = send(
        &app,
        request(
            Method::POST,
            "/v1/chat/completions",
            Some(chat("gpt-4o", json!({}))),
            KEY,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        sync["choices"][0]["message"], job["result"]["choices"][0]["message"],
        "a job's result is the synchronous body"
    );

    // Other endpoints by the `endpoint` field; /v1 paths too.
    let (status, ticket) = send(
        &app,
        request(
            Method::POST,
            "/v1/queue/request",
            Some(json!({"endpoint": "embeddings", "model": "embed", "input": "hello"})),
            KEY,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ticket}");
    let id = ticket["id"].as_str().unwrap();
    let job = finished(&app, id, Duration::from_secs(10)).await;
    assert_eq!(job["result"]["object"], "list", "{job}");

    // Jobs by group and outcome, and their wait, in /metrics (a worker counts a job just after it
    // finished it: poll).
    let lines = [
        "llm_scheduler_jobs_finished_total{model_group=\"gpt-4o\",status=\"finished_ok\"} 1",
        "llm_scheduler_jobs_finished_total{model_group=\"embed\",status=\"finished_ok\"} 1",
        "llm_scheduler_jobs_submitted_total 2",
        "llm_scheduler_job_runs_started_total 2",
        "llm_scheduler_job_wait_seconds_sum",
    ];
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let response = app
            .clone()
            .oneshot(request(Method::GET, "/metrics", None, KEY))
            .await
            .unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let missing: Vec<_> = lines.iter().filter(|l| !text.contains(*l)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "not in /metrics: {missing:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cancels_timeouts_and_finished_jobs() {
    let app = app_for_test().await;
    // The first job holds the slow deployment's only slot; the second waits behind it.
    let (_, first) = submit(&app, chat("slow", json!({}))).await;
    let first = first["id"].as_str().unwrap().to_owned();
    let (_, second) = submit(&app, chat("slow", json!({}))).await;
    let second = second["id"].as_str().unwrap().to_owned();
    let (status, job) = poll(&app, &second, 0).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["status"], "queued", "{job}");
    assert!(
        job["position"].as_u64().is_some() && job["eta"].as_f64().is_some(),
        "{job}"
    );

    let (status, cancelled) = send(
        &app,
        request(
            Method::DELETE,
            &format!("/queue/response/{second}"),
            None,
            KEY,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "finished");
    assert_eq!(cancelled["error"]["code"], "cancelled", "{cancelled}");

    let done = finished(&app, &first, Duration::from_secs(10)).await;
    assert_eq!(
        done["result"]["choices"][0]["message"]["content"],
        "slow answer"
    );
    // The cancelled job never ran: its poll still answers the cancellation.
    let (_, again) = poll(&app, &second, 0).await;
    assert_eq!(again["error"]["code"], "cancelled", "{again}");
    assert_eq!(again["attempts"], 0, "{again}");

    // Cancelling a finished job is a clear 409.
    let (status, body) = send(
        &app,
        request(
            Method::DELETE,
            &format!("/queue/response/{first}"),
            None,
            KEY,
        ),
    )
    .await;
    assert_error(status, &body, 409, "finished already");

    // A job whose timeout passes while it waits ends with the synchronous route's 408.
    let (_, holder) = submit(&app, chat("slow", json!({}))).await;
    let (_, late) = submit(&app, chat("slow", json!({"timeout": 0.2}))).await;
    let late = late["id"].as_str().unwrap().to_owned();
    let job = finished(&app, &late, Duration::from_secs(10)).await;
    assert_eq!(job["status_code"], 408, "{job}");
    assert_eq!(job["error"]["type"], "timeout_error", "{job}");
    finished(
        &app,
        holder["id"].as_str().unwrap(),
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn bad_input_gets_openai_shaped_errors() {
    let app = app_for_test().await;
    let cases = [
        (json!({"model": "gpt-4o"}), 400, "messages"),
        (
            chat("gpt-4o", json!({"stream": true})),
            400,
            "jobs return whole answers",
        ),
        (chat("gpt-4o", json!({"priority": -1})), 400, "priority"),
        (
            chat("gpt-4o", json!({"endpoint": "images"})),
            400,
            "endpoint",
        ),
        (chat("no-such-model", json!({})), 400, "no-such-model"),
    ];
    for (body, want, needle) in cases {
        let (status, answer) = submit(&app, body.clone()).await;
        assert_error(status, &answer, want, needle);
    }

    let unknown = format!("{}.{}", "0".repeat(32), hex("gpt-4o"));
    let (status, body) = poll(&app, &unknown, 0).await;
    assert_error(status, &body, 404, "no job");
    let (status, body) = poll(&app, "not-a-job-id", 0).await;
    assert_error(status, &body, 400, "malformed job id");
    let unserved = format!("{}.{}", "0".repeat(32), hex("other-group"));
    let (status, body) = poll(&app, &unserved, 0).await;
    assert_error(status, &body, 404, "no job");
    let (status, body) = send(
        &app,
        request(
            Method::DELETE,
            &format!("/queue/response/{unknown}"),
            None,
            KEY,
        ),
    )
    .await;
    assert_error(status, &body, 404, "no job");
    let (status, body) = send(
        &app,
        request(
            Method::GET,
            &format!("/queue/response/{unknown}?wait=soon"),
            None,
            KEY,
        ),
    )
    .await;
    assert_error(status, &body, 400, "wait");

    // Without the master key nothing is read or submitted.
    let (status, _) = send(
        &app,
        request(
            Method::POST,
            "/queue/request",
            Some(chat("gpt-4o", json!({}))),
            "sk-wrong",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(
        &app,
        request(
            Method::GET,
            &format!("/queue/response/{unknown}"),
            None,
            "sk-wrong",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Without a master key the API is open, and a job belongs to the key it was submitted with: another key
/// (or none) gets 404, never the job.
#[tokio::test]
async fn another_key_never_sees_a_job() {
    let config = Config::from_yaml_str(
        r#"
model_list:
  - model_name: gpt-4o
    litellm_params: { model: openai/gpt-4o, mock_response: "mine" }
"#,
    )
    .unwrap();
    let router = Router::new(config.router.clone(), Backend::Memory)
        .await
        .unwrap();
    let app = app(AppState::new(router, &config));
    let (status, ticket) = send(
        &app,
        request(
            Method::POST,
            "/queue/request",
            Some(chat("gpt-4o", json!({}))),
            "sk-owner",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{ticket}");
    let id = ticket["id"].as_str().unwrap();
    let path = format!("/queue/response/{id}?wait=5");
    let (status, job) = send(&app, request(Method::GET, &path, None, "sk-owner")).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["status"], "finished", "{job}");
    for other in ["sk-someone-else", ""] {
        let (status, body) = send(&app, request(Method::GET, &path, None, other)).await;
        assert_error(status, &body, 404, "no job");
        let cancel = format!("/queue/response/{id}");
        let (status, body) = send(&app, request(Method::DELETE, &cancel, None, other)).await;
        assert_error(status, &body, 404, "no job");
    }
}

/// `max_queue_depth` counts jobs: a full queue answers 429 with Retry-After at once.
#[tokio::test]
async fn a_full_queue_refuses_jobs_with_429() {
    let config = Config::from_yaml_str(&format!(
        r#"
model_list:
  - model_name: gpt-4o
    litellm_params: {{ model: openai/gpt-4o, mock_response: "x" }}
router_settings:
  max_queue_depth: 2
  job_workers: 0
general_settings:
  master_key: {KEY}
"#
    ))
    .unwrap();
    let router = Router::new(config.router.clone(), Backend::Memory)
        .await
        .unwrap();
    let app = app(AppState::new(router, &config));
    for _ in 0..2 {
        let (status, ticket) = submit(&app, chat("gpt-4o", json!({}))).await;
        assert_eq!(status, StatusCode::OK, "{ticket}");
    }
    let response = app
        .clone()
        .oneshot(request(
            Method::POST,
            "/queue/request",
            Some(chat("gpt-4o", json!({}))),
            KEY,
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().contains_key(header::RETRY_AFTER));
}
