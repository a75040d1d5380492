//! Behaviour of both usage stores: the same bodies run against Redis and memory (see `common`).

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use common::*;
use futures::future::join_all;
use usage_tracker::{
    CandidateOrder, DeploymentRef, FailureKind, LatencySample, Limits, Outcome, Reservation,
    ReserveOutcome, ReserveRequest, SettleReport, UsageError,
};

// Tests that must not straddle a window roll use hour-long windows: `align` then almost never waits.
both_backends! {
    rpm_is_exact_across_replicas: replicas = 3, window_ms = 1000;
    tpm_reserves_estimates_and_settles_actuals: replicas = 2, window_ms = 3_600_000;
    max_parallel_holds_under_contention: replicas = 3, window_ms = 3_600_000;
    unrenewed_lease_expires_and_renew_extends: replicas = 2, window_ms = 3_600_000;
    cooldowns_are_shared_skipped_and_expire: replicas = 2, window_ms = 3_600_000;
    candidate_orders: replicas = 2, window_ms = 3_600_000;
    unavailable_carries_next_capacity_time: replicas = 1, window_ms = 3_600_000;
    settle_reports_and_stats: replicas = 2, window_ms = 3_600_000;
    invalid_arguments_are_rejected: replicas = 1, window_ms = 3_600_000;
    idle_usage_expires_after_two_windows: replicas = 1, window_ms = 500;
}

/// Fires `n` concurrent reserves spread over the replicas.
async fn burst(
    h: &common::Harness,
    candidates: &[usage_tracker::Candidate],
    n: usize,
) -> anyhow::Result<(Vec<Reservation>, Vec<Option<Duration>>)> {
    let calls = (0..n).map(|i| {
        let store = Arc::clone(h.store(i));
        let candidates = candidates.to_vec();
        tokio::spawn(async move { store.reserve(&candidates, &request(10)).await })
    });
    let mut reserved = Vec::new();
    let mut hints = Vec::new();
    for outcome in join_all(calls).await {
        match outcome?? {
            ReserveOutcome::Reserved(r) => reserved.push(r),
            ReserveOutcome::Unavailable { retry_in } => hints.push(retry_in),
        }
    }
    Ok((reserved, hints))
}

async fn rpm_is_exact_across_replicas(h: &Harness) -> anyhow::Result<()> {
    let d = [cand("d1", rpm(20))];
    // Start right after a window roll (observed through the store's own clock).
    align(h, h.window).await?;
    let (first, hints) = burst(h, &d, 300).await?;
    for hint in &hints {
        let hint = hint.context("rpm-full answer without a retry hint")?;
        ensure!(hint <= h.window, "hint {hint:?} beyond one window");
    }
    // Sleep until the roll by the hint, then fire again.
    let wait = reserve_none(h.store(0), &d, &request(10))
        .await?
        .context("no hint")?;
    ensure!(wait <= h.window);
    tokio::time::sleep(wait).await;
    let (second, _) = burst(h, &d, 300).await?;

    let mut per_window: BTreeMap<u64, usize> = BTreeMap::new();
    for r in first.iter().chain(&second) {
        *per_window.entry(r.window_start_ms).or_default() += 1;
    }
    for (window, count) in &per_window {
        ensure!(
            *count <= 20,
            "{count} admissions in window {window}: {per_window:?}"
        );
    }
    let w0 = first
        .iter()
        .map(|r| r.window_start_ms)
        .min()
        .context("nothing admitted")?;
    let window_ms = h.window.as_millis() as u64;
    ensure!(
        per_window.get(&w0) == Some(&20),
        "first window: {per_window:?}"
    );
    ensure!(
        per_window.get(&(w0 + window_ms)) == Some(&20),
        "next window: {per_window:?}"
    );
    Ok(())
}

