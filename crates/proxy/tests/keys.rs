//! Virtual keys in-process (`app(state)` through `oneshot`), each test run on the memory backend and on Redis:
//! management by the master key only, validation naming the field, auth of virtual keys, model access,
//! priority floor, budget, expiry, and no secret in Redis or in error bodies.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt;
use proxy::{app, AppState, Config};
use router::Router;
use serde_json::{json, Value};
use testkit::RedisServer;
use tower::ServiceExt;

const MASTER: &str = "sk-in-process-master-key-7";

struct Harness {
    app: axum::Router,
    redis: Option<RedisServer>,
}

async fn harness(redis: bool) -> Harness {
    let server = if redis {
        Some(RedisServer::start().await.expect("redis-server"))
    } else {
        None
    };
    let backend = server.as_ref().map_or(String::new(), |s| {
        format!(
            "  redis_url: {}\n  key_prefix: \"{}\"\n",
            s.url(),
            s.prefix()
        )
    });
    let text = format!(
        r#"
model_list:
  - model_name: gpt-4o
    litellm_params: {{ model: openai/gpt-4o, mock_response: "hello from the mock" }}
    model_info: {{ id: mock-a, input_cost_per_token: 0.001, output_cost_per_token: 0.002 }}
  - model_name: other
    litellm_params: {{ model: openai/other, mock_response: "other" }}
router_settings:
  num_retries: 0
{backend}general_settings:
  master_key: {MASTER}
"#
    );
    let config = Config::from_yaml_str(&text).unwrap();
    let router = Router::new(config.router.clone(), config.backend.backend.clone())
        .await
        .unwrap();
    Harness {
        app: app(AppState::new(router, &config)),
        redis: server,
    }
}

struct Answer {
    status: StatusCode,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// An OpenAI-shaped error with `status` and `type`, naming `param`.
    fn assert_error(&self, status: u16, error_type: &str, param: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "{}", self.text);
        let error = &self.json()["error"];
        for field in ["message", "type", "param", "code"] {
            assert!(
                error.get(field).is_some(),
                "missing error.{field}: {}",
                self.text
            );
        }
        assert_eq!(error["type"], error_type, "{}", self.text);
        if let Some(param) = param {
            assert_eq!(error["param"], param, "{}", self.text);
        }
    }
}

