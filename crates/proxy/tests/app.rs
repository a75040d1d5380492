//! In-process tests of `app(state)` through `tower::ServiceExt::oneshot`: auth, every endpoint's happy path, and
//! the many ways a request can be wrong. Mock deployments (`mock_response`) answer, so nothing leaves the process.

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use proxy::{app, AppState, Config};
use router::{Backend, Router};
use serde_json::{json, Value};
use tower::ServiceExt;

const KEY: &str = "sk-in-process-test-key-42";

fn config_text(master_key: bool) -> String {
    let general = if master_key {
        format!("general_settings:\n  master_key: {KEY}\n  max_request_size_mb: 0.01\n")
    } else {
        "general_settings:\n  max_request_size_mb: 0.01\n".to_owned()
    };
    format!(
        r#"
model_list:
  - model_name: gpt-4o
    litellm_params: {{ model: openai/gpt-4o, mock_response: "hello from the mock" }}
    model_info: {{ id: mock-a }}
  - model_name: embed
    litellm_params: {{ model: openai/text-embedding-3-small, mock_response: "x" }}
  - model_name: limited
    litellm_params: {{ model: openai/x, mock_response: "litellm.RateLimitError", num_retries: 0 }}
  - model_name: legacy
    litellm_params: {{ model: bedrock/anthropic.claude-v2 }}
router_settings:
  num_retries: 0
{general}"#
    )
}

async fn app_with(master_key: bool) -> axum::Router {
    let config = Config::from_yaml_str(&config_text(master_key)).unwrap();
    let router = Router::new(config.router.clone(), Backend::Memory)
        .await
        .unwrap();
    app(AppState::new(router, &config))
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::builder()
        .uri(path)
        .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
        .body(Body::empty())
        .unwrap()
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    /// Asserts an OpenAI-shaped error with `status` whose message contains `needle`.
    fn assert_error(&self, status: u16, needle: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        let body = self.json();
        let error = &body["error"];
        for field in ["message", "type", "param", "code"] {
            assert!(error.get(field).is_some(), "missing error.{field}: {body}");
        }
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }
}

async fn send(app: &axum::Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        text: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

fn chat_body(extra: Value) -> String {
    let mut body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body.to_string()
}

#[tokio::test]
async fn every_endpoint_answers() {
    let app = app_with(true).await;

    for path in [
        "/v1/chat/completions",
        "/chat/completions",
        "/queue/chat/completions",
    ] {
        let a = send(&app, post(path, chat_body(json!({"priority": 0})))).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text);
        assert_eq!(
            a.json()["choices"][0]["message"]["content"],
            "hello from the mock"
        );
        assert_eq!(a.header(proxy::HEADER_DEPLOYMENT_ID), "mock-a");
        assert_eq!(a.header(proxy::HEADER_MODEL_GROUP), "gpt-4o");
        assert_eq!(a.header(proxy::HEADER_ATTEMPTS), "1");
        assert_eq!(a.header(proxy::HEADER_FALLBACKS), "");
        assert_eq!(a.header(proxy::HEADER_CACHE_HIT), "false");
        assert!(a.header(proxy::HEADER_QUEUE_WAIT_MS).parse::<f64>().is_ok());
        assert!(a.header(proxy::HEADER_OVERHEAD_MS).parse::<f64>().unwrap() >= 0.0);
    }

    for path in ["/v1/completions", "/completions"] {
        let a = send(
            &app,
            post(
                path,
                json!({"model": "gpt-4o", "prompt": "say hi"}).to_string(),
            ),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text);
        assert_eq!(a.json()["choices"][0]["text"], "hello from the mock");
    }
    for path in ["/v1/embeddings", "/embeddings"] {
        let a = send(
            &app,
            post(
                path,
                json!({"model": "embed", "input": ["a", "b"]}).to_string(),
            ),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text);
        assert_eq!(a.json()["data"].as_array().unwrap().len(), 2);
    }

    let a = send(
        &app,
        post("/v1/chat/completions", chat_body(json!({"stream": true}))),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.header("content-type"), "text/event-stream");
    assert!(a.text.starts_with("data: "), "{}", a.text);
    assert!(a.text.trim_end().ends_with("data: [DONE]"), "{}", a.text);

    for path in ["/v1/models", "/models"] {
        let a = send(&app, get(path)).await;
        assert_eq!(a.status, StatusCode::OK);
        let body = a.json();
        assert_eq!(body["object"], "list");
        let ids: Vec<&str> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec!["embed", "gpt-4o", "limited"]);
        assert_eq!(body["data"][0]["object"], "model");
    }
    assert_eq!(
        send(&app, get("/v1/models/gpt-4o")).await.json()["id"],
        "gpt-4o"
    );
    send(&app, get("/v1/models/nope"))
        .await
        .assert_error(404, "gpt-4o");

    let a = send(&app, get("/health")).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let health = a.json();
    assert_eq!(health["backend"], "memory");
    assert!(health["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d["id"] == "mock-a" && d["model_group"] == "gpt-4o" && d["healthy"] == true));
    // The entry with an unsupported provider prefix is listed, not served.
    let skipped = &health["skipped_deployments"];
    assert_eq!(skipped.as_array().map(Vec::len), Some(1), "{health}");
    assert_eq!(skipped[0]["entry"], "model_list[3]");
    assert_eq!(skipped[0]["model"], "bedrock/anthropic.claude-v2");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("`bedrock`"));

    let a = send(&app, get("/metrics")).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.header("content-type").contains("openmetrics"));
    for needle in [
        "llm_scheduler_requests_total{endpoint=\"chat_completions\",model_group=\"gpt-4o\",deployment=\"mock-a\",status=\"200\"}",
        "llm_scheduler_request_duration_seconds_bucket",
        "llm_scheduler_queue_wait_seconds_bucket",
        "llm_scheduler_upstream_latency_seconds_bucket",
        "llm_scheduler_upstream_attempts_total",
        "llm_scheduler_deployment_cooldown{",
        "llm_scheduler_backend_up 1",
        "llm_scheduler_admissions_total{path=\"fast\"}",
        "llm_scheduler_backend_errors_total{source=\"edge\"} 0",
        "# EOF",
    ] {
        assert!(a.text.contains(needle), "metrics lack {needle}:\n{}", a.text);
    }
}

