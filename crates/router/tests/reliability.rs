//! Retries, fallbacks, cooldowns and timeouts against the mock upstream.

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::{chat, models_seen, openai, router, WindowWatch};
use router::{Backend, RouterError, UpstreamErrorKind};
use serde_json::json;
use testkit::{Behavior, MockUpstream};
use tokio::time::Instant;

/// A 500 then a 200 on a single deployment: 200 after one retry.
async fn retries_a_server_error(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let r = router(
        json!({"model_list": [openai("g", "m", &up, json!({}))]}),
        backend,
    )
    .await?;
    up.push_behavior(Behavior::internal_error());
    let resp = r.completion(chat("g")).await?;
    ensure!(resp.meta.attempts == 2, "{:?}", resp.meta);
    ensure!(up.request_count() == 2);
    ensure!(r.metrics().snapshot().retries == 1);
    Ok(())
}

/// A 401 is not retried.
async fn does_not_retry_auth_errors(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let r = router(
        json!({"model_list": [openai("g", "m", &up, json!({}))]}),
        backend,
    )
    .await?;
    up.push_behavior(Behavior::unauthorized());
    let err = r
        .completion(chat("g"))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("expected an error"))?;
    ensure!(err.status_code() == 401, "{err}");
    ensure!(up.request_count() == 1);
    Ok(())
}

/// A 429 with Retry-After: 1 on the only deployment waits about a second, then succeeds.
async fn honours_retry_after_on_a_single_deployment(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let r = router(
        json!({"model_list": [openai("g", "m", &up, json!({}))]}),
        backend,
    )
    .await?;
    up.push_behavior(Behavior::rate_limited(1));
    let started = Instant::now();
    let resp = r.completion(chat("g")).await?;
    let waited = started.elapsed();
    ensure!(waited >= Duration::from_millis(900), "{waited:?}");
    ensure!(resp.meta.attempts == 2);
    Ok(())
}

/// A 429 on one deployment switches to a healthy second deployment at once (and cools the first).
async fn switches_to_a_healthy_deployment_at_once(backend: Backend) -> anyhow::Result<()> {
    let limited = MockUpstream::start().await?;
    let healthy = MockUpstream::start().await?;
    limited.set_behavior(Behavior::rate_limited(1));
    let cfg = json!({"model_list": [
        openai("g", "limited", &limited, json!({"order": 1})),
        openai("g", "healthy", &healthy, json!({"order": 2})),
    ]});
    let r = router(cfg, backend).await?;
    let started = Instant::now();
    let resp = r.completion(chat("g")).await?;
    ensure!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    ensure!(
        resp.meta.attempts == 2 && limited.request_count() == 1 && healthy.request_count() == 1
    );
    // The 429 cooled the first deployment (for its Retry-After): the next request skips it.
    let resp = r.completion(chat("g")).await?;
    ensure!(
        resp.meta.attempts == 1 && limited.request_count() == 1,
        "{:?}",
        resp.meta
    );
    Ok(())
}

/// A failing group falls back to the named group after its retries.
async fn falls_back_to_the_named_group(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let broken = MockUpstream::start().await?;
    broken.set_behavior(Behavior::internal_error());
    let cfg = json!({
        "model_list": [openai("primary", "p", &broken, json!({})), openai("secondary", "s", &up, json!({}))],
        "router_settings": {"num_retries": 1, "fallbacks": [{"primary": ["secondary"]}]},
    });
    let r = router(cfg, backend).await?;
    let resp = r.completion(chat("primary")).await?;
    ensure!(
        resp.meta.model_group == "secondary" && resp.meta.fallbacks == ["secondary"],
        "{:?}",
        resp.meta
    );
    ensure!(
        resp.meta.attempts == 3 && broken.request_count() == 2,
        "{:?}",
        resp.meta
    );
    Ok(())
}

/// A context-window error goes to the context-window fallback, not the general one.
async fn context_window_errors_use_their_fallbacks(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    let cfg = json!({
        "model_list": [
            openai("small", "small", &up, json!({})),
            openai("general", "general", &up, json!({})),
            openai("large", "large", &up, json!({})),
        ],
        "router_settings": {
            "fallbacks": [{"small": ["general"]}],
            "context_window_fallbacks": [{"small": ["large"]}],
        },
    });
    let r = router(cfg, backend).await?;
    up.push_behavior(Behavior::context_length_exceeded());
    let resp = r.completion(chat("small")).await?;
    ensure!(resp.meta.model_group == "large", "{:?}", resp.meta);
    ensure!(
        models_seen(&up) == ["small", "large"],
        "{:?}",
        models_seen(&up)
    );
    Ok(())
}

