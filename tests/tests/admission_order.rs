//! Global priority order of admission: requests waiting on any replica reach the upstream in (priority, arrival)
//! order, a stream of urgent requests holds less urgent ones back, and equal priorities are served first come,
//! first served. Each scenario runs on three replicas sharing a fresh redis-server and on one in-memory router.

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::{
    arrival_tags, arrivals, expect_ok, inversions, tagged, upstream_with_latency, Cluster, Kind,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use testkit::Behavior;
use tokio::time::Instant;

/// Upstream latency of ordinary requests: long enough that each grant happens after the previous request
/// reached the upstream, short enough to keep the tests fast.
const LATENCY: Duration = Duration::from_millis(20);

/// Usage window of these tests: the request counts checked at the end stay in one window.
const HOUR: Duration = Duration::from_secs(3600);

/// One deployment `dep-a` of group `g` that takes one request at a time.
fn one_at_a_time(upstream: &testkit::MockUpstream) -> serde_json::Value {
    json!({
        "model_list": [common::deployment("g", "dep-a", upstream, json!({"max_parallel_requests": 1}))],
        "router_settings": {"num_retries": 0, "timeout": 30, "usage_window": 3600},
    })
}

/// A blocker holds the only slot while 60 requests with random priorities (seeded) queue up one at a time,
/// spread over the replicas; the upstream must then receive them in exactly (priority, arrival) order: every
/// one of them waited together with all the others, so any inversion is a scheduling error.
async fn upstream_receives_waiting_requests_in_priority_then_arrival_order(
    kind: Kind,
) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(LATENCY).await?;
    let config = one_at_a_time(&upstream);
    let cluster = Cluster::start(kind, config, upstream).await?;
    // Long enough for 60 sequential submissions (checked below, not assumed).
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

    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    let mut expected = Vec::new();
    let mut pending = Vec::new();
    let started = Instant::now();
    for i in 0..60 {
        let priority: u32 = rng.random_range(0..8);
        let tag = format!("req-{i}");
        pending.push((
            tag.clone(),
            cluster.submit(i, tagged("g", &tag, Some(priority))).await?,
        ));
        expected.push((priority, i, tag));
    }
    let queued_in = started.elapsed();
    ensure!(
        cluster.upstream.request_count() == 1,
        "setup too slow: the blocker finished before the 60 requests were queued ({queued_in:?})"
    );
    ensure!(
        cluster.depth("g").await? == 60,
        "not all 60 requests wait in the queue"
    );
    for (tag, p) in pending {
        expect_ok(&tag, p).await?;
    }
    expect_ok("blocker", blocker).await?;

    expected.sort();
    let want: Vec<String> = expected.iter().map(|(_, _, t)| t.clone()).collect();
    let got = arrival_tags(&cluster.upstream, "req-");
    let rank = |t: &String| want.iter().position(|w| w == t).unwrap_or(usize::MAX);
    let ranks: Vec<usize> = got.iter().map(rank).collect();
    ensure!(
        got == want,
        "upstream order differs from (priority, arrival) order with {} inversions\n got: {got:?}\nwant: {want:?}",
        inversions(&ranks)
    );
    // `priority` steers the router and is never forwarded.
    ensure!(
        arrivals(&cluster.upstream)
            .iter()
            .all(|a| a.body.get("priority").is_none()),
        "`priority` was forwarded upstream"
    );
    cluster.assert_clean("g", &["dep-a"], HOUR).await?;
    cluster.shutdown().await;
    Ok(())
}

