//! Requests that give up (their `timeout` passes while they wait, or their client goes away and the
//! completion future is dropped) leave nothing behind: no queue entry, no untaken grant, no in-flight lease,
//! and no request counted against the deployment's rpm unless it reached the upstream.

#[macro_use]
mod common;

use std::time::Duration;

use anyhow::{bail, ensure};
use common::{arrival_tags, expect_ok, tagged, tagged_with, upstream_with_latency, Cluster, Kind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use router::RouterError;
use serde_json::json;
use testkit::{Behavior, RedisServer};
use tokio::time::Instant;

/// Usage window of these tests: the request counts checked at the end stay in one window.
const HOUR: Duration = Duration::from_secs(3600);

fn config(upstream: &testkit::MockUpstream, limits: serde_json::Value) -> serde_json::Value {
    json!({
        "model_list": [common::deployment("g", "dep-a", upstream, limits)],
        "router_settings": {"num_retries": 0, "timeout": 30, "usage_window": 3600},
    })
}

/// While a blocker holds the only slot, four waiting requests time out and four are dropped by their clients;
/// two more wait on. The queue then holds only the two, which are served after the blocker; at the end no
/// entry, grant or lease is left and the deployment counted exactly the three requests that reached it.
async fn timed_out_and_dropped_waiters_leave_nothing_behind(kind: Kind) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(Duration::from_millis(10)).await?;
    let cluster = Cluster::start(
        kind,
        config(&upstream, json!({"max_parallel_requests": 1, "rpm": 1000})),
        upstream,
    )
    .await?;
    cluster
        .upstream
        .push_behavior(Behavior::ok().with_latency(Duration::from_millis(1500)));
    let blocker = cluster.submit(0, tagged("g", "blocker", Some(0))).await?;
    ensure!(
        cluster
            .upstream
            .wait_for_in_flight(1, Duration::from_secs(5))
            .await,
        "the blocker never reached the upstream"
    );
    let mut timing_out = Vec::new();
    for i in 0..4 {
        let req = tagged_with("g", &format!("t-{i}"), Some(i), json!({"timeout": 0.3}));
        timing_out.push(cluster.submit(i as usize, req).await?);
    }
    let mut dropped = Vec::new();
    for i in 0..4 {
        dropped.push(
            cluster
                .submit(i + 1, tagged("g", &format!("c-{i}"), Some(0)))
                .await?,
        );
    }
    let s0 = cluster.submit(2, tagged("g", "s-0", Some(3))).await?;
    let s1 = cluster.submit(0, tagged("g", "s-1", Some(3))).await?;
    for d in &dropped {
        d.abort();
    }
    for (i, t) in timing_out.into_iter().enumerate() {
        match t.await? {
            Err(e @ RouterError::QueueTimeout { .. }) => {
                ensure!(e.status_code() == 408, "t-{i}: status {}", e.status_code())
            }
            Err(e) => bail!("t-{i} failed with {e}, not a queue timeout"),
            Ok(_) => bail!("t-{i} was served"),
        }
    }
    for d in dropped {
        ensure!(
            d.await.is_err_and(|e| e.is_cancelled()),
            "a dropped request ran to completion"
        );
    }
    cluster
        .wait_for_depth("g", 2, Duration::from_secs(1))
        .await?;
    if kind != Kind::Memory {
        ensure!(
            cluster.grants("g").await? == 0,
            "grants left for requests that gave up"
        );
    }
    ensure!(
        cluster.upstream.request_count() == 1,
        "setup too slow: the blocker ended before the waiters gave up"
    );
    expect_ok("s-0", s0).await?;
    expect_ok("s-1", s1).await?;
    expect_ok("blocker", blocker).await?;
    let served = arrival_tags(&cluster.upstream, "");
    ensure!(served == ["blocker", "s-0", "s-1"], "served {served:?}");
    cluster.assert_clean("g", &["dep-a"], HOUR).await?;
    cluster.shutdown().await;
    Ok(())
}

/// Forty requests with short random timeouts race for one slot while ten of them are dropped at random
/// moments: timeouts and drops land while waiting, while being granted and while at the upstream. Afterwards
/// no entry, grant or lease is left, and the rpm count lies between the requests that reached the upstream
/// and those plus the ones that may have been sent when they were abandoned (dropped, or cut by their
/// timeout during the upstream call); a request that timed out in the queue never counts.
async fn racing_timeouts_and_drops_leak_no_reservation(kind: Kind) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(Duration::from_millis(15)).await?;
    let cluster = Cluster::start(
        kind,
        config(&upstream, json!({"max_parallel_requests": 1, "rpm": 10000})),
        upstream,
    )
    .await?;
    let mut rng = StdRng::seed_from_u64(0x5eed_0005);
    let mut pending = Vec::new();
    for i in 0..40 {
        let timeout = rng.random_range(0.1..0.6);
        let priority: u32 = rng.random_range(0..4);
        let req = tagged_with(
            "g",
            &format!("x-{i}"),
            Some(priority),
            json!({"timeout": timeout}),
        );
        pending.push(cluster.spawn(i, req).await);
    }
    let started = Instant::now();
    let mut aborted = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(5..40))).await;
        pending[rng.random_range(0..pending.len())].abort();
        aborted += 1;
    }
    let (mut served, mut queue_timeouts, mut maybe_sent) = (0, 0, 0);
    for p in pending {
        match p.await {
            Ok(Ok(_)) => served += 1,
            Ok(Err(RouterError::QueueTimeout { .. })) => queue_timeouts += 1,
            Ok(Err(e)) if e.status_code() == 408 => maybe_sent += 1,
            Ok(Err(e)) => bail!("unexpected failure: {e} ({})", e.status_code()),
            Err(e) if e.is_cancelled() => {}
            Err(e) => bail!("request panicked: {e}"),
        }
    }
    ensure!(
        served > 0 && queue_timeouts > 0,
        "the race did not happen: {served} served, {queue_timeouts} queue timeouts in {:?}",
        started.elapsed()
    );
    let reached = cluster.sent_in_window("dep-a", HOUR);
    let slack = aborted + maybe_sent;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let h = cluster.health("dep-a").await?;
        let depth = cluster.depth("g").await?;
        let mut leftovers = String::new();
        if depth > 0 {
            leftovers = format!("queue {depth}");
        }
        if kind != Kind::Memory {
            let grants = cluster.grants("g").await?;
            let leases = cluster.in_flight_leases("g", "dep-a").await?;
            if depth + grants + leases > 0 {
                leftovers = format!("queue {depth}, grants {grants}, in-flight leases {leases}");
            }
        }
        let counted_ok = h.rpm_used >= reached && h.rpm_used <= reached + slack;
        if h.in_flight == 0 && counted_ok && leftovers.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "left behind: in_flight {}, rpm_used {} for {reached} requests that reached the upstream (+{slack} \
             abandoned mid-call at most); {leftovers}",
            h.in_flight,
            h.rpm_used
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.shutdown().await;
    Ok(())
}

