//! In-flight leases: renewed while a request runs, so a slot is never handed out twice.

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::{chat_with, openai, router};
use router::Backend;
use serde_json::json;
use testkit::{Behavior, MockUpstream};

/// A request that runs for several in-flight leases keeps its `max_parallel_requests` slot: the next
/// request waits for it instead of overlapping it.
async fn running_requests_keep_their_slot(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    up.push_behavior(Behavior::ok().with_latency(Duration::from_millis(2000)));
    let cfg = json!({
        "model_list": [openai("g", "a", &up, json!({"max_parallel_requests": 1}))],
        "router_settings": {"inflight_lease": 0.4, "polling_interval": 0.02},
    });
    let r = router(cfg, backend).await?;
    let long = tokio::spawn({
        let r = r.clone();
        async move { r.completion(chat_with("g", json!({"user": "long"}))).await }
    });
    ensure!(up.wait_for_in_flight(1, Duration::from_secs(5)).await);
    let next = r
        .completion(chat_with("g", json!({"user": "next", "timeout": 10})))
        .await?;
    ensure!(
        next.meta.queue_wait > Duration::from_millis(1000),
        "{:?}",
        next.meta
    );
    long.await??;
    ensure!(up.peak_in_flight() == 1, "peak {}", up.peak_in_flight());
    Ok(())
}

on_both_backends!(running_requests_keep_their_slot);
