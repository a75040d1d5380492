//! Exact rpm limits under a burst, with rolling and with fixed windows: with `rpm: 20` and a 1 s usage
//! window, no window ever lets more than 20 requests reach the deployment, every window after the burst is used to the full, all requests complete
//! before their deadline, and each window serves the most urgent of the requests still waiting.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure};
use common::{arrivals, expect_ok, tagged, upstream_with_latency, Cluster, Kind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const RPM: usize = 20;
const WINDOW_MS: u64 = 1000;

/// Waits (pacing only, no synchronisation) until the wall clock is between `from` and `to` ms into a usage
/// window, so the test's first phase cannot straddle a window boundary.
async fn wait_for_window_phase(from: u64, to: u64) {
    loop {
        let phase = common::epoch_ms() % WINDOW_MS;
        if (from..to).contains(&phase) {
            return;
        }
        let wait = (WINDOW_MS + from - phase) % WINDOW_MS;
        tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
    }
}

/// First 20 requests use up the current window's rpm (so nothing of the burst can be admitted in it), then
/// `n` requests with random priorities (seeded) arrive at once over the replicas and all wait from the next
/// window on. Window k after the burst must then admit exactly 20 of them, and only requests at least as
/// urgent as everything admitted in window k+1.
///
/// Windows are read from the upstream's arrival times, aligned to multiples of 1 s like the usage windows.
/// A request is granted in its window and reaches the upstream a few milliseconds later, so an arrival could
/// land in the next window only if its grant came in the last milliseconds of one; grants of this test
/// happen right after a window starts (the first phase is placed 20-150 ms into a window, later grants wait
/// for the window roll), so aligned windows attribute every request to the window that granted it.
async fn rpm_is_exact_per_window_and_windows_serve_the_most_urgent(
    kind: Kind,
    n: usize,
    mode: &str,
) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(Duration::from_millis(20)).await?;
    let config = json!({
        "model_list": [
            common::deployment("g", "dep-a", &upstream, json!({"rpm": RPM})),
            common::deployment("warm", "dep-warm", &upstream, json!({})),
        ],
        "router_settings": {"num_retries": 0, "timeout": 30, "usage_window": 1, "usage_window_mode": mode},
    });
    let cluster = Cluster::start(kind, config, upstream).await?;
    // Connections and scripts ready on every replica, through another group.
    for i in 0..cluster.n() {
        cluster
            .replica(i)
            .completion(tagged("warm", "warm", None))
            .await?;
    }

    wait_for_window_phase(20, 150).await;
    let mut fill = Vec::new();
    for i in 0..RPM {
        fill.push(
            cluster
                .spawn(i, tagged("g", &format!("fill-{i}"), Some(0)))
                .await,
        );
    }
    for (i, p) in fill.into_iter().enumerate() {
        expect_ok(&format!("fill-{i}"), p).await?;
    }
    let fill_windows: Vec<u64> = arrivals(&cluster.upstream)
        .iter()
        .filter(|a| a.tag.starts_with("fill-"))
        .map(|a| a.epoch_ms / WINDOW_MS)
        .collect();
    let first = fill_windows[0];
    ensure!(
        fill_windows.iter().all(|w| *w == first),
        "setup too slow: the {RPM} fill requests straddled a window boundary"
    );

    let mut rng = StdRng::seed_from_u64(0x5eed_0002);
    let mut pending = Vec::new();
    let mut priority_of = BTreeMap::new();
    for i in 0..n {
        let priority: u32 = rng.random_range(0..10);
        let tag = format!("r-{i}");
        priority_of.insert(tag.clone(), priority);
        pending.push((
            tag.clone(),
            cluster.spawn(i, tagged("g", &tag, Some(priority))).await,
        ));
    }
    cluster
        .wait_for_depth("g", n as u64, Duration::from_secs(5))
        .await?;
    let queued_at = common::epoch_ms();
    ensure!(
        queued_at / WINDOW_MS == first,
        "setup too slow: the burst was queued {} ms after the first window ended",
        queued_at - (first + 1) * WINDOW_MS
    );
    for (tag, p) in pending {
        expect_ok(&tag, p).await?;
    }

    let mut windows: BTreeMap<u64, Vec<(u32, String)>> = BTreeMap::new();
    for a in arrivals(&cluster.upstream) {
        if a.model != "m-dep-a" {
            continue;
        }
        let priority = priority_of.get(&a.tag).copied().unwrap_or(0);
        windows
            .entry(a.epoch_ms / WINDOW_MS)
            .or_default()
            .push((priority, a.tag));
    }
    for (w, reqs) in &windows {
        ensure!(
            reqs.len() <= RPM,
            "window {w} let {} requests through, rpm is {RPM}: {reqs:?}",
            reqs.len()
        );
    }
    let burst: Vec<(&u64, &Vec<(u32, String)>)> =
        windows.iter().filter(|(w, _)| **w > first).collect();
    let want_windows: Vec<u64> = (1..=(n / RPM) as u64).map(|k| first + k).collect();
    let got_windows: Vec<u64> = burst.iter().map(|(w, _)| **w).collect();
    let sizes: Vec<usize> = burst.iter().map(|(_, r)| r.len()).collect();
    ensure!(
        got_windows == want_windows && sizes.iter().all(|s| *s == RPM),
        "the burst was not served {RPM} per window in consecutive windows: windows {got_windows:?} (want \
         {want_windows:?}), sizes {sizes:?}"
    );
    for pair in burst.windows(2) {
        let (w0, a) = pair[0];
        let (w1, b) = pair[1];
        let worst = a.iter().map(|(p, _)| *p).max().unwrap_or(0);
        let best = b.iter().map(|(p, _)| *p).min().unwrap_or(u32::MAX);
        if worst > best {
            bail!(
                "window {w0} admitted priority {worst} while priority {best} waited until window {w1}:\n{a:?}\n{b:?}"
            );
        }
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rpm_is_exact_per_window_and_windows_serve_the_most_urgent() -> anyhow::Result<()> {
    rpm_is_exact_per_window_and_windows_serve_the_most_urgent(Kind::Redis(3), 200, "rolling").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_rpm_is_exact_per_window_and_windows_serve_the_most_urgent() -> anyhow::Result<()> {
    rpm_is_exact_per_window_and_windows_serve_the_most_urgent(Kind::Memory, 60, "rolling").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fixed_windows_rpm_is_exact_per_window_and_windows_serve_the_most_urgent(
) -> anyhow::Result<()> {
    rpm_is_exact_per_window_and_windows_serve_the_most_urgent(Kind::Redis(3), 200, "fixed").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_fixed_windows_rpm_is_exact_per_window_and_windows_serve_the_most_urgent(
) -> anyhow::Result<()> {
    rpm_is_exact_per_window_and_windows_serve_the_most_urgent(Kind::Memory, 60, "fixed").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_rpm_is_exact_per_window_and_windows_serve_the_most_urgent(
) -> anyhow::Result<()> {
    rpm_is_exact_per_window_and_windows_serve_the_most_urgent(Kind::RedisCluster(3), 200, "rolling")
        .await
}
