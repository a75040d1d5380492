//! Harness shared by the integration tests: each behaviour is one generic body run against Redis (several
//! independent pools standing in for replicas, real time) and against the in-memory store (clones sharing
//! one state, paused tokio time that auto-advances while every task sleeps).

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use queue_core::Keyspace;
use testkit::RedisServer;
use usage_tracker::{
    Candidate, DeploymentRef, Limits, MemoryUsage, RedisUsage, Reservation, ReserveOutcome,
    ReserveRequest, UsageSettings, UsageStore,
};

/// The model group every test uses.
pub const GROUP: &str = "gpt-4o";

/// Default lease for reservations in tests.
pub const LEASE: Duration = Duration::from_secs(30);

/// Stores standing in for replicas of the proxy, all sharing one backend.
pub struct Harness {
    pub replicas: Vec<Arc<dyn UsageStore>>,
    pub window: Duration,
    pub redis: Option<RedisServer>,
}

impl Harness {
    pub fn store(&self, i: usize) -> &Arc<dyn UsageStore> {
        &self.replicas[i % self.replicas.len()]
    }
}

pub fn settings(window: Duration) -> UsageSettings {
    UsageSettings {
        window,
        command_timeout: Duration::from_secs(2),
        ..UsageSettings::default()
    }
}

pub async fn redis(replicas: usize, window: Duration) -> anyhow::Result<Harness> {
    redis_on(RedisServer::start().await?, replicas, window)
}

/// [`redis`] on a given server.
pub fn redis_on(server: RedisServer, replicas: usize, window: Duration) -> anyhow::Result<Harness> {
    let mut stores: Vec<Arc<dyn UsageStore>> = Vec::new();
    for _ in 0..replicas {
        stores.push(Arc::new(RedisUsage::from_url(
            &server.url(),
            UsageSettings {
                keyspace: Keyspace::new(server.prefix())?,
                ..settings(window)
            },
        )?));
    }
    Ok(Harness {
        replicas: stores,
        window,
        redis: Some(server),
    })
}

pub fn memory(replicas: usize, window: Duration) -> Harness {
    let store = MemoryUsage::new(&settings(window)).expect("valid settings");
    Harness {
        replicas: (0..replicas)
            .map(|_| Arc::new(store.clone()) as Arc<dyn UsageStore>)
            .collect(),
        window,
        redis: None,
    }
}

/// Runs each named generic body `async fn name(&Harness) -> anyhow::Result<()>` against both backends.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident: replicas = $n:expr, window_ms = $w:expr;)*) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() -> anyhow::Result<()> {
                let h = $crate::common::redis($n, std::time::Duration::from_millis($w)).await?;
                $crate::$name(&h).await
            }

            #[tokio::test(start_paused = true)]
            async fn memory() -> anyhow::Result<()> {
                let h = $crate::common::memory($n, std::time::Duration::from_millis($w));
                $crate::$name(&h).await
            }
        }
    )*};
}

pub fn dep(id: &str) -> DeploymentRef {
    DeploymentRef::new(GROUP, id)
}

pub fn cand(id: &str, limits: Limits) -> Candidate {
    Candidate {
        deployment: dep(id),
        limits,
    }
}

pub fn rpm(n: u64) -> Limits {
    Limits {
        rpm: Some(n),
        ..Limits::default()
    }
}

pub fn tpm(n: u64) -> Limits {
    Limits {
        tpm: Some(n),
        ..Limits::default()
    }
}

pub fn parallel(n: u32) -> Limits {
    Limits {
        max_parallel: Some(n),
        ..Limits::default()
    }
}

pub fn request(est: u64) -> ReserveRequest {
    ReserveRequest::new(est, est / 2, LEASE)
}

pub async fn reserve_ok(
    store: &Arc<dyn UsageStore>,
    candidates: &[Candidate],
    request: &ReserveRequest,
) -> anyhow::Result<Reservation> {
    match store.reserve(candidates, request).await? {
        ReserveOutcome::Reserved(r) => Ok(r),
        other => bail!("expected a reservation, got {other:?}"),
    }
}

/// The `retry_in` of an `Unavailable` answer (fails on a reservation).
pub async fn reserve_none(
    store: &Arc<dyn UsageStore>,
    candidates: &[Candidate],
    request: &ReserveRequest,
) -> anyhow::Result<Option<Duration>> {
    match store.reserve(candidates, request).await? {
        ReserveOutcome::Unavailable { retry_in } => Ok(retry_in),
        other => bail!("expected no capacity, got {other:?}"),
    }
}

/// Reserves, sleeping for the store's "retry in" hint between attempts; each hint must be at most
/// `max_hint`, and the hint must be right: at most 3 attempts.
pub async fn reserve_after_hint(
    store: &Arc<dyn UsageStore>,
    candidates: &[Candidate],
    est: u64,
    max_hint: Duration,
) -> anyhow::Result<Reservation> {
    for _ in 0..3 {
        match store.reserve(candidates, &request(est)).await? {
            ReserveOutcome::Reserved(r) => return Ok(r),
            ReserveOutcome::Unavailable { retry_in } => {
                let wait = retry_in.context("no capacity and no retry hint")?;
                anyhow::ensure!(wait <= max_hint, "hint {wait:?} above {max_hint:?}");
                tokio::time::sleep(wait).await;
            }
        }
    }
    bail!("still no capacity after sleeping for the hint three times")
}

/// Waits (by the store's own window-roll hint, read from a probe deployment) until at least `min_left`
/// of the current window remains, so a short test cannot straddle a window boundary.
pub async fn align(h: &Harness, min_left: Duration) -> anyhow::Result<()> {
    let probe = [cand("probe", rpm(1))];
    let store = h.store(0);
    let _ = store.reserve(&probe, &request(1)).await?;
    let left = reserve_none(store, &probe, &request(1))
        .await?
        .context("probe: no window-roll hint")?;
    anyhow::ensure!(left <= h.window, "roll hint {left:?} above the window");
    if left < min_left {
        tokio::time::sleep(left).await;
    }
    Ok(())
}