async fn tpm_reserves_estimates_and_settles_actuals(h: &Harness) -> anyhow::Result<()> {
    align(h, Duration::from_secs(10)).await?;
    let (a, b) = (h.store(0), h.store(1));
    let d = [cand("d1", tpm(1000))];
    let r1 = reserve_ok(a, &d, &request(300)).await?;
    let r2 = reserve_ok(b, &d, &request(300)).await?;
    let r3 = reserve_ok(a, &d, &request(300)).await?;
    ensure!(
        reserve_none(b, &d, &request(300)).await?.is_some(),
        "window roll hint expected"
    );
    // A request that fits alone still fits the remaining 100.
    let small = reserve_ok(b, &d, &request(100)).await?;
    b.settle(&small, Some(100), Outcome::Success, None).await?;

    // Smaller actual usage frees the difference within the window (settled on another replica).
    b.settle(&r1, Some(100), Outcome::Success, None).await?;
    let r4 = reserve_ok(a, &d, &request(200)).await?;
    ensure!(reserve_none(a, &d, &request(1)).await?.is_some());
    let stats = a.stats(GROUP, &[Arc::from("d1")]).await?;
    ensure!(
        stats[0].tpm_used == 1000 && stats[0].rpm_used == 5,
        "{stats:?}"
    );

    // Larger actual usage is counted; unknown usage keeps the estimate.
    a.settle(&r2, Some(500), Outcome::Success, None).await?;
    b.settle(&r3, None, Outcome::Success, None).await?;
    let stats = b.stats(GROUP, &[Arc::from("d1")]).await?;
    ensure!(stats[0].tpm_used == 1200, "{stats:?}");
    ensure!(reserve_none(a, &d, &request(1)).await?.is_some());

    // An estimate above the deployment's tpm never fits: no hint.
    ensure!(reserve_none(a, &d, &request(1001)).await?.is_none());

    // Settling to zero (never sent) frees the whole estimate, never below zero.
    a.settle(&r4, Some(0), Outcome::Cancelled, None).await?;
    let stats = a.stats(GROUP, &[Arc::from("d1")]).await?;
    ensure!(stats[0].tpm_used == 1000, "{stats:?}");
    Ok(())
}

async fn max_parallel_holds_under_contention(h: &Harness) -> anyhow::Result<()> {
    align(h, Duration::from_secs(20)).await?;
    let d = Arc::new([cand("d1", parallel(3))]);
    let holders = Arc::new(AtomicUsize::new(0));
    let max_holders = Arc::new(AtomicUsize::new(0));
    let tasks = (0..100).map(|i| {
        let store = Arc::clone(h.store(i));
        let (d, holders, max_holders) = (
            Arc::clone(&d),
            Arc::clone(&holders),
            Arc::clone(&max_holders),
        );
        tokio::spawn(async move {
            loop {
                match store.reserve(&d[..], &request(10)).await? {
                    ReserveOutcome::Reserved(r) => {
                        let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                        max_holders.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(3)).await;
                        holders.fetch_sub(1, Ordering::SeqCst);
                        store.settle(&r, Some(10), Outcome::Success, None).await?;
                        return Ok::<(), UsageError>(());
                    }
                    ReserveOutcome::Unavailable { retry_in } => {
                        // Leases are long; holders settle sooner, so poll briefly.
                        let hint = retry_in.unwrap_or(LEASE);
                        assert!(hint <= LEASE, "hint {hint:?} beyond the lease");
                        tokio::time::sleep(hint.min(Duration::from_millis(2))).await;
                    }
                }
            }
        })
    });
    for t in join_all(tasks).await {
        t??;
    }
    let max = max_holders.load(Ordering::SeqCst);
    ensure!((1..=3).contains(&max), "{max} concurrent holders");
    let stats = h.store(0).stats(GROUP, &[Arc::from("d1")]).await?;
    ensure!(
        stats[0].in_flight == 0 && stats[0].rpm_used == 100,
        "{stats:?}"
    );
    Ok(())
}

