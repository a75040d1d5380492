//! Redis restarted while two replicas have requests in flight and waiting, killed with SIGKILL and back
//! empty, or stopped with `SHUTDOWN` and back with its append-only file: no waiting request is lost (every
//! one is served after the restart, within its deadline), the deployment's `max_parallel_requests` holds
//! right after the restart (after an empty restart the replicas re-register their in-flight reservations
//! while admission pauses), and no request reaches the upstream twice.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{client, eventually, mock_answering_after, shared_group_config, Proxy};
use serde_json::{json, Value};
use testkit::{Behavior, RedisServer};

/// Both slots are held this long by the first two requests, across the restart.
const HOLD: Duration = Duration::from_millis(2500);

fn post(
    http: &reqwest::Client,
    proxy: &Proxy,
    tag: &str,
) -> tokio::task::JoinHandle<Result<u16, String>> {
    let request = http.post(proxy.url("/v1/chat/completions")).json(&json!({
        "model": "shared",
        "messages": [{"role": "user", "content": "hello there"}],
        "user": tag,
        "timeout": 30,
    }));
    tokio::spawn(async move {
        request
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    })
}

async fn zcard(redis: &RedisServer, key: &str) -> Option<u64> {
    let client = redis::Client::open(redis.url()).ok()?;
    let mut conn = tokio::time::timeout(
        Duration::from_secs(2),
        client.get_multiplexed_async_connection(),
    )
    .await
    .ok()?
    .ok()?;
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut conn)
        .await
        .ok()
}

/// How Redis goes down and comes back.
#[derive(Clone, Copy, PartialEq)]
enum Restart {
    /// SIGKILL, then a new server with no data.
    KilledEmpty,
    /// `SHUTDOWN`, then the same server back with its append-only file.
    ShutdownWithAof,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_loses_no_waiter_and_keeps_the_parallel_limit() {
    let Some(redis) = RedisServer::start_own("kills and restarts Redis")
        .await
        .unwrap()
    else {
        return;
    };
    restart_under_load(redis, Restart::KilledEmpty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_shut_down_and_restarted_with_its_aof_loses_no_waiter_and_keeps_the_parallel_limit()
{
    let Some(redis) = RedisServer::start_own_persistent("shuts Redis down and restarts it")
        .await
        .unwrap()
    else {
        return;
    };
    restart_under_load(redis, Restart::ShutdownWithAof).await;
}

async fn restart_under_load(mut redis: RedisServer, how: Restart) {
    let upstream = mock_answering_after(Duration::from_millis(100)).await;
    let config = shared_group_config(&upstream.base_url(), &redis, "pair", 2, "");
    let queue_key = format!("{}{{shared}}:q", redis.prefix());
    let a = Proxy::start(&config, &[]).unwrap();
    let b = Proxy::start(&config, &[]).unwrap();
    let http = client();

    // Two long requests hold both slots; six more wait, three on each replica.
    upstream.push_behavior(Behavior::ok().with_latency(HOLD));
    upstream.push_behavior(Behavior::ok().with_latency(HOLD));
    let mut requests = vec![
        ("held-a".to_owned(), post(&http, &a, "held-a")),
        ("held-b".to_owned(), post(&http, &b, "held-b")),
    ];
    assert!(
        upstream
            .wait_for_in_flight(2, Duration::from_secs(10))
            .await,
        "the two holders never reached the upstream"
    );
    for i in 0..6 {
        let (proxy, tag) = if i % 2 == 0 {
            (&a, format!("wait-a{i}"))
        } else {
            (&b, format!("wait-b{i}"))
        };
        requests.push((tag.clone(), post(&http, proxy, &tag)));
        let n = i + 1;
        assert!(
            eventually(Duration::from_secs(10), || async {
                zcard(&redis, &queue_key).await == Some(n)
            })
            .await,
            "waiter {i} was not queued"
        );
    }
    assert_eq!(upstream.request_count(), 2, "setup too slow: a waiter ran");

    // Redis goes down and comes back while both holders are still upstream.
    match how {
        Restart::KilledEmpty => {
            redis.kill();
            redis.restart().await.unwrap();
        }
        Restart::ShutdownWithAof => {
            redis.shutdown_and_restart().await.unwrap();
            assert!(
                eventually(Duration::from_secs(10), || async {
                    zcard(&redis, &queue_key).await.is_some()
                })
                .await,
                "Redis did not load its append-only file"
            );
        }
    }
    upstream.reset_peak();

    let mut statuses = HashMap::new();
    for (tag, request) in requests {
        statuses.insert(tag, request.await.unwrap());
    }
    assert!(
        statuses.values().all(|s| *s == Ok(200)),
        "not every request was served: {statuses:?}"
    );
    assert!(
        upstream.peak_in_flight() <= 2,
        "{} requests ran at once upstream after the restart (max_parallel_requests: 2)",
        upstream.peak_in_flight()
    );
    let mut seen: HashMap<String, usize> = HashMap::new();
    for r in upstream.requests() {
        let tag = r
            .body
            .get("user")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        *seen.entry(tag).or_default() += 1;
    }
    assert_eq!(seen.len(), 8, "requests at the upstream: {seen:?}");
    assert!(
        seen.values().all(|n| *n == 1),
        "a request reached the upstream twice: {seen:?}"
    );
    if how == Restart::KilledEmpty {
        let log = format!("{}{}", a.output(), b.output());
        assert!(
            log.contains("restored admission state"),
            "no replica logged its restore:\n{log}"
        );
    }
}
