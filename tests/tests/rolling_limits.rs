//! Limits across a window boundary, three replicas on one Redis (and one replica in memory), a 2 s usage
//! window, `rpm: 20`: 20 requests just before a window boundary and 20 more just after it.
//!
//! - `usage_window_mode: rolling` (the default): the second batch waits until a window after the first
//!   admissions, and no stretch of one window holds more than 20 arrivals at the upstream.
//! - `fixed`: the second batch goes at once, as the clock's window turns (40 within a fraction of a second):
//!   what LiteLLM's per-minute counters allow, and what providers that meter continuously answer with 429s.
//!
//! Arrival times at the upstream trail admission times by a few milliseconds; the bound is checked over
//! stretches one window long less a slack of 100 ms.

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::{arrivals, expect_ok, tagged_with, upstream_with_latency, Cluster, Kind};
use serde_json::json;

const RPM: usize = 20;
const WINDOW_MS: u64 = 2000;
const SLACK_MS: u64 = 100;

/// Sleeps (pacing only) until the wall clock is between `from` and `to` ms into a usage window.
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

/// The most arrivals of `tag_prefix` in any stretch of `span_ms`.
fn most_in_any_span(times: &[u64], span_ms: u64) -> usize {
    times
        .iter()
        .map(|t| {
            times
                .iter()
                .filter(|u| **u >= *t && **u < t + span_ms)
                .count()
        })
        .max()
        .unwrap_or(0)
}

async fn batches_across_a_window_boundary(kind: Kind, mode: &str) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(Duration::from_millis(10)).await?;
    let config = json!({
        "model_list": [
            common::deployment("g", "dep-a", &upstream, json!({"rpm": RPM})),
            common::deployment("warm", "dep-warm", &upstream, json!({})),
        ],
        "router_settings": {
            "num_retries": 0, "timeout": 30,
            "usage_window": WINDOW_MS as f64 / 1000.0, "usage_window_mode": mode,
        },
    });
    let cluster = Cluster::start(kind, config, upstream).await?;
    for i in 0..cluster.n() {
        cluster
            .replica(i)
            .completion(tagged_with("warm", "warm", None, json!({})))
            .await?;
    }
    // The first batch 250-350 ms before a window boundary, the second 50-150 ms after it.
    wait_for_window_phase(WINDOW_MS - 350, WINDOW_MS - 250).await;
    let mut first = Vec::new();
    for i in 0..RPM {
        let tag = format!("a-{i}");
        first.push((
            tag.clone(),
            cluster
                .spawn(
                    i % cluster.n(),
                    tagged_with("g", &tag, Some(0), json!({"timeout": 10})),
                )
                .await,
        ));
    }
    for (tag, p) in first {
        expect_ok(&tag, p).await?;
    }
    wait_for_window_phase(50, 150).await;
    let mut second = Vec::new();
    for i in 0..RPM {
        let tag = format!("b-{i}");
        second.push((
            tag.clone(),
            cluster
                .spawn(
                    i % cluster.n(),
                    tagged_with("g", &tag, Some(0), json!({"timeout": 10})),
                )
                .await,
        ));
    }
    for (tag, p) in second {
        expect_ok(&tag, p).await?;
    }

    let seen = arrivals(&cluster.upstream);
    let times = |prefix: &str| -> Vec<u64> {
        seen.iter()
            .filter(|a| a.tag.starts_with(prefix))
            .map(|a| a.epoch_ms)
            .collect()
    };
    let (a, b) = (times("a-"), times("b-"));
    ensure!(
        a.len() == RPM && b.len() == RPM,
        "arrivals: {} and {}",
        a.len(),
        b.len()
    );
    let first_a = a.iter().min().copied().unwrap_or(0);
    let first_b = b.iter().min().copied().unwrap_or(0);
    let all: Vec<u64> = a.iter().chain(&b).copied().collect();
    let most = most_in_any_span(&all, WINDOW_MS - SLACK_MS);
    match mode {
        "rolling" => {
            ensure!(
                most <= RPM,
                "{most} arrivals within {} ms (rpm {RPM})",
                WINDOW_MS - SLACK_MS
            );
            ensure!(
                first_b + SLACK_MS >= first_a + WINDOW_MS,
                "the second batch started {} ms after the first (window {WINDOW_MS} ms)",
                first_b - first_a
            );
        }
        _ => ensure!(
            most == 2 * RPM && first_b < first_a + WINDOW_MS / 2,
            "fixed windows: expected both batches within one window's stretch, got at most {most}, the \
             second {} ms after the first",
            first_b - first_a
        ),
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rolling_window_holds_rpm_across_a_window_boundary() -> anyhow::Result<()> {
    batches_across_a_window_boundary(Kind::Redis(3), "rolling").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_rolling_window_holds_rpm_across_a_window_boundary() -> anyhow::Result<()> {
    batches_across_a_window_boundary(Kind::Memory, "rolling").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fixed_windows_let_twice_rpm_through_across_a_boundary() -> anyhow::Result<()> {
    batches_across_a_window_boundary(Kind::Redis(3), "fixed").await
}
