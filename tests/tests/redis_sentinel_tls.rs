//! The scheduler behind Sentinels (a primary, a replica, 3 sentinels): requests succeed, the primary is
//! killed, the Sentinels promote the replica and requests succeed again within the failover time plus
//! 2 s. And on a TLS-only Redis (`rediss://` with a throwaway CA), configured as LiteLLM spells it.

#[macro_use]
mod common;

use std::time::Duration;

use anyhow::{ensure, Context};
use common::{tagged, upstream_with_latency};
use router::{Backend, BackendChoice, Router, RouterConfig, RouterSettings};
use serde_json::json;
use testkit::{RedisSentinel, RedisTls, SENTINEL_DOWN_AFTER, SENTINEL_SERVICE};
use tokio::time::Instant;

fn config(
    upstream: &testkit::MockUpstream,
    settings: serde_json::Value,
) -> anyhow::Result<RouterConfig> {
    let mut s = json!({"num_retries": 0, "timeout": 30, "usage_window": 3600});
    if let (Some(s), serde_json::Value::Object(e)) = (s.as_object_mut(), settings) {
        s.extend(e);
    }
    Ok(RouterConfig::from_json(json!({
        "model_list": [common::deployment("g", "dep-a", upstream, json!({"max_parallel_requests": 2}))],
        "router_settings": s,
    }))?)
}

/// The backend `router_settings` names (as the proxy chooses it), with a short call timeout.
fn backend_of(settings: serde_json::Value) -> anyhow::Result<Backend> {
    let settings: RouterSettings = serde_json::from_value(settings)?;
    let choice = BackendChoice::from_settings(&settings, |_| None)?;
    ensure!(choice.is_redis(), "{} names no Redis", choice.describe());
    match choice.backend {
        Backend::Redis(cfg) => Ok(Backend::Redis(store::RedisConfig {
            command_timeout: Duration::from_secs(1),
            ..cfg
        })),
        Backend::Memory => unreachable!("checked above"),
    }
}

/// `sentinel_nodes` + `service_name` as LiteLLM spells them: requests succeed; the primary is killed (by
/// pid); once the Sentinels promoted the replica, requests succeed again within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduler_follows_a_sentinel_failover() -> anyhow::Result<()> {
    let mut group = RedisSentinel::start().await?;
    let prefix = testkit::RedisCluster::fresh_prefix();
    let sentinels: Vec<_> = group
        .sentinel_ports()
        .into_iter()
        .map(|p| json!(["127.0.0.1", p]))
        .collect();
    let settings = json!({
        "sentinel_nodes": sentinels,
        "service_name": SENTINEL_SERVICE,
        "key_prefix": prefix,
    });
    let backend = backend_of(settings.clone())?;
    let upstream = upstream_with_latency(Duration::from_millis(5)).await?;
    let router = Router::new(config(&upstream, settings)?, backend).await?;
    for i in 0..5 {
        router
            .completion(tagged("g", &format!("before-{i}"), Some(1)))
            .await
            .with_context(|| format!("request {i} before the failover"))?;
    }
    let old = group.primary_port().await?;
    let killed_at = Instant::now();
    group.kill_server(old);
    let new = group.wait_failover(old, Duration::from_secs(30)).await?;
    let failover_time = killed_at.elapsed();
    let promoted_at = Instant::now();
    let deadline = promoted_at + Duration::from_secs(2);
    let mut n = 0;
    let recovered = loop {
        n += 1;
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            router.completion(tagged("g", &format!("after-{n}"), Some(1))),
        )
        .await;
        if matches!(answer, Ok(Ok(_))) {
            break Instant::now();
        }
        ensure!(
            Instant::now() < deadline,
            "no request succeeded within 2 s of the promotion of {new} (last: {:?})",
            answer.map(|r| r.err())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!(
        "sentinel failover {old} -> {new} took {failover_time:?} (down-after {SENTINEL_DOWN_AFTER:?}); \
         requests succeeded again {:?} after the promotion",
        recovered - promoted_at
    );
    router.shutdown().await;
    Ok(())
}

/// A TLS-only server (`--port 0 --tls-port`): `ssl: true` with `redis_host`/`redis_port` and
/// `ssl_ca_certs` naming the test's CA. Skipped with a printed reason when this `redis-server` has no TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_ssl_true_and_the_ca_of_the_config() -> anyhow::Result<()> {
    let Some(server) = RedisTls::start().await? else {
        return Ok(());
    };
    let port: u16 = server
        .url()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("the TLS server's port")?;
    let settings = json!({
        "redis_host": "127.0.0.1",
        "redis_port": port,
        "ssl": true,
        "ssl_ca_certs": server.ca_file().display().to_string(),
        "key_prefix": testkit::RedisCluster::fresh_prefix(),
    });
    let backend = backend_of(settings.clone())?;
    let Backend::Redis(cfg) = &backend else {
        unreachable!("backend_of answers Redis");
    };
    ensure!(
        cfg.url.starts_with("rediss://"),
        "ssl: true gave {}",
        cfg.url
    );
    let upstream = upstream_with_latency(Duration::from_millis(5)).await?;
    let router = Router::new(config(&upstream, settings)?, backend.clone()).await?;
    for i in 0..3 {
        router
            .completion(tagged("g", &format!("tls-{i}"), Some(1)))
            .await
            .with_context(|| format!("request {i} over TLS"))?;
    }
    router.ping_backend().await?;
    router.shutdown().await;

    // Without the CA the server's certificate is not trusted: readiness fails, no request is admitted.
    let untrusted = Backend::Redis(store::RedisConfig {
        tls_ca_file: None,
        ..cfg.clone()
    });
    let router = Router::new(config(&upstream, json!({}))?, untrusted).await?;
    ensure!(
        router.ping_backend().await.is_err(),
        "a certificate of an unknown CA was accepted"
    );
    router.shutdown().await;
    Ok(())
}