/// max_fallbacks bounds the chain g1 -> g2 -> g3 -> g4; the error is the first group's.
async fn max_fallbacks_bounds_the_chain(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    up.set_behavior(Behavior::service_unavailable());
    let list: Vec<_> = ["g1", "g2", "g3", "g4"]
        .iter()
        .map(|g| openai(g, g, &up, json!({})))
        .collect();
    let cfg = json!({
        "model_list": list,
        "router_settings": {
            "num_retries": 0,
            "max_fallbacks": 2,
            "fallbacks": [{"g1": ["g2"]}, {"g2": ["g3"]}, {"g3": ["g4"]}],
        },
    });
    let r = router(cfg, backend).await?;
    let err = r
        .completion(chat("g1"))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("expected an error"))?;
    ensure!(err.status_code() == 503, "{err}");
    ensure!(
        models_seen(&up) == ["g1", "g2", "g3"],
        "{:?}",
        models_seen(&up)
    );
    ensure!(r.metrics().snapshot().fallbacks == 2);
    Ok(())
}

/// A hanging upstream fails at the deployment's timeout; the failure is counted and the deployment cooled.
async fn times_out_and_marks_the_deployment(backend: Backend) -> anyhow::Result<()> {
    let hanging = MockUpstream::start().await?;
    let healthy = MockUpstream::start().await?;
    hanging.set_behavior(Behavior::hang());
    let cfg = json!({
        "model_list": [
            openai("g", "hanging", &hanging, json!({"order": 1, "timeout": 0.3})),
            openai("g", "healthy", &healthy, json!({"order": 2})),
        ],
        "router_settings": {"num_retries": 0, "allowed_fails": 0, "cooldown_time": 30},
    });
    let r = router(cfg, backend).await?;
    let watch = WindowWatch::start();
    let started = Instant::now();
    let err = r
        .completion(chat("g"))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("expected a timeout"))?;
    let took = started.elapsed();
    ensure!(
        err.upstream_kind() == Some(UpstreamErrorKind::Timeout) && err.status_code() == 408,
        "{err}"
    );
    ensure!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let health = r.health().await?;
    let h = health.iter().find(|h| {
        h.id == r
            .deployments()
            .iter()
            .find(|d| d.model == "openai/hanging")
            .map(|d| d.id.clone())
            .unwrap_or_default()
    });
    let h = h.ok_or_else(|| anyhow::anyhow!("no health for the hanging deployment"))?;
    ensure!(
        (h.failures_in_window == 1 || watch.rolled()) && h.in_flight == 0,
        "{h:?}"
    );
    ensure!(
        h.cooldown_remaining
            .is_some_and(|d| d > Duration::from_secs(25)),
        "{h:?}"
    );
    // The cooled deployment is skipped.
    let resp = r.completion(chat("g")).await?;
    ensure!(resp.meta.attempts == 1 && healthy.request_count() == 1);
    Ok(())
}

/// When every deployment is cooling down the answer is a 429 naming when to retry.
async fn all_cooled_down_is_a_429_with_retry_after(backend: Backend) -> anyhow::Result<()> {
    let up = MockUpstream::start().await?;
    up.set_behavior(Behavior::rate_limited(5));
    let cfg =
        json!({"model_list": [openai("g", "a", &up, json!({})), openai("g", "b", &up, json!({}))]});
    let r = router(cfg, backend).await?;
    let err = r
        .completion(chat("g"))
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("expected an error"))?;
    ensure!(up.request_count() == 2, "{}", up.request_count());
    ensure!(err.status_code() == 429, "{err}");
    ensure!(
        matches!(err, RouterError::NoDeploymentAvailable { .. }),
        "{err:?}"
    );
    let after = err
        .retry_after()
        .ok_or_else(|| anyhow::anyhow!("no retry_after"))?;
    ensure!(
        after > Duration::from_secs(3) && after <= Duration::from_secs(5),
        "{after:?}"
    );
    Ok(())
}

on_both_backends!(
    retries_a_server_error,
    does_not_retry_auth_errors,
    honours_retry_after_on_a_single_deployment,
    switches_to_a_healthy_deployment_at_once,
    falls_back_to_the_named_group,
    context_window_errors_use_their_fallbacks,
    max_fallbacks_bounds_the_chain,
    times_out_and_marks_the_deployment,
    all_cooled_down_is_a_429_with_retry_after,
);

/// A deployment cooled down by one router is skipped by another router on the same Redis.
#[tokio::test]
async fn cooldowns_are_shared_between_routers() -> anyhow::Result<()> {
    let redis = testkit::RedisServer::start().await?;
    let limited = MockUpstream::start().await?;
    let healthy = MockUpstream::start().await?;
    limited.set_behavior(Behavior::rate_limited(30));
    let cfg = json!({"model_list": [
        openai("g", "limited", &limited, json!({"order": 1})),
        openai("g", "healthy", &healthy, json!({"order": 2})),
    ]});
    let r1 = router(cfg.clone(), common::redis_backend(&redis)).await?;
    let r2 = router(cfg, common::redis_backend(&redis)).await?;
    r1.completion(chat("g")).await?;
    ensure!(limited.request_count() == 1);
    for _ in 0..3 {
        let resp = r2.completion(chat("g")).await?;
        ensure!(resp.meta.attempts == 1, "{:?}", resp.meta);
    }
    ensure!(limited.request_count() == 1 && healthy.request_count() == 4);
    let cooled: Vec<_> = r2
        .health()
        .await?
        .into_iter()
        .filter(|h| h.cooldown_remaining.is_some())
        .collect();
    ensure!(cooled.len() == 1, "{cooled:?}");
    Ok(())
}