/// Five low-priority requests wait; then a stream of priority-0 requests keeps coming, faster than the deployment
/// serves them, while the blocker ends and service runs. The low ones must not be served while any priority-0
/// request waits (none may pass a priority-0 request that was queued before the low one's grant), so they all
/// come after the last priority-0 one; and both classes are served in their arrival order.
async fn urgent_stream_holds_back_lower_priorities_which_then_proceed_fifo(
    kind: Kind,
) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(LATENCY).await?;
    let config = one_at_a_time(&upstream);
    let cluster = Cluster::start(kind, config, upstream).await?;
    cluster
        .upstream
        .push_behavior(Behavior::ok().with_latency(Duration::from_millis(200)));
    let blocker = cluster.submit(0, tagged("g", "blocker", Some(0))).await?;
    ensure!(
        cluster
            .upstream
            .wait_for_in_flight(1, Duration::from_secs(5))
            .await,
        "the blocker never reached the upstream"
    );

    let mut pending = Vec::new();
    let mut low = Vec::new();
    for i in 0..5 {
        let tag = format!("low-{i}");
        pending.push((
            tag.clone(),
            cluster.submit(i, tagged("g", &tag, Some(10))).await?,
        ));
        low.push(tag);
    }
    // The stream: one priority-0 request every 5 ms (plus the time to see it queued) for 80 requests, while
    // the upstream serves one per 20 ms or more, so from the blocker's end on a backlog of urgent requests
    // is always waiting.
    let mut high = Vec::new();
    let mut confirmed = Vec::new();
    for i in 0..80 {
        let tag = format!("high-{i}");
        pending.push((
            tag.clone(),
            cluster.submit(i + 1, tagged("g", &tag, Some(0))).await?,
        ));
        confirmed.push((tag.clone(), Instant::now()));
        high.push(tag);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (tag, p) in pending {
        expect_ok(&tag, p).await?;
    }
    expect_ok("blocker", blocker).await?;

    let all: Vec<common::Arrival> = arrivals(&cluster.upstream)
        .into_iter()
        .filter(|a| a.tag != "blocker")
        .collect();
    let tags: Vec<&str> = all.iter().map(|a| a.tag.as_str()).collect();
    let pos = |tag: &str| tags.iter().position(|t| *t == tag);
    // No low request passed a high one that was already waiting when the low one was granted. With one slot,
    // a grant follows the previous request's arrival, so "waiting before the previous arrival" is safe.
    for (p, a) in all
        .iter()
        .enumerate()
        .filter(|(_, a)| a.tag.starts_with("low-"))
    {
        let granted_after = if p == 0 { continue } else { all[p - 1].at };
        for (h, seen_at) in &confirmed {
            if *seen_at < granted_after {
                let hp = pos(h).unwrap_or(usize::MAX);
                ensure!(
                    hp < p,
                    "{} was served before {h}, which was waiting already:\n{tags:?}",
                    a.tag
                );
            }
        }
    }
    let got_high = arrival_tags(&cluster.upstream, "high-");
    let got_low = arrival_tags(&cluster.upstream, "low-");
    ensure!(
        got_high == high,
        "priority-0 requests out of arrival order: {got_high:?}"
    );
    ensure!(
        got_low == low,
        "equal-priority low requests not FIFO: {got_low:?}"
    );
    let last_high = pos(&high[high.len() - 1]).unwrap_or(usize::MAX);
    let first_low = pos(&low[0]).unwrap_or(0);
    ensure!(
        first_low > last_high,
        "a low-priority request ran while urgent ones kept arriving:\n{tags:?}"
    );
    cluster.assert_clean("g", &["dep-a"], HOUR).await?;
    cluster.shutdown().await;
    Ok(())
}

mod redis {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upstream_receives_waiting_requests_in_priority_then_arrival_order(
    ) -> anyhow::Result<()> {
        super::upstream_receives_waiting_requests_in_priority_then_arrival_order(Kind::Redis(3))
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn urgent_stream_holds_back_lower_priorities_which_then_proceed_fifo(
    ) -> anyhow::Result<()> {
        super::urgent_stream_holds_back_lower_priorities_which_then_proceed_fifo(Kind::Redis(3))
            .await
    }
}

mod memory {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upstream_receives_waiting_requests_in_priority_then_arrival_order(
    ) -> anyhow::Result<()> {
        super::upstream_receives_waiting_requests_in_priority_then_arrival_order(Kind::Memory).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn urgent_stream_holds_back_lower_priorities_which_then_proceed_fifo(
    ) -> anyhow::Result<()> {
        super::urgent_stream_holds_back_lower_priorities_which_then_proceed_fifo(Kind::Memory).await
    }
}

mod redis_cluster {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn upstream_receives_waiting_requests_in_priority_then_arrival_order(
    ) -> anyhow::Result<()> {
        super::upstream_receives_waiting_requests_in_priority_then_arrival_order(
            Kind::RedisCluster(3),
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn urgent_stream_holds_back_lower_priorities_which_then_proceed_fifo(
    ) -> anyhow::Result<()> {
        super::urgent_stream_holds_back_lower_priorities_which_then_proceed_fifo(
            Kind::RedisCluster(3),
        )
        .await
    }
}
