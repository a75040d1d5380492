//! `redis_failure_mode: open`: while Redis is down, each replica keeps serving with its share of every limit
//! (limit / live replicas), readiness says so, and once Redis is back the shared limit holds again.

mod common;

use std::time::Duration;

use common::{client, eventually, mock_answering_after, shared_group_config, Proxy};
use serde_json::{json, Value};
use testkit::RedisServer;

fn post(http: &reqwest::Client, proxy: &Proxy, tag: &str) -> tokio::task::JoinHandle<Option<u16>> {
    let request = http.post(proxy.url("/v1/chat/completions")).json(&json!({
        "model": "shared",
        "messages": [{"role": "user", "content": "hello there"}],
        "user": tag,
        "timeout": 30,
    }));
    tokio::spawn(async move { request.send().await.ok().map(|r| r.status().as_u16()) })
}

/// Sends `n` requests spread over `proxies` at once; returns their statuses.
async fn burst(
    http: &reqwest::Client,
    proxies: &[&Proxy],
    n: usize,
    tag: &str,
) -> Vec<Option<u16>> {
    let requests: Vec<_> = (0..n)
        .map(|i| post(http, proxies[i % proxies.len()], &format!("{tag}-{i}")))
        .collect();
    let mut statuses = Vec::new();
    for r in requests {
        statuses.push(r.await.ok().flatten());
    }
    statuses
}

async fn readiness(http: &reqwest::Client, proxy: &Proxy) -> Value {
    match http.get(proxy.url("/health/readiness")).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_in_open_mode_serves_each_replicas_share_and_the_shared_limit_returns() {
    let Some(mut redis) = RedisServer::start_own("kills and restarts Redis")
        .await
        .unwrap()
    else {
        return;
    };
    let upstream = mock_answering_after(Duration::from_millis(400)).await;
    let config = shared_group_config(
        &upstream.base_url(),
        &redis,
        "four",
        4,
        "  redis_failure_mode: open\n",
    );
    let a = Proxy::start(&config, &[]).unwrap();
    let b = Proxy::start(&config, &[]).unwrap();
    let http = client();
    assert_eq!(
        readiness(&http, &a).await["redis_failure_mode"],
        "open",
        "readiness does not name the mode"
    );

    // With Redis: 12 requests over both replicas share the deployment's 4 slots (the replicas also learn
    // that there are two of them from their heartbeats while requests run).
    let shared = burst(&http, &[&a, &b], 12, "before").await;
    assert!(shared.iter().all(|s| *s == Some(200)), "{shared:?}");
    assert!(
        upstream.peak_in_flight() <= 4,
        "peak {}",
        upstream.peak_in_flight()
    );

    // Redis down: the replicas keep serving, each with half of the limit.
    redis.kill();
    upstream.reset_peak();
    let during = burst(&http, &[&a, &b], 12, "during").await;
    assert!(
        during.iter().all(|s| *s == Some(200)),
        "requests failed during the outage: {during:?}"
    );
    assert!(
        upstream.peak_in_flight() <= 4,
        "{} requests ran at once during the outage (2 replicas x half of 4)",
        upstream.peak_in_flight()
    );
    let ready = readiness(&http, &a).await;
    assert_eq!(ready["status"], "ready", "{ready}");
    assert!(
        ready["admission"]
            .as_str()
            .is_some_and(|s| s.contains("share")),
        "readiness does not say admission is local: {ready}"
    );

    // Redis back (empty): admission is shared again.
    redis.restart().await.unwrap();
    // Each replica goes back to Redis with its first step after Redis answers again.
    assert!(
        eventually(Duration::from_secs(10), || async {
            burst(&http, &[&a, &b], 2, "probe").await;
            readiness(&http, &a).await["admission"] == "shared"
                && readiness(&http, &b).await["admission"] == "shared"
        })
        .await,
        "the replicas did not go back to Redis"
    );
    upstream.reset_peak();
    let after = burst(&http, &[&a, &b], 12, "after").await;
    assert!(after.iter().all(|s| *s == Some(200)), "{after:?}");
    assert!(
        upstream.peak_in_flight() <= 4,
        "{} requests ran at once after Redis came back (max_parallel_requests: 4)",
        upstream.peak_in_flight()
    );
    let log = format!("{}{}", a.output(), b.output());
    assert!(
        log.contains("Redis does not answer"),
        "no outage warning:\n{log}"
    );
}
