//! LiteLLM's scheduler quick start, in Rust: one deployment answering with `mock_response` at `rpm: 1`,
//! `timeout: 2`, `polling_interval: 0.03`, and calls with `priority: 0`.
//!
//! LiteLLM:
//!
//! ```python
//! router = Router(model_list=[{"model_name": "gpt-3.5-turbo", "litellm_params": {
//!     "model": "gpt-3.5-turbo", "mock_response": "Hello world this is Macintosh!", "rpm": 1}}],
//!     timeout=2, polling_interval=0.03)
//! response = await router.schedule_acompletion(model="gpt-3.5-turbo",
//!     messages=[{"role": "user", "content": "Hey!"}], priority=0)
//! ```
//!
//! Here `Router::completion` is `schedule_acompletion` and `acompletion` at once: every request goes through
//! the priority queue when capacity is short, and the body's `priority` (0 is the most urgent) orders it.
//! The second call finds the minute's one request used; it would wait past its 2 s `timeout`, so it is
//! refused at once with a 429 that says when capacity returns (LiteLLM waits the 2 s, then raises).
//!
//! `cargo run -p router --example quick_start`

use router::{Backend, Endpoint, ResponseBody, Router, RouterConfig, RouterError, RouterRequest};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), RouterError> {
    for line in run().await? {
        println!("{line}");
    }
    Ok(())
}

/// The quick start: what each of the two calls got, one line each.
pub async fn run() -> Result<Vec<String>, RouterError> {
    let config = RouterConfig::from_json(json!({
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
    let router = Router::new(config, Backend::Memory).await?;
    let mut lines = Vec::new();
    for call in 1..=2 {
        let body = json!({
            "model": "gpt-3.5-turbo",
            "messages": [{"role": "user", "content": "Hey!"}],
            "priority": 0,
        });
        let request = RouterRequest::from_json(Endpoint::ChatCompletions, body)?;
        match router.completion(request).await {
            Ok(response) => {
                let text = match &response.body {
                    ResponseBody::Json(v) => v["choices"][0]["message"]["content"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    ResponseBody::Stream(_) => String::new(),
                };
                lines.push(format!(
                    "call {call}: 200 from {} after {:?} in the queue: {text}",
                    response.meta.deployment_id, response.meta.queue_wait
                ));
            }
            Err(e) => lines.push(format!("call {call}: {} {e}", e.status_code())),
        }
    }
    router.shutdown().await;
    Ok(lines)
}