async fn unrenewed_lease_expires_and_renew_extends(h: &Harness) -> anyhow::Result<()> {
    let (a, b) = (h.store(0), h.store(1));
    let d = [cand("d1", parallel(1))];
    let short = Duration::from_millis(300);
    let r1 = reserve_ok(a, &d, &ReserveRequest::new(10, 5, short)).await?;
    let hint = reserve_none(b, &d, &request(10))
        .await?
        .context("lease hint")?;
    ensure!(hint <= short, "hint {hint:?}");

    // Renewed (from another replica) it outlives its first expiry.
    ensure!(
        b.renew(std::slice::from_ref(&r1), Duration::from_secs(1))
            .await?
            == [true]
    );
    let hint = reserve_none(b, &d, &request(10))
        .await?
        .context("lease hint")?;
    ensure!(
        hint > Duration::from_millis(500) && hint <= Duration::from_secs(1),
        "hint {hint:?}"
    );

    // Not renewed again, it expires and frees its slot by the hint.
    let r2 = reserve_after_hint(b, &d, 10, Duration::from_secs(1)).await?;
    ensure!(
        a.renew(std::slice::from_ref(&r1), LEASE).await? == [false],
        "expired lease revived"
    );
    let stats = a.stats(GROUP, &[Arc::from("d1")]).await?;
    ensure!(stats[0].in_flight == 1, "{stats:?}");

    // A settled lease is not revived either; renew reports per reservation.
    b.settle(&r2, None, Outcome::Success, None).await?;
    let r3 = reserve_ok(a, &d, &request(10)).await?;
    ensure!(a.renew(&[r2, r3.clone()], LEASE).await? == [false, true]);
    a.settle(&r3, None, Outcome::Success, None).await?;
    let stats = b.stats(GROUP, &[Arc::from("d1")]).await?;
    ensure!(stats[0].in_flight == 0, "{stats:?}");
    Ok(())
}

async fn cooldowns_are_shared_skipped_and_expire(h: &Harness) -> anyhow::Result<()> {
    let (a, b) = (h.store(0), h.store(1));
    let both = [cand("d1", Limits::default()), cand("d2", Limits::default())];
    let ids: Vec<Arc<str>> = vec![Arc::from("d1"), Arc::from("d2")];
    let cool = Duration::from_millis(400);
    a.cooldown(&dep("d1"), cool, "429 from upstream").await?;

    let cooled = b.cooled_down(GROUP, &ids).await?;
    ensure!(cooled.len() == 1 && &*cooled[0].0 == "d1", "{cooled:?}");
    ensure!(
        cooled[0].1 > Duration::ZERO && cooled[0].1 <= cool,
        "{cooled:?}"
    );
    let stats = b.stats(GROUP, &ids).await?;
    ensure!(
        stats[0].cooldown_remaining.is_some_and(|d| d <= cool),
        "{stats:?}"
    );
    ensure!(stats[1].cooldown_remaining.is_none(), "{stats:?}");

    // Skipped while cooling down.
    let r = reserve_ok(b, &both, &request(10)).await?;
    ensure!(&*r.deployment.id == "d2" && r.candidate_index == 1, "{r:?}");
    // Alone, it is available again when the cooldown ends: the hint says when.
    let r = reserve_after_hint(b, &both[..1], 10, cool).await?;
    ensure!(&*r.deployment.id == "d1");
    ensure!(a.cooled_down(GROUP, &ids).await?.is_empty());

    // A zero duration lifts a cooldown.
    a.cooldown(&dep("d2"), Duration::from_secs(60), "manual")
        .await?;
    ensure!(b.cooled_down(GROUP, &ids).await?.len() == 1);
    b.cooldown(&dep("d2"), Duration::ZERO, "lifted").await?;
    ensure!(a.cooled_down(GROUP, &ids).await?.is_empty());
    Ok(())
}