#[tokio::test]
async fn health_probes_are_open_and_the_rest_needs_the_key() {
    let app = app_with(true).await;
    for path in [
        "/health/liveliness",
        "/health/liveness",
        "/health/readiness",
        "/metrics",
    ] {
        let request = Request::builder().uri(path).body(Body::empty()).unwrap();
        let a = send(&app, request).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.text);
    }
    let ready = send(
        &app,
        Request::builder()
            .uri("/health/readiness")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(ready.json()["backend"], "memory");

    let unauthenticated = |path: &str, method: Method| {
        Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(chat_body(json!({}))))
            .unwrap()
    };
    for (path, method) in [
        ("/v1/chat/completions", Method::POST),
        ("/queue/chat/completions", Method::POST),
        ("/v1/embeddings", Method::POST),
        ("/v1/models", Method::GET),
        ("/health", Method::GET),
    ] {
        let a = send(&app, unauthenticated(path, method)).await;
        a.assert_error(401, "API key");
        assert_eq!(a.json()["error"]["code"], "invalid_api_key");
    }
    for (name, value) in [
        ("authorization", "Bearer sk-in-process-test-key-43"),
        ("authorization", "Bearer "),
        ("x-api-key", "sk-in-process-test-key-4"),
    ] {
        let mut request = unauthenticated("/v1/chat/completions", Method::POST);
        request.headers_mut().insert(name, value.parse().unwrap());
        let a = send(&app, request).await;
        a.assert_error(401, "API key");
        assert!(
            !a.text.contains("sk-in-process"),
            "the key must not be echoed: {}",
            a.text
        );
    }
    let mut request = unauthenticated("/v1/chat/completions", Method::POST);
    request
        .headers_mut()
        .insert("x-api-key", KEY.parse().unwrap());
    assert_eq!(send(&app, request).await.status, StatusCode::OK);
}

#[tokio::test]
async fn without_a_master_key_the_api_is_open() {
    let app = app_with(false).await;
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        // What `curl -d` sends: the body is JSON whatever the content type says.
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(chat_body(json!({}))))
        .unwrap();
    let a = send(&app, request).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

