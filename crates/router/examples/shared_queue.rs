//! The quick start with Redis settings, so several processes share one queue and one `rpm` limit: LiteLLM's
//! `Router(..., redis_host=..., redis_port=..., redis_password=...)`.
//!
//! Start it in two terminals against the same Redis; between them the deployment still answers one request
//! per minute, and the waiting requests of both are admitted in one priority order:
//!
//! ```sh
//! REDIS_HOST=127.0.0.1 REDIS_PORT=6379 cargo run -p router --example shared_queue
//! ```
//!
//! `REDIS_PASSWORD` is read too; `REDIS_URL` (`redis://[:password@]host:port/`) replaces the three.

use router::{
    BackendChoice, Endpoint, Router, RouterConfig, RouterError, RouterRequest, RouterSettings,
    Secret,
};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), RouterError> {
    let settings = RouterSettings {
        redis_host: std::env::var("REDIS_HOST").ok(),
        redis_port: std::env::var("REDIS_PORT")
            .ok()
            .and_then(|p| p.parse().ok()),
        redis_password: std::env::var("REDIS_PASSWORD").ok().map(Secret::new),
        ..RouterSettings::default()
    };
    let status = run(settings, |name| std::env::var(name).ok()).await?;
    println!("this process's call: {status}");
    Ok(())
}

/// One call with `priority: 0` through a router whose backend `redis` settings name (with `env` for
/// `REDIS_URL`); the HTTP-like status it got: 200, or 429 when another process took the minute's request.
pub async fn run(
    redis: RouterSettings,
    env: impl Fn(&str) -> Option<String>,
) -> Result<u16, RouterError> {
    let backend = BackendChoice::from_settings(&redis, env)?;
    if !backend.is_redis() {
        return Err(RouterError::BadRequest {
            message: "set REDIS_HOST (and REDIS_PORT, REDIS_PASSWORD) or REDIS_URL".into(),
            param: None,
        });
    }
    let mut config = RouterConfig::from_json(json!({
        "model_list": [{
            "model_name": "gpt-3.5-turbo",
            "litellm_params": {
                "model": "gpt-3.5-turbo",
                "mock_response": "Hello world this is Macintosh!",
                "rpm": 1,
            },
        }],
        "router_settings": {"timeout": 2, "polling_interval": 0.03},
    }))?;
    config.settings.key_prefix = redis.key_prefix;
    let router = Router::new(config, backend.backend).await?;
    let body = json!({
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "Hey!"}],
        "priority": 0,
    });
    let status = match router
        .completion(RouterRequest::from_json(Endpoint::ChatCompletions, body)?)
        .await
    {
        Ok(_) => 200,
        Err(e) if e.status_code() == 429 || e.status_code() == 408 => e.status_code(),
        Err(e) => return Err(e),
    };
    router.shutdown().await;
    Ok(status)
}
