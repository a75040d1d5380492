//! Durable jobs across replicas (separate OS processes) sharing one Redis: the seed flow (submit on one
//! replica, poll on another), one global priority order with synchronous requests, and a replica killed
//! with SIGKILL while it runs jobs (its jobs run again elsewhere, attempts counted). After every test
//! nothing of the jobs is left in the group's keys, and every job record carries an expiry.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{client, eventually, mock_answering_after, shared_group_config, signal, Proxy};
use serde_json::{json, Value};
use testkit::{Behavior, RecordedRequest, RedisServer};

fn tag_of(r: &RecordedRequest) -> String {
    r.body
        .get("user")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

async fn connect(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap()
}

async fn count(conn: &redis::aio::MultiplexedConnection, cmd: &str, key: &str) -> u64 {
    let mut conn = conn.clone();
    redis::cmd(cmd)
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap_or(u64::MAX)
}

/// Nothing of the group's jobs is left in its queue, jobs hash, job runs or in-flight leases, and every job
/// record has an expiry (`job_ttl`).
async fn assert_clean(
    redis: &RedisServer,
    conn: &redis::aio::MultiplexedConnection,
    deployment: &str,
) {
    let base = format!("{}{{shared}}", redis.prefix());
    let keys = [
        ("ZCARD", format!("{base}:q")),
        ("HLEN", format!("{base}:jobs")),
        ("ZCARD", format!("{base}:jobruns")),
        ("HLEN", format!("{base}:grants")),
        ("ZCARD", format!("{base}:d:{deployment}:if")),
    ];
    let clean = eventually(Duration::from_secs(5), || async {
        let mut all = true;
        for (cmd, key) in &keys {
            all &= count(conn, cmd, key).await == 0;
        }
        all
    })
    .await;
    let mut left = Vec::new();
    for (cmd, key) in &keys {
        left.push((key.clone(), count(conn, cmd, key).await));
    }
    assert!(clean, "left in Redis: {left:?}");
    let mut c = conn.clone();
    for key in redis.keys().await.unwrap() {
        if key.contains(":job:") {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap();
            assert!(ttl > 0, "job record {key} has no expiry ({ttl})");
        }
    }
}

/// Submits a chat job tagged `tag` (the upstream sees it as `user`).
async fn submit(http: &reqwest::Client, proxy: &Proxy, tag: &str, priority: u32) -> String {
    let answer: Value = http
        .post(proxy.url("/queue/request"))
        .json(&json!({
            "model": "shared",
            "messages": [{"role": "user", "content": "hello there"}],
            "user": tag,
            "priority": priority,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["status"], "queued", "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

async fn read(http: &reqwest::Client, proxy: &Proxy, id: &str, wait: u32) -> Value {
    http.get(proxy.url(&format!("/queue/response/{id}?wait={wait}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Long-polls `id` on `proxy` until it is finished (at most `limit`).
async fn finished(http: &reqwest::Client, proxy: &Proxy, id: &str, limit: Duration) -> Value {
    let until = Instant::now() + limit;
    loop {
        let job = read(http, proxy, id, 2).await;
        if job["status"] == "finished" || Instant::now() >= until {
            return job;
        }
    }
}

#[tokio::test]
async fn a_job_submitted_on_one_replica_is_read_on_another() {
    let redis = RedisServer::start().await.unwrap();
    let upstream = mock_answering_after(Duration::from_millis(300)).await;
    let config = shared_group_config(&upstream.base_url(), &redis, "solo", 1, "");
    let a = Proxy::start(&config, &[]).unwrap();
    let b = Proxy::start(&config, &[]).unwrap();
    let http = client();
    let conn = connect(&redis).await;

    // The first job holds the only slot for 300 ms: the second waits.
    let first = submit(&http, &a, "first", 0).await;
    let second = submit(&http, &a, "second", 0).await;
    let seen = read(&http, &b, &second, 0).await;
    assert_eq!(seen["status"], "queued", "{seen}");
    assert!(seen["position"].as_u64().is_some(), "{seen}");

    for id in [&first, &second] {
        let job = finished(&http, &b, id, Duration::from_secs(15)).await;
        assert_eq!(job["status"], "finished", "{job}");
        assert!(
            job["result"]["choices"][0]["message"].is_object(),
            "no message in {job}"
        );
        assert_eq!(job["status_code"], 200);
    }
    assert_eq!(upstream.request_count(), 2);
    assert_clean(&redis, &conn, "solo").await;
    drop((a, b));
}

#[tokio::test]
async fn jobs_and_synchronous_requests_obey_one_priority_order() {
    let redis = RedisServer::start().await.unwrap();
    let upstream = mock_answering_after(Duration::from_millis(20)).await;
    let config = shared_group_config(&upstream.base_url(), &redis, "solo", 1, "");
    let replicas = [
        Proxy::start(&config, &[]).unwrap(),
        Proxy::start(&config, &[]).unwrap(),
        Proxy::start(&config, &[]).unwrap(),
    ];
    let http = client();
    let conn = connect(&redis).await;
    let queue = format!("{}{{shared}}:q", redis.prefix());

    // A synchronous request holds the only slot while everything else is queued behind it.
    upstream.push_behavior(Behavior::ok().with_latency(Duration::from_millis(2500)));
    let holder = {
        let request = http.post(replicas[0].url("/v1/chat/completions")).json(&json!({
            "model": "shared", "messages": [{"role": "user", "content": "hold"}], "user": "holder",
        }));
        tokio::spawn(async move { request.send().await.map(|r| r.status().as_u16()).ok() })
    };
    assert!(
        upstream
            .wait_for_in_flight(1, Duration::from_secs(10))
            .await
    );
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(submit(&http, &replicas[i % 3], &format!("p10-{i:02}"), 10).await);
    }
    for i in 0..10 {
        ids.push(submit(&http, &replicas[i % 3], &format!("p0-{i:02}"), 0).await);
    }
    let mut sync = Vec::new();
    for i in 0..3 {
        let request = http
            .post(replicas[i % 3].url("/v1/chat/completions"))
            .json(&json!({
                "model": "shared", "messages": [{"role": "user", "content": "now"}],
                "user": format!("sync-p5-{i}"), "priority": 5,
            }));
        sync.push(tokio::spawn(async move {
            request.send().await.map(|r| r.status().as_u16()).ok()
        }));
        let queued = eventually(Duration::from_secs(5), || async {
            count(&conn, "ZCARD", &queue).await == 31 + i as u64
        })
        .await;
        assert!(queued, "synchronous request {i} was not queued");
    }
    assert!(
        started.elapsed() < Duration::from_millis(2000) && upstream.request_count() == 1,
        "setup too slow: the holder ended before everything was queued"
    );

    assert_eq!(holder.await.unwrap(), Some(200));
    for s in sync {
        assert_eq!(s.await.unwrap(), Some(200));
    }
    for id in &ids {
        let job = finished(&http, &replicas[1], id, Duration::from_secs(30)).await;
        assert_eq!(job["status_code"], 200, "{job}");
    }
    let order: Vec<String> = upstream.requests().iter().map(tag_of).collect();
    let mut expected = vec!["holder".to_owned()];
    expected.extend((0..10).map(|i| format!("p0-{i:02}")));
    expected.extend((0..3).map(|i| format!("sync-p5-{i}")));
    expected.extend((0..20).map(|i| format!("p10-{i:02}")));
    assert_eq!(order, expected, "the upstream's order");
    assert_clean(&redis, &conn, "solo").await;
}

#[tokio::test]
async fn the_jobs_of_a_killed_replica_run_again_on_the_others() {
    const LEASE: Duration = Duration::from_millis(1500);
    let redis = RedisServer::start().await.unwrap();
    let upstream = mock_answering_after(Duration::from_millis(200)).await;
    let extra = "  job_workers: 4\n  job_lease: 1.5\n  inflight_lease: 2\n";
    let config = shared_group_config(&upstream.base_url(), &redis, "wide", 8, extra);
    let http = client();
    let conn = connect(&redis).await;

    // A alone takes the first four jobs; their upstream calls last until after A is killed.
    for _ in 0..4 {
        upstream.push_behavior(Behavior::ok().with_latency(Duration::from_secs(20)));
    }
    let mut a = Proxy::start(&config, &[]).unwrap();
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push((
            format!("job-{i:02}"),
            submit(&http, &a, &format!("job-{i:02}"), 0).await,
        ));
    }
    assert!(
        upstream
            .wait_for_in_flight(4, Duration::from_secs(10))
            .await,
        "A did not run four jobs"
    );
    let on_a: Vec<String> = upstream.requests().iter().map(tag_of).collect();
    assert_eq!(on_a.len(), 4, "A runs four jobs at once (job_workers: 4)");
    let b = Proxy::start(&config, &[]).unwrap();
    let c = Proxy::start(&config, &[]).unwrap();
    signal(a.pid(), "KILL");
    let _ = a.wait_exit(Duration::from_secs(10));
    let killed = Instant::now();

    let mut attempts = HashMap::new();
    for (tag, id) in &ids {
        let reader = if attempts.len() % 2 == 0 { &b } else { &c };
        let job = finished(&http, reader, id, Duration::from_secs(30)).await;
        assert_eq!(job["status_code"], 200, "{tag}: {job}");
        assert!(job["result"]["choices"][0]["message"].is_object(), "{job}");
        attempts.insert(tag.clone(), job["attempts"].as_u64().unwrap_or(0));
    }
    let took = killed.elapsed();
    // One lease until A's runs are put back, then the work: 30 jobs of 200 ms on 8 slots, with slack for a
    // busy machine.
    assert!(
        took < LEASE + Duration::from_secs(8),
        "the jobs took {took:?} after the kill"
    );
    let calls = upstream.request_count();
    assert_eq!(
        calls,
        30 + on_a.len(),
        "upstream calls beyond 30 are A's runs only"
    );
    for (tag, n) in &attempts {
        let want = if on_a.contains(tag) { 2 } else { 1 };
        assert_eq!(*n, want, "attempts of {tag} (A ran {on_a:?})");
    }
    assert_clean(&redis, &conn, "wide").await;
    drop((b, c));
}

// Waiting for A's exit blocks the test's thread: the mock upstream answers from another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_jobs_finish_within_the_grace_period_and_hands_back_the_rest() {
    let redis = RedisServer::start().await.unwrap();
    let upstream = mock_answering_after(Duration::from_millis(20)).await;
    let extra = "  job_workers: 2\n";
    let config = shared_group_config(&upstream.base_url(), &redis, "wide", 8, extra);
    let http = client();
    let conn = connect(&redis).await;

    // On A: one job outlasts the grace period, one ends within it.
    upstream.push_behavior(Behavior::ok().with_latency(Duration::from_secs(30)));
    upstream.push_behavior(Behavior::ok().with_latency(Duration::from_millis(500)));
    let mut a = Proxy::start_with_args(
        &config,
        &[("RUST_LOG", "info,router::jobs=debug")],
        &["--grace-period", "1.5"],
    )
    .unwrap();
    let long = submit(&http, &a, "long", 0).await;
    assert!(
        upstream
            .wait_for_in_flight(1, Duration::from_secs(10))
            .await
    );
    let short = submit(&http, &a, "short", 0).await;
    assert!(
        upstream
            .wait_for_in_flight(2, Duration::from_secs(10))
            .await
    );
    a.terminate();
    let status = a
        .wait_exit(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e}; A's log:\n{}", a.output()));
    assert!(status.success(), "A exited with {status}");
    let log = a.output();
    let signal_at = log.find("shutdown signal").unwrap_or(usize::MAX);
    let short_end = log.find(&format!("job run ended job={short}")).unwrap_or(0);
    assert!(
        short_end > signal_at,
        "the short job did not end on A after the signal:\n{log}"
    );
    assert!(
        log.contains(&format!(
            "job handed back at its place in the queue job={long}"
        )),
        "A did not hand the long job back:\n{log}"
    );

    // The handed-back job waits in Redis for a replica: B, started after A stopped, runs it.
    let b = Proxy::start(&config, &[]).unwrap();
    let short_job = finished(&http, &b, &short, Duration::from_secs(10)).await;
    assert_eq!(short_job["status_code"], 200, "{short_job}");
    let long_job = finished(&http, &b, &long, Duration::from_secs(15)).await;
    assert_eq!(long_job["status_code"], 200, "{long_job}");
    // The run A stopped is not an attempt.
    assert_eq!(long_job["attempts"], 1, "{long_job}");
    let tags: Vec<String> = upstream.requests().iter().map(tag_of).collect();
    assert_eq!(tags, ["long", "short", "long"], "upstream calls");
    assert_clean(&redis, &conn, "wide").await;
    drop(b);
}