#[tokio::test]
async fn bad_requests_are_refused_with_a_message_naming_the_problem() {
    let app = app_with(true).await;
    let messages = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/v1/chat/completions",
            "{\"model\": ".into(),
            400,
            "not valid JSON",
        ),
        ("/v1/chat/completions", String::new(), 400, "empty"),
        ("/v1/chat/completions", "[1, 2]".into(), 400, "JSON object"),
        (
            "/v1/chat/completions",
            json!({"messages": messages}).to_string(),
            400,
            "`model` is required",
        ),
        (
            "/v1/chat/completions",
            json!({"model": 7, "messages": messages}).to_string(),
            400,
            "`model`",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o"}).to_string(),
            400,
            "`messages` is required",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o", "messages": []}).to_string(),
            400,
            "`messages`",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"priority": "high"})),
            400,
            "`priority`",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"priority": 1.5})),
            400,
            "`priority`",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"priority": -1})),
            400,
            "`priority`",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"priority": 1_048_577})),
            400,
            "`priority`",
        ),
        (
            "/queue/chat/completions",
            chat_body(json!({"priority": "0"})),
            400,
            "`priority`",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"timeout": "never"})),
            400,
            "`timeout`",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"timeout": -3})),
            400,
            "`timeout`",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"stream": "yes"})),
            400,
            "`stream`",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"cache": "no"})),
            400,
            "`cache`",
        ),
        (
            "/v1/chat/completions",
            chat_body(json!({"model": "gpt-5"})),
            400,
            "gpt-4o",
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-4o"}).to_string(),
            400,
            "`prompt` is required",
        ),
        (
            "/v1/embeddings",
            json!({"model": "embed"}).to_string(),
            400,
            "`input` is required",
        ),
        (
            "/v1/embeddings",
            json!({"model": "embed", "input": 3}).to_string(),
            400,
            "`input`",
        ),
    ];
    for (path, body, status, needle) in cases {
        let a = send(&app, post(path, body.clone())).await;
        a.assert_error(status, needle);
        assert_eq!(a.json()["error"]["type"], "invalid_request_error", "{body}");
    }
    // The parameter is named in `param` too.
    let a = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(json!({"priority": "high"})),
        ),
    )
    .await;
    assert_eq!(a.json()["error"]["param"], "priority");
    let a = send(
        &app,
        post("/v1/chat/completions", chat_body(json!({"model": "gpt-5"}))),
    )
    .await;
    assert_eq!(a.json()["error"]["param"], "model");
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("embed"));
}

#[tokio::test]
async fn routes_methods_and_sizes_have_honest_statuses() {
    let app = app_with(true).await;
    send(&app, get("/v1/nothing-here"))
        .await
        .assert_error(404, "/v1/nothing-here");
    send(&app, post("/v2/chat/completions", "{}"))
        .await
        .assert_error(404, "unknown route");
    send(&app, get("/v1/chat/completions"))
        .await
        .assert_error(405, "GET");

    // max_request_size_mb: 0.01 is about 10 KiB.
    let big = chat_body(json!({"padding": "x".repeat(20_000)}));
    send(&app, post("/v1/chat/completions", big))
        .await
        .assert_error(413, "max_request_size_mb");

    // An upstream 429 keeps its status and tells the client when to come back.
    let a = send(
        &app,
        post(
            "/v1/chat/completions",
            chat_body(json!({"model": "limited"})),
        ),
    )
    .await;
    a.assert_error(429, "");
    assert!(a.header("retry-after").parse::<u64>().unwrap() >= 1);
    assert_eq!(a.json()["error"]["type"], "rate_limit_error");
}