async fn candidate_orders(h: &Harness) -> anyhow::Result<()> {
    align(h, Duration::from_secs(10)).await?;
    let (a, b) = (h.store(0), h.store(1));

    // As given: the first with headroom.
    let given = [cand("g1", rpm(1)), cand("g2", Limits::default())];
    ensure!(&*reserve_ok(a, &given, &request(10)).await?.deployment.id == "g1");
    let r = reserve_ok(b, &given, &request(10)).await?;
    ensure!(&*r.deployment.id == "g2" && r.candidate_index == 1);

    // Lowest TPM first, tier before TPM.
    let unlimited = Limits::default();
    reserve_ok(a, &[cand("t1", unlimited)], &request(500)).await?;
    reserve_ok(b, &[cand("t2", unlimited)], &request(100)).await?;
    reserve_ok(a, &[cand("t0", unlimited)], &request(900)).await?;
    let by_tpm = [cand("t1", unlimited), cand("t2", unlimited)];
    let req = request(10).with_order(CandidateOrder::LowestTpm);
    let r = reserve_ok(a, &by_tpm, &req).await?;
    ensure!(&*r.deployment.id == "t2" && r.candidate_index == 1, "{r:?}");
    let tiered = [
        cand(
            "t2",
            Limits {
                tier: 1,
                ..unlimited
            },
        ),
        cand(
            "t0",
            Limits {
                tier: 0,
                ..unlimited
            },
        ),
    ];
    let r = reserve_ok(
        b,
        &tiered,
        &request(10).with_order(CandidateOrder::LowestTpm),
    )
    .await?;
    ensure!(&*r.deployment.id == "t0", "tier first: {r:?}");

    // Fewest in flight, counting leases taken through other replicas.
    reserve_ok(a, &[cand("f1", unlimited)], &request(1)).await?;
    reserve_ok(a, &[cand("f1", unlimited)], &request(1)).await?;
    reserve_ok(b, &[cand("f2", unlimited)], &request(1)).await?;
    let fewest = [cand("f1", unlimited), cand("f2", unlimited)];
    let req = || request(1).with_order(CandidateOrder::FewestInFlight);
    let r = reserve_ok(b, &fewest, &req()).await?;
    ensure!(&*r.deployment.id == "f2", "{r:?}");
    // Now 2 and 2: ties keep the given order.
    let r = reserve_ok(a, &fewest, &req()).await?;
    ensure!(&*r.deployment.id == "f1", "{r:?}");
    // Settling frees: f2 has fewer again.
    a.settle(&r, None, Outcome::Success, None).await?;
    let r2 = reserve_ok(a, &[cand("f1", unlimited)], &request(1)).await?;
    let released = reserve_ok(b, &fewest, &req()).await?;
    ensure!(
        &*released.deployment.id == "f2",
        "{released:?} after {r2:?}"
    );
    Ok(())
}

