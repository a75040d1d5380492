//! Helpers shared by the router's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use router::{Backend, Endpoint, ResponseBody, Router, RouterConfig, RouterRequest};
use serde_json::{json, Value};
use store::RedisConfig;
use testkit::{MockUpstream, RedisServer};

/// Runs each named `async fn(Backend) -> anyhow::Result<()>` against the memory backend, against Redis (a
/// fresh redis-server, or a prefix of its own on `TEST_REDIS_URL`) and against the test binary's Redis
/// Cluster (a prefix of its own).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(router::Backend::Memory).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    let server = testkit::RedisServer::start().await?;
                    super::$name($crate::common::redis_backend(&server)).await
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name($crate::common::cluster_backend().await?).await
                }
            )*
        }
    };
}

/// The Redis backend on `server` (short timeouts, the test's own prefix).
pub fn redis_backend(server: &RedisServer) -> Backend {
    Backend::Redis(RedisConfig {
        url: server.url(),
        pool_size: 8,
        command_timeout: Duration::from_secs(2),
        key_prefix: server.prefix().to_owned(),
        ..RedisConfig::default()
    })
}

/// The Redis backend on the test binary's shared Redis Cluster, under a fresh prefix.
pub async fn cluster_backend() -> anyhow::Result<Backend> {
    let cluster = testkit::RedisCluster::shared().await?;
    let nodes = cluster.node_urls();
    Ok(Backend::Redis(RedisConfig {
        url: nodes[0].clone(),
        pool_size: 8,
        command_timeout: Duration::from_secs(2),
        key_prefix: testkit::RedisCluster::fresh_prefix(),
        topology: store::RedisTopology::Cluster { nodes },
        ..RedisConfig::default()
    }))
}

/// A router from a `config.yaml`-shaped JSON value.
pub async fn router(config: Value, backend: Backend) -> anyhow::Result<Router> {
    Ok(Router::new(RouterConfig::from_json(config)?, backend).await?)
}

/// A `model_list` entry for an OpenAI-compatible deployment on `upstream`, serving `model` upstream.
pub fn openai(group: &str, model: &str, upstream: &MockUpstream, extra: Value) -> Value {
    let mut params = json!({"model": format!("openai/{model}"), "api_base": upstream.base_url(), "api_key": "sk-test"});
    if let (Some(p), Value::Object(e)) = (params.as_object_mut(), extra) {
        p.extend(e);
    }
    json!({"model_name": group, "litellm_params": params})
}

/// A chat request for `model`.
pub fn chat(model: &str) -> RouterRequest {
    chat_with(model, json!({}))
}

/// A chat request for `model` with extra body fields.
pub fn chat_with(model: &str, extra: Value) -> RouterRequest {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}]});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    match RouterRequest::from_json(Endpoint::ChatCompletions, body) {
        Ok(r) => r,
        Err(e) => panic!("bad test request: {e}"),
    }
}

/// [`chat_with`] from a caller allowed to override routing (`mock_response`, `fallbacks`, ...).
pub fn chat_overriding(model: &str, extra: Value) -> RouterRequest {
    let mut request = chat_with(model, extra);
    request.overrides_allowed = true;
    request
}

/// The JSON body of a response (panics on a stream).
pub fn json_body(body: ResponseBody) -> Value {
    match body {
        ResponseBody::Json(v) => v,
        ResponseBody::Stream(_) => panic!("expected JSON, got a stream"),
    }
}

/// The `model` field of every request `upstream` received.
pub fn models_seen(upstream: &MockUpstream) -> Vec<String> {
    upstream
        .requests()
        .iter()
        .map(|r| {
            r.body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// Waits (bounded) until `n` requests are in flight over all deployments: answered requests settle in the
/// background, so a test that depends on the previous request's settle waits for it here.
pub async fn wait_in_flight(router: &Router, n: u64) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let in_flight: u64 = router.health().await?.iter().map(|h| h.in_flight).sum();
        if in_flight == n {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{in_flight} requests still in flight, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The success and failure counts of a deployment's health are per fixed window (a minute by default), so a
/// count made just before a window boundary reads 0 just after it. A test that reads one back notes when it
/// started (`WindowWatch::start`) and asks whether the window could have rolled since (`rolled`): the
/// router's stores use this machine's clock.
pub struct WindowWatch {
    window: u128,
    started: u128,
}

impl WindowWatch {
    /// Watches windows of the default length (60 s).
    pub fn start() -> WindowWatch {
        WindowWatch {
            window: 60_000,
            started: epoch_ms(),
        }
    }

    /// Whether a window boundary may have passed since `start`.
    pub fn rolled(&self) -> bool {
        epoch_ms() / self.window != self.started / self.window
    }
}

fn epoch_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}