impl Harness {
    async fn call(&self, method: Method, path: &str, key: &str, body: Option<Value>) -> Answer {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {key}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn generate(&self, body: Value) -> (String, String) {
        let a = self
            .call(Method::POST, "/key/generate", MASTER, Some(body))
            .await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        let v = a.json();
        (
            v["key"].as_str().unwrap().to_owned(),
            v["token"].as_str().unwrap().to_owned(),
        )
    }

    async fn chat(&self, key: &str, extra: Value) -> Answer {
        let mut body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        self.call(Method::POST, "/v1/chat/completions", key, Some(body))
            .await
    }
}

async fn management_is_for_the_master_key(h: Harness) {
    let a = h
        .call(
            Method::POST,
            "/key/generate",
            MASTER,
            Some(
                json!({"key_alias": "app-1", "duration": "30d", "models": ["gpt-4o"],
                        "rpm_limit": 100, "team_id": "t-1", "user_id": "u-1"}),
            ),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let v = a.json();
    let secret = v["key"].as_str().unwrap().to_owned();
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sk-") && token.len() == 64 && !token.contains(&secret));
    assert_eq!(v["key_alias"], "app-1");
    assert!(v["expires"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v["ignored_fields"], json!(["team_id", "user_id"]));

    // The key works, sees only its models, and reads its own info (never the secret).
    assert_eq!(h.chat(&secret, json!({})).await.status, StatusCode::OK);
    let models = h
        .call(Method::GET, "/v1/models", &secret, None)
        .await
        .json();
    assert_eq!(models["data"].as_array().unwrap().len(), 1, "{models}");
    let own = h.call(Method::GET, "/key/info", &secret, None).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.text);
    assert_eq!(own.json()["info"]["token"], token.as_str());
    assert_eq!(own.json()["info"]["usage"]["rpm_used"], 1);
    assert!(!own.text.contains(&secret));
    let by_master = h
        .call(Method::GET, &format!("/key/info?key={token}"), MASTER, None)
        .await;
    assert_eq!(by_master.json()["info"]["key_alias"], "app-1");

    // Every management call by a non-master key: 403; by nobody: 401.
    let (other, other_token) = h.generate(json!({})).await;
    for (method, path, body) in [
        (Method::POST, "/key/generate", Some(json!({}))),
        (
            Method::POST,
            "/key/update",
            Some(json!({"key": token, "rpm_limit": 1})),
        ),
        (Method::POST, "/key/delete", Some(json!({"keys": [token]}))),
        (Method::GET, "/key/list", None),
        (Method::GET, &format!("/key/info?key={token}") as &str, None),
    ] {
        let a = h.call(method.clone(), path, &other, body.clone()).await;
        a.assert_error(403, "permission_error", None);
        let a = h.call(method, path, "sk-nobody-knows-this-one", body).await;
        a.assert_error(401, "invalid_request_error", None);
        assert!(!a.text.contains("sk-nobody-knows-this-one"), "{}", a.text);
    }

    // Update and list.
    let a = h
        .call(
            Method::POST,
            "/key/update",
            MASTER,
            Some(json!({"key": secret, "models": null, "key_alias": "app-2"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["key_alias"], "app-2");
    let listed = h.call(Method::GET, "/key/list", MASTER, None).await.json();
    let mut tokens: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    tokens.sort_unstable();
    let mut expected = vec![token.as_str(), other_token.as_str()];
    expected.sort_unstable();
    assert_eq!(tokens, expected);
    assert_eq!(listed["total_count"], 2);

    // Delete: refused at once on this replica.
    let a = h
        .call(
            Method::POST,
            "/key/delete",
            MASTER,
            Some(json!({"keys": [secret]})),
        )
        .await;
    assert_eq!(a.json()["deleted_keys"], json!([token]));
    h.chat(&secret, json!({}))
        .await
        .assert_error(401, "invalid_request_error", None);

    if let Some(redis) = &h.redis {
        let text = redis.dump_text().await.unwrap();
        assert!(text.contains(&other_token), "{text}");
        for secret in [&secret, &other] {
            assert!(
                !text.contains(&secret[3..]),
                "a secret is in Redis:\n{text}"
            );
        }
    }
}

async fn bad_bodies_name_the_field(h: Harness) {
    for (body, field) in [
        (json!({"duration": "30x"}), "duration"),
        (json!({"rpm_limit": -5}), "rpm_limit"),
        (json!({"tpm_limit": "lots"}), "tpm_limit"),
        (
            json!({"max_parallel_requests": -1}),
            "max_parallel_requests",
        ),
        (json!({"max_budget": "free"}), "max_budget"),
        (json!({"models": ["no-such-model"]}), "models"),
        (json!({"metadata": "x"}), "metadata"),
        (json!({"priority_floor": -1}), "priority_floor"),
        (
            json!({"priority_floor": 50, "default_priority": 10}),
            "default_priority",
        ),
        (json!({"budget_duration": {"days": 1}}), "budget_duration"),
    ] {
        let a = h
            .call(Method::POST, "/key/generate", MASTER, Some(body.clone()))
            .await;
        a.assert_error(400, "invalid_request_error", Some(field));
    }
    let a = h
        .call(Method::POST, "/key/generate", MASTER, Some(json!([1])))
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.text);
    let a = h
        .call(
            Method::POST,
            "/key/update",
            MASTER,
            Some(json!({"rpm_limit": 3})),
        )
        .await;
    a.assert_error(400, "invalid_request_error", Some("key"));
    let a = h
        .call(
            Method::POST,
            "/key/delete",
            MASTER,
            Some(json!({"keys": "sk-x"})),
        )
        .await;
    a.assert_error(400, "invalid_request_error", Some("keys"));
    let a = h
        .call(
            Method::POST,
            "/key/update",
            MASTER,
            Some(json!({"key": "sk-not-a-key-at-all", "rpm_limit": 3})),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);
}

async fn models_and_priorities_follow_the_key(h: Harness) {
    let (key, _) = h
        .generate(json!({"models": ["gpt-4o"], "priority_floor": 50}))
        .await;
    let a = h
        .call(
            Method::POST,
            "/v1/chat/completions",
            &key,
            Some(json!({"model": "other", "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    a.assert_error(403, "key_model_access_denied", Some("model"));
    let a = h.call(Method::GET, "/v1/models/other", &key, None).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.text);

    h.chat(&key, json!({"priority": 0})).await.assert_error(
        403,
        "permission_error",
        Some("priority"),
    );
    h.chat(&key, json!({"priority": 49})).await.assert_error(
        403,
        "permission_error",
        Some("priority"),
    );
    for priority in [json!(50), json!(100), Value::Null] {
        let a = h.chat(&key, json!({"priority": priority})).await;
        assert_eq!(a.status, StatusCode::OK, "{priority}: {}", a.text);
    }
}

async fn a_spent_budget_refuses(h: Harness) {
    // The mock answers with a few prompt and completion tokens at 0.001 / 0.002 USD each.
    let (key, token) = h
        .generate(json!({"max_budget": 0.001, "key_alias": "tiny"}))
        .await;
    assert_eq!(h.chat(&key, json!({})).await.status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let refused = loop {
        let a = h.chat(&key, json!({})).await;
        if a.status != StatusCode::OK {
            break a;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still served after its budget"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    refused.assert_error(429, "budget_exceeded", None);
    let info = h
        .call(Method::GET, &format!("/key/info?key={token}"), MASTER, None)
        .await
        .json();
    assert!(info["info"]["spend"].as_f64().unwrap() >= 0.001, "{info}");
    let metrics = h.call(Method::GET, "/metrics", MASTER, None).await.text;
    assert!(
        metrics.contains("llm_scheduler_key_spend_usd_total{key_alias=\"tiny\"}"),
        "{metrics}"
    );
}

async fn an_expired_key_is_refused(h: Harness) {
    let (key, _) = h.generate(json!({"duration": "1s"})).await;
    assert_eq!(h.chat(&key, json!({})).await.status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let a = h.chat(&key, json!({})).await;
        if a.status == StatusCode::UNAUTHORIZED {
            a.assert_error(401, "expired_key", None);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "served after it expired: {}",
            a.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_key_over_its_rpm_gets_429_at_once(h: Harness) {
    let (key, _) = h.generate(json!({"rpm_limit": 2})).await;
    for _ in 0..2 {
        assert_eq!(h.chat(&key, json!({})).await.status, StatusCode::OK);
    }
    let request = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        ))
        .unwrap();
    let response = h.app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let after: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&after), "{after}");
    // Another key is not affected.
    let (other, _) = h.generate(json!({})).await;
    assert_eq!(h.chat(&other, json!({})).await.status, StatusCode::OK);
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::$name(super::harness(false).await).await;
            }

            #[tokio::test]
            async fn redis() {
                super::$name(super::harness(true).await).await;
            }
        }
    };
}

both!(management_is_for_the_master_key);
both!(bad_bodies_name_the_field);
both!(models_and_priorities_follow_the_key);
both!(a_spent_budget_refuses);
both!(an_expired_key_is_refused);
both!(a_key_over_its_rpm_gets_429_at_once);

async fn a_keys_own_deployments_serve_it_alone(h: Harness) {
    let upstream = testkit::MockUpstream::start().await.unwrap();
    let literal = "sk-upstream-literal-0123456789";
    let config = json!({"model_list": [{
        "model_name": "private",
        "litellm_params": {"model": "openai/private", "api_base": upstream.base_url(), "api_key": literal},
        "model_info": {"id": "private-1", "input_cost_per_token": 0.5},
    }]});
    // A literal upstream key is refused without a salt key, and a group of the proxy cannot be merged into.
    std::env::remove_var("LITELLM_SALT_KEY");
    let a = h
        .call(
            Method::POST,
            "/key/generate",
            MASTER,
            Some(json!({"config": config})),
        )
        .await;
    a.assert_error(400, "invalid_request_error", Some("config"));
    assert!(a.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("LITELLM_SALT_KEY"));
    assert!(!a.text.contains(literal));
    std::env::set_var("LITELLM_SALT_KEY", "salt-of-this-test-0001");
    let shadow = json!({"model_list": [{"model_name": "gpt-4o", "litellm_params": {"model": "openai/x", "mock_response": "x"}}]});
    let a = h
        .call(
            Method::POST,
            "/key/generate",
            MASTER,
            Some(json!({"config": shadow})),
        )
        .await;
    a.assert_error(400, "invalid_request_error", Some("config"));

    let (own, token) = h
        .generate(json!({"config": config, "key_alias": "owner"}))
        .await;
    let (other, _) = h.generate(json!({})).await;
    let ask = |key: String| {
        let h = &h;
        async move {
            h.call(
                Method::POST,
                "/v1/chat/completions",
                &key,
                Some(json!({"model": "private", "messages": [{"role": "user", "content": "hi"}]})),
            )
            .await
        }
    };
    let a = ask(own.clone()).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(upstream.request_count(), 1);
    let sent = upstream.requests();
    assert_eq!(
        sent[0].header("authorization"),
        Some(&format!("Bearer {literal}") as &str)
    );

    // Invisible to the master key and to other keys.
    for key in [MASTER, other.as_str()] {
        let models = h.call(Method::GET, "/v1/models", key, None).await.text;
        assert!(!models.contains("private"), "{models}");
        assert_eq!(ask(key.to_owned()).await.status, StatusCode::BAD_REQUEST);
    }
    let models = h.call(Method::GET, "/v1/models", &own, None).await.text;
    assert!(
        models.contains("private") && models.contains("gpt-4o"),
        "{models}"
    );
    assert_eq!(upstream.request_count(), 1);

    // Spend from the key's deployment's price; the literal is nowhere in Redis or the info.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let info = h
            .call(Method::GET, &format!("/key/info?key={token}"), MASTER, None)
            .await;
        assert!(!info.text.contains(literal));
        if info.json()["info"]["spend"].as_f64().unwrap() > 0.0 {
            assert_eq!(info.json()["info"]["config_models"], json!(["private"]));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no spend: {}",
            info.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(redis) = &h.redis {
        let text = redis.dump_text().await.unwrap();
        assert!(
            text.contains("enc:v1:") && !text.contains(literal),
            "{text}"
        );
    }
}

/// One test for both backends: it sets `LITELLM_SALT_KEY`, which `cargo test` threads would share.
#[tokio::test]
async fn a_keys_own_deployments_serve_it_alone_on_both_backends() {
    a_keys_own_deployments_serve_it_alone(harness(false).await).await;
    a_keys_own_deployments_serve_it_alone(harness(true).await).await;
}