async fn unavailable_carries_next_capacity_time(h: &Harness) -> anyhow::Result<()> {
    align(h, Duration::from_secs(10)).await?;
    let s = h.store(0);
    let req = |est: u64, prompt: u64| ReserveRequest::new(est, prompt, LEASE);

    // Never: prompt above max_input_tokens, estimate above tpm, zero limits, no candidates.
    let small_ctx = Limits {
        max_input_tokens: Some(100),
        ..Limits::default()
    };
    ensure!(reserve_none(s, &[cand("n1", small_ctx)], &req(300, 200))
        .await?
        .is_none());
    ensure!(
        reserve_ok(s, &[cand("n1", small_ctx)], &req(300, 100))
            .await?
            .deployment
            .id
            .as_ref()
            == "n1"
    );
    ensure!(reserve_none(s, &[cand("n2", tpm(100))], &req(101, 1))
        .await?
        .is_none());
    ensure!(reserve_none(s, &[cand("n3", rpm(0))], &req(1, 1))
        .await?
        .is_none());
    ensure!(reserve_none(s, &[cand("n4", parallel(0))], &req(1, 1))
        .await?
        .is_none());
    ensure!(reserve_none(s, &[], &req(1, 1)).await?.is_none());

    // rpm full: the window roll (at least the 10 s we aligned for, at most one window).
    reserve_ok(s, &[cand("w", rpm(1))], &req(1, 1)).await?;
    let roll = reserve_none(s, &[cand("w", rpm(1))], &req(1, 1))
        .await?
        .context("roll")?;
    ensure!(
        roll > Duration::from_secs(9) && roll <= h.window,
        "roll {roll:?}"
    );

    // max_parallel full: the earliest lease expiry.
    let p = [cand("p", parallel(2))];
    reserve_ok(
        s,
        &p,
        &ReserveRequest::new(1, 1, Duration::from_millis(5000)),
    )
    .await?;
    reserve_ok(
        s,
        &p,
        &ReserveRequest::new(1, 1, Duration::from_millis(3000)),
    )
    .await?;
    let lease = reserve_none(s, &p, &req(1, 1)).await?.context("lease")?;
    ensure!(
        lease > Duration::from_millis(2000) && lease <= Duration::from_millis(3000),
        "lease {lease:?}"
    );

    // Cooling down: the cooldown end.
    s.cooldown(&dep("c"), Duration::from_millis(4000), "5xx")
        .await?;
    let c = [cand("c", Limits::default())];
    let cool = reserve_none(s, &c, &req(1, 1)).await?.context("cooldown")?;
    ensure!(
        cool > Duration::from_millis(3000) && cool <= Duration::from_millis(4000),
        "cool {cool:?}"
    );

    // Several blockers on one deployment: the latest; several deployments: the earliest.
    s.cooldown(&dep("w"), Duration::from_millis(4000), "5xx")
        .await?;
    let both = reserve_none(s, &[cand("w", rpm(1))], &req(1, 1))
        .await?
        .context("both")?;
    ensure!(both > Duration::from_secs(9), "cooldown + rpm: {both:?}");
    let any = [
        cand("w", rpm(1)),
        cand("n3", rpm(0)),
        p[0].clone(),
        c[0].clone(),
    ];
    let earliest = reserve_none(s, &any, &req(1, 1))
        .await?
        .context("earliest")?;
    ensure!(
        earliest <= Duration::from_millis(3000) && earliest > Duration::from_millis(2000),
        "{earliest:?}"
    );
    Ok(())
}

async fn settle_reports_and_stats(h: &Harness) -> anyhow::Result<()> {
    align(h, Duration::from_secs(10)).await?;
    let (a, b) = (h.store(0), h.store(1));
    let d = [cand("d1", Limits::default())];
    let mut rs = Vec::new();
    for i in 0..6 {
        rs.push(reserve_ok(h.store(i), &d, &request(10)).await?);
    }
    let sample = |total_ms: u64, out: u64, ttft_ms: Option<u64>| LatencySample {
        total: Duration::from_millis(total_ms),
        ttft: ttft_ms.map(Duration::from_millis),
        output_tokens: out,
    };
    let report = |requests, failures| SettleReport {
        requests_in_window: requests,
        failures_in_window: failures,
    };
    ensure!(
        a.settle(
            &rs[0],
            Some(10),
            Outcome::Success,
            Some(sample(1000, 100, Some(200)))
        )
        .await?
            == report(1, 0)
    );
    ensure!(
        b.settle(&rs[1], None, Outcome::Failure(FailureKind::Server), None)
            .await?
            == report(2, 1)
    );
    ensure!(a.settle(&rs[2], Some(0), Outcome::Cancelled, None).await? == report(2, 1));
    ensure!(
        b.settle(
            &rs[3],
            Some(10),
            Outcome::Success,
            Some(sample(2000, 100, Some(400)))
        )
        .await?
            == report(3, 1)
    );

    let stats = a
        .stats(GROUP, &[Arc::from("d1"), Arc::from("unused")])
        .await?;
    let s = &stats[0];
    ensure!(s.rpm_used == 6 && s.in_flight == 2, "{s:?}");
    ensure!(
        s.successes_in_window == 2 && s.failures_in_window == 1,
        "{s:?}"
    );
    // EWMA with weight 0.2: 10 then 20 ms/token -> 12; ttft 200 then 400 -> 240.
    ensure!(
        s.latency_ms_per_token == Some(12.0) && s.ttft_ms == Some(240.0),
        "{s:?}"
    );
    ensure!(s.cooldown_remaining.is_none() && s.tpm_used == 50, "{s:?}");
    ensure!(
        stats[1] == usage_tracker_stats_empty("unused"),
        "{:?}",
        stats[1]
    );

    // No output tokens and no ttft: the EWMAs stay.
    a.settle(
        &rs[4],
        None,
        Outcome::Failure(FailureKind::Timeout),
        Some(sample(5000, 0, None)),
    )
    .await?;
    let s = &b.stats(GROUP, &[Arc::from("d1")]).await?[0];
    ensure!(
        s.latency_ms_per_token == Some(12.0) && s.failures_in_window == 2 && s.in_flight == 1,
        "{s:?}"
    );
    Ok(())
}

