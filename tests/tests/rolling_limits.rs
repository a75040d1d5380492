//! Limits across a window boundary, three replicas on one Redis (and one replica in memory), a usage
//! window of 3 s, `rpm: 20` (or a `tpm` that holds exactly 20 of the requests sent): 20 requests just before a window
//! boundary and 20 more just after it.
//!
//! - `usage_window_mode: rolling` (the default): the second batch waits until a window after the first
//!   admissions, and no stretch of one window holds more than 20 arrivals at the upstream.
//! - `fixed`: the second batch goes at once, as the clock's window turns (40 within a fraction of a second):
//!   what LiteLLM's per-minute counters allow, and what providers that meter continuously answer with 429s.
//!
//! Arrival times at the upstream trail admission times; the bound is checked over stretches one window long
//! less a slack (`SLACK_MS`).

mod common;

use std::time::Duration;

use anyhow::ensure;
use common::{arrivals, expect_ok, tagged_with, upstream_with_latency, Cluster, Kind};
use serde_json::json;

const RPM: usize = 20;
const WINDOW_MS: u64 = 3000;
/// Arrival at the upstream trails admission by a few ms, and by a few hundred on a 2-core machine busy with
/// the rest of the suite: the in-process replica, its mock and its 40 clients share the test's two threads.
/// A rolling window that failed would let the second batch through at the boundary, 40 arrivals within
/// well under this.
const SLACK_MS: u64 = 500;
/// The tpm runs: every request asks for `MAX_TOKENS` and the upstream answers `MAX_TOKENS` words, so both the
/// estimate and the settled count are `MAX_TOKENS` plus a short prompt (under `PROMPT_SLACK` tokens): `TPM`
/// holds 20 such requests and never 21.
const MAX_TOKENS: u64 = 1000;
const PROMPT_SLACK: u64 = 25;
const TPM: u64 = RPM as u64 * (MAX_TOKENS + PROMPT_SLACK);

/// Which limit the deployment has.
#[derive(Clone, Copy)]
enum Limit {
    Rpm,
    Tpm,
}

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

/// `times` sorted, as ms after `origin`.
fn relative(times: &[u64], origin: u64) -> Vec<u64> {
    let mut v: Vec<u64> = times.iter().map(|t| t.saturating_sub(origin)).collect();
    v.sort_unstable();
    v
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

async fn batches_across_a_window_boundary(
    kind: Kind,
    mode: &str,
    limit: Limit,
) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(Duration::from_millis(10)).await?;
    let (limits, extra) = match limit {
        Limit::Rpm => (json!({"rpm": RPM}), json!({"timeout": 10})),
        Limit::Tpm => {
            upstream.set_reply(vec!["w"; MAX_TOKENS as usize].join(" "));
            (
                json!({"tpm": TPM}),
                json!({"timeout": 10, "max_tokens": MAX_TOKENS}),
            )
        }
    };
    let config = json!({
        "model_list": [
            common::deployment("g", "dep-a", &upstream, limits),
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
                    tagged_with("g", &tag, Some(0), extra.clone()),
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
                    tagged_with("g", &tag, Some(0), extra.clone()),
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
                "{most} arrivals within {} ms (the limit holds {RPM}); ms after the first arrival: {:?} then {:?}",
                WINDOW_MS - SLACK_MS,
                relative(&a, first_a),
                relative(&b, first_a),
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
    batches_across_a_window_boundary(Kind::Redis(3), "rolling", Limit::Rpm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_rolling_window_holds_rpm_across_a_window_boundary() -> anyhow::Result<()> {
    batches_across_a_window_boundary(Kind::Memory, "rolling", Limit::Rpm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fixed_windows_let_twice_rpm_through_across_a_boundary() -> anyhow::Result<()> {
    batches_across_a_window_boundary(Kind::Redis(3), "fixed", Limit::Rpm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rolling_window_holds_tpm_across_a_window_boundary() -> anyhow::Result<()> {
    batches_across_a_window_boundary(Kind::Redis(3), "rolling", Limit::Tpm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_rolling_window_holds_tpm_across_a_window_boundary() -> anyhow::Result<()> {
    batches_across_a_window_boundary(Kind::Memory, "rolling", Limit::Tpm).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fixed_windows_let_twice_tpm_through_across_a_boundary() -> anyhow::Result<()> {
    batches_across_a_window_boundary(Kind::Redis(3), "fixed", Limit::Tpm).await
}
