//! Routing strategies, tiers and pre-call checks, end to end against the mock upstream.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::ensure;
use common::{chat, chat_with, models_seen, openai, router};
use router::Backend;
use serde_json::json;
use testkit::{Behavior, MockUpstream};

/// usage-based-routing: each request goes to the deployment with the lowest TPM in the window, so equal
/// requests rotate over the deployments.
async fn usage_based_picks_lowest_tpm(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let cfg = json!({
        "model_list": [
            openai("g", "a", &up, json!({"tpm": 100000})),
            openai("g", "b", &up, json!({"tpm": 100000})),
            openai("g", "c", &up, json!({"tpm": 100000})),
        ],
        "router_settings": {"routing_strategy": "usage-based-routing-v2"},
    });
    let r = router(cfg, backend).await?;
    for round in 0..2 {
        for _ in 0..3 {
            r.completion(chat("g")).await?;
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for m in models_seen(&up) {
            *counts.entry(m).or_default() += 1;
        }
        ensure!(counts.len() == 3, "round {round}: {counts:?}");
        ensure!(
            counts.values().all(|&c| c == round + 1),
            "round {round}: {counts:?}"
        );
    }
    Ok(())
}

/// `order`: the lower tier takes requests while it has capacity, then the next tier.
async fn lower_order_first_while_it_has_capacity(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let cfg = json!({
        "model_list": [
            openai("g", "second", &up, json!({"order": 2})),
            openai("g", "first", &up, json!({"order": 1, "rpm": 2})),
        ],
        "router_settings": {"usage_window": 30},
    });
    let r = router(cfg, backend).await?;
    let mut served = Vec::new();
    for _ in 0..4 {
        served.push(r.completion(chat("g")).await?.meta.deployment_id);
    }
    let seen = models_seen(&up);
    ensure!(seen == ["first", "first", "second", "second"], "{seen:?}");
    ensure!(
        served[0] == served[1] && served[1] != served[2],
        "{served:?}"
    );
    Ok(())
}

/// latency-based-routing prefers the deployment with the lower latency per token once both have samples.
async fn latency_based_prefers_the_faster_deployment(backend: Backend) -> anyhow::Result<()> {
    let fast = MockUpstream::start().await?;
    let slow = MockUpstream::start().await?;
    slow.set_behavior(Behavior::ok().with_latency(Duration::from_millis(150)));
    let cfg = json!({
        "model_list": [openai("g", "fast", &fast, json!({})), openai("g", "slow", &slow, json!({}))],
        "router_settings": {"routing_strategy": "latency-based-routing", "routing_strategy_args": {"ttl": 0.001}},
    });
    let r = router(cfg, backend).await?;
    // Deployments without samples are explored first, so both get measured.
    for _ in 0..2 {
        r.completion(chat("g")).await?;
        common::wait_in_flight(&r, 0).await?;
    }
    ensure!(fast.request_count() == 1 && slow.request_count() == 1);
    for _ in 0..5 {
        r.completion(chat("g")).await?;
        common::wait_in_flight(&r, 0).await?;
    }
    ensure!(
        fast.request_count() == 6 && slow.request_count() == 1,
        "fast {} slow {}",
        fast.request_count(),
        slow.request_count()
    );
    Ok(())
}

/// Pre-call checks skip deployments whose max_input_tokens the prompt exceeds; when none fits, the request
/// goes to the context-window fallback.
async fn pre_call_checks_skip_small_context_windows(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let mut small = openai("g", "small", &up, json!({"order": 1}));
    small["model_info"] = json!({"max_input_tokens": 50});
    let mut big = openai("g", "big", &up, json!({"order": 2}));
    big["model_info"] = json!({"max_input_tokens": 100000});
    let mut tiny = openai("tiny", "tiny", &up, json!({}));
    tiny["model_info"] = json!({"max_input_tokens": 10});
    let cfg = json!({
        "model_list": [small, big, tiny],
        "router_settings": {"enable_pre_call_checks": true, "context_window_fallbacks": [{"tiny": ["g"]}]},
    });
    let r = router(cfg, backend).await?;
    r.completion(chat("g")).await?;
    let long = "word ".repeat(400);
    r.completion(chat_with(
        "g",
        json!({"messages": [{"role": "user", "content": long}]}),
    ))
    .await?;
    ensure!(
        models_seen(&up) == ["small", "big"],
        "{:?}",
        models_seen(&up)
    );

    let resp = r
        .completion(chat_with(
            "tiny",
            json!({"messages": [{"role": "user", "content": long}]}),
        ))
        .await?;
    ensure!(resp.meta.fallbacks == ["g"], "{:?}", resp.meta);
    ensure!(models_seen(&up).last().map(String::as_str) == Some("big"));
    Ok(())
}

on_both_backends!(
    usage_based_picks_lowest_tpm,
    lower_order_first_while_it_has_capacity,
    latency_based_prefers_the_faster_deployment,
    pre_call_checks_skip_small_context_windows,
);

/// least-busy counts requests in flight across replicas: while one router holds a request on a deployment,
/// another router on the same Redis sends its requests to the other deployment.
#[tokio::test]
async fn least_busy_sees_in_flight_of_another_router() -> anyhow::Result<()> {
    let redis = testkit::RedisServer::start().await?;
    let up = MockUpstream::start().await?;
    let cfg = json!({
        "model_list": [openai("g", "a", &up, json!({})), openai("g", "b", &up, json!({}))],
        "router_settings": {"routing_strategy": "least-busy", "num_retries": 0},
    });
    let r1 = router(cfg.clone(), common::redis_backend(&redis)).await?;
    let r2 = router(cfg, common::redis_backend(&redis)).await?;
    up.push_behavior(Behavior::hang());
    let held =
        tokio::spawn(async move { r1.completion(chat("g")).await.map(|r| r.meta.deployment_id) });
    ensure!(up.wait_for_requests(1, Duration::from_secs(5)).await);
    let busy = models_seen(&up)[0].clone();
    for _ in 0..6 {
        r2.completion(chat("g")).await?;
        common::wait_in_flight(&r2, 1).await?;
    }
    let seen = models_seen(&up);
    ensure!(
        seen[1..].iter().all(|m| *m != busy),
        "busy {busy}, then {seen:?}"
    );
    held.abort();
    Ok(())
}