/// A request dropped while the upstream works on it gives its slot back at once (not after the in-flight
/// lease): the next waiting request is served right away. It reached the upstream, so it stays counted.
async fn a_request_dropped_at_the_upstream_frees_its_slot_at_once(
    kind: Kind,
) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(Duration::from_millis(10)).await?;
    let cluster = Cluster::start(
        kind,
        config(&upstream, json!({"max_parallel_requests": 1, "rpm": 1000})),
        upstream,
    )
    .await?;
    cluster.upstream.push_behavior(Behavior::hang());
    let hung = cluster.submit(0, tagged("g", "hung", Some(0))).await?;
    ensure!(
        cluster
            .upstream
            .wait_for_in_flight(1, Duration::from_secs(5))
            .await,
        "the first request never reached the upstream"
    );
    let next = cluster.submit(1, tagged("g", "next", Some(0))).await?;
    hung.abort();
    let started = Instant::now();
    match tokio::time::timeout(Duration::from_secs(3), next).await {
        Ok(Ok(Ok(_))) => {}
        Ok(Ok(Err(e))) => bail!("the next request failed: {e}"),
        Ok(Err(e)) => bail!("the next request panicked: {e}"),
        Err(_) => bail!(
            "the dropped request still held its slot after {:?}",
            started.elapsed()
        ),
    }
    cluster.assert_clean("g", &["dep-a"], HOUR).await?;
    cluster.shutdown().await;
    Ok(())
}

/// A request whose admission step is on its way to Redis when its client goes away (or when its timeout
/// passes) must not leave the reservation that step makes behind. Redis is paused for writes (`CLIENT PAUSE
/// WRITE`) so the step is sent but not yet run when the request is dropped; when Redis resumes the step
/// reserves capacity on the fast path, and the cancellation that follows it must give that capacity back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_request_dropped_during_its_admission_step_gives_its_reservation_back(
) -> anyhow::Result<()> {
    let Some(redis) = RedisServer::start_own("pauses its writes and lists its clients").await?
    else {
        return Ok(());
    };
    let upstream = upstream_with_latency(Duration::ZERO).await?;
    let cluster = Cluster::start_on(
        Kind::Redis(1),
        Some(redis),
        config(&upstream, json!({"max_parallel_requests": 5, "rpm": 1000})),
        upstream,
    )
    .await?;
    expect_ok("warm", cluster.spawn(0, tagged("g", "warm", Some(0))).await).await?;
    let mut conn = cluster.conn()?;

    // The first is dropped by its client, the second times out, both while their step waits in Redis.
    for (tag, timeout) in [("dropped", None), ("timed-out", Some(0.3))] {
        let _: () = ::redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(5000)
            .arg("WRITE")
            .query_async(&mut conn)
            .await?;
        let extra = timeout.map_or(json!({}), |t| json!({"timeout": t}));
        let request = cluster
            .spawn(0, tagged_with("g", tag, Some(0), extra))
            .await;
        let blocked = common::eventually(Duration::from_secs(3), || {
            let mut conn = conn.clone();
            async move {
                let clients: String = ::redis::cmd("CLIENT")
                    .arg("LIST")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                clients
                    .lines()
                    .any(|l| l.contains("cmd=fcall") && l.contains("flags=b"))
            }
        })
        .await;
        ensure!(blocked, "{tag}: its admission step never reached Redis");
        match timeout {
            None => {
                request.abort();
                ensure!(request.await.is_err_and(|e| e.is_cancelled()));
            }
            Some(_) => match request.await? {
                Err(RouterError::QueueTimeout { .. }) => {}
                other => bail!("{tag}: expected a queue timeout, got {other:?}"),
            },
        }
        let _: () = ::redis::cmd("CLIENT")
            .arg("UNPAUSE")
            .query_async(&mut conn)
            .await?;
    }
    ensure!(
        arrival_tags(&cluster.upstream, "") == ["warm"],
        "an abandoned request reached the upstream"
    );
    cluster.assert_clean("g", &["dep-a"], HOUR).await?;
    cluster.shutdown().await;
    Ok(())
}

on_both_backends!(
    timed_out_and_dropped_waiters_leave_nothing_behind,
    racing_timeouts_and_drops_leak_no_reservation,
    a_request_dropped_at_the_upstream_frees_its_slot_at_once,
);