fn invalid<T>(r: Result<T, UsageError>) -> bool {
    matches!(r, Err(UsageError::InvalidArgument(_)))
}

fn usage_tracker_stats_empty(id: &str) -> usage_tracker::DeploymentStats {
    usage_tracker::DeploymentStats {
        id: Arc::from(id),
        rpm_used: 0,
        tpm_used: 0,
        in_flight: 0,
        latency_ms_per_token: None,
        ttft_ms: None,
        cooldown_remaining: None,
        successes_in_window: 0,
        failures_in_window: 0,
    }
}

async fn invalid_arguments_are_rejected(h: &Harness) -> anyhow::Result<()> {
    let s = h.store(0);
    let mixed = [
        cand("d1", Limits::default()),
        usage_tracker::Candidate {
            deployment: DeploymentRef::new("other-group", "d2"),
            limits: Limits::default(),
        },
    ];
    ensure!(invalid(s.reserve(&mixed, &request(1)).await));
    for bad in ["", "a{b", "a}b", "a:if", "a|b", "a b", "é"] {
        ensure!(
            invalid(
                s.reserve(&[cand(bad, Limits::default())], &request(1))
                    .await
            ),
            "{bad:?}"
        );
        ensure!(
            invalid(s.cooldown(&dep(bad), Duration::from_secs(1), "x").await),
            "{bad:?}"
        );
        ensure!(invalid(s.stats(GROUP, &[Arc::from(bad)]).await), "{bad:?}");
    }
    // Any UTF-8 group name works.
    let odd = usage_tracker::Candidate {
        deployment: DeploymentRef::new("grüppe {eu}%", "d1"),
        limits: Limits::default(),
    };
    let r = reserve_ok(s, &[odd], &request(1)).await?;
    ensure!(s.stats("grüppe {eu}%", &[Arc::from("d1")]).await?[0].in_flight == 1);
    s.settle(&r, None, Outcome::Success, None).await?;
    Ok(())
}

async fn idle_usage_expires_after_two_windows(h: &Harness) -> anyhow::Result<()> {
    let s = h.store(0);
    let ids = [Arc::<str>::from("d1")];
    let r = reserve_ok(s, &[cand("d1", Limits::default())], &request(1)).await?;
    let sample = LatencySample {
        total: Duration::from_millis(100),
        ttft: None,
        output_tokens: 10,
    };
    s.settle(&r, None, Outcome::Success, Some(sample)).await?;
    let settled = tokio::time::Instant::now();
    tokio::time::sleep(h.window).await;
    // Health survives window rolls while the hash lives...
    ensure!(s.stats(GROUP, &ids).await?[0].latency_ms_per_token == Some(10.0));
    // ...and is forgotten at the end of the second window after the last write's.
    loop {
        if s.stats(GROUP, &ids).await?[0]
            .latency_ms_per_token
            .is_none()
        {
            break;
        }
        ensure!(
            settled.elapsed() < 4 * h.window,
            "still there after {:?}",
            settled.elapsed()
        );
        tokio::time::sleep(h.window / 10).await;
    }
    ensure!(settled.elapsed() >= 2 * h.window - Duration::from_millis(50));
    Ok(())
}