/// `POST /v1/messages` (Anthropic's Messages API) goes through the same groups: to an `anthropic/` deployment
/// natively and to an OpenAI-compatible one translated; answers, streams and errors come back in Anthropic's
/// shapes.
#[tokio::test]
async fn anthropic_messages_are_served_through_the_groups() {
    let claude = testkit::MockUpstream::start().await.unwrap();
    let gpt = testkit::MockUpstream::start().await.unwrap();
    claude.set_reply("Bonjour from Claude");
    gpt.set_reply("Hello from GPT");
    let text = format!(
        r#"
model_list:
  - model_name: claude
    litellm_params: {{ model: anthropic/claude-test, api_base: "{}", api_key: sk-ant-upstream }}
  - model_name: gpt
    litellm_params: {{ model: openai/gpt-test, api_base: "{}", api_key: sk-upstream }}
router_settings:
  num_retries: 0
general_settings:
  master_key: {KEY}
"#,
        claude.url(),
        gpt.base_url()
    );
    let config = Config::from_yaml_str(&text).unwrap();
    let router = Router::new(config.router.clone(), Backend::Memory)
        .await
        .unwrap();
    let app = app(AppState::new(router, &config));
    let messages = |model: &str, extra: Value| {
        let mut body = json!({
            "model": model, "max_tokens": 50, "system": "Be kind.",
            "messages": [{"role": "user", "content": "hi"}], "priority": 2,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        // Anthropic SDKs send the key in `x-api-key`.
        Request::builder()
            .method(Method::POST)
            .uri("/v1/messages")
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };

    for (model, reply, upstream) in [
        ("claude", "Bonjour from Claude", &claude),
        ("gpt", "Hello from GPT", &gpt),
    ] {
        let a = send(&app, messages(model, json!({}))).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let v = a.json();
        assert_eq!(v["type"], "message", "{v}");
        assert_eq!(v["content"][0], json!({"type": "text", "text": reply}));
        assert_eq!(v["stop_reason"], "end_turn");
        assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0, "{v}");
        assert_eq!(a.header("x-llm-scheduler-model-group"), model);
        let sent = &upstream.requests()[0];
        assert!(sent.header("authorization").is_none() || model == "gpt");
        if model == "claude" {
            assert_eq!(sent.path, "/v1/messages");
            assert_eq!(sent.body["system"][0]["text"], "Be kind.", "{}", sent.body);
            assert_eq!(sent.body["max_tokens"], 50);
        } else {
            assert_eq!(sent.path, "/v1/chat/completions");
            assert_eq!(sent.body["messages"][0]["role"], "system", "{}", sent.body);
        }
        assert!(sent.body.get("priority").is_none(), "{}", sent.body);

        // Streams: Anthropic's events, text deltas joining to the reply.
        let a = send(&app, messages(model, json!({"stream": true}))).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert!(a.header("content-type").starts_with("text/event-stream"));
        let names: Vec<&str> = a
            .text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(names.first(), Some(&"message_start"), "{}", a.text);
        assert_eq!(names.last(), Some(&"message_stop"), "{}", a.text);
        assert!(names.contains(&"message_delta"), "{}", a.text);
        let text: String = a
            .text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|e| {
                e.pointer("/delta/text")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(text, reply, "{}", a.text);
    }

    // A tool call through an anthropic/ deployment comes back as a tool_use block.
    claude.set_reply("Paris");
    let a = send(
        &app,
        messages(
            "claude",
            json!({"tools": [{"name": "weather", "input_schema": {"type": "object"}}]}),
        ),
    )
    .await;
    let v = a.json();
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    assert_eq!(v["content"][0]["type"], "tool_use", "{v}");
    assert_eq!(v["content"][0]["input"], json!({"query": "Paris"}));

    // Errors in Anthropic's shape, statuses kept.
    claude.push_behavior(testkit::Behavior::rate_limited(3));
    let a = send(&app, messages("claude", json!({}))).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.text);
    assert_eq!(a.json()["type"], "error");
    assert_eq!(a.json()["error"]["type"], "rate_limit_error");
    assert_eq!(a.header("retry-after"), "3");
    let a = send(&app, messages("claude", json!({"max_tokens": null}))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
    assert!(a.text.contains("max_tokens"), "{}", a.text);
    let a = send(&app, messages("nope", json!({}))).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    assert_eq!(a.json()["error"]["type"], "invalid_request_error");
}

/// `/openapi.json` is open and every operation it lists is served (no 404 for an unknown route, no 405).
#[tokio::test]
async fn the_openapi_document_is_served_and_every_operation_in_it_exists() {
    let app = app_with(true).await;
    let open = Request::builder()
        .uri("/openapi.json")
        .body(Body::empty())
        .unwrap();
    let answer = send(&app, open).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    assert_eq!(answer.header("content-type"), "application/json");
    let doc = answer.json();
    assert_eq!(doc["info"]["version"], json!(env!("CARGO_PKG_VERSION")));
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 30, "{}", paths.len());
    for (path, ops) in paths {
        let concrete = path
            .replace("{id}", "0123456789abcdef.0")
            .replace("{model}", "gpt-4o")
            .replace("{asset}", "app.js");
        for method in ops.as_object().expect("operations").keys() {
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&concrete)
                .header(header::AUTHORIZATION, format!("Bearer {KEY}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let answer = send(&app, request).await;
            let unknown =
                answer.status == StatusCode::NOT_FOUND && answer.text.contains("unknown route");
            assert!(
                !unknown && answer.status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {} {}",
                answer.status,
                answer.text
            );
        }
    }
}
