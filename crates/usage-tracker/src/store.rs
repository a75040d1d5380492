//! The `UsageStore` trait: what the router needs from a usage backend.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::UsageError;
use crate::types::{
    Candidate, DeploymentRef, DeploymentStats, LatencySample, Outcome, Reservation, ReserveOutcome,
    ReserveRequest, SettleReport,
};

/// Per-deployment usage shared by every replica: window counters, in-flight leases, cooldowns and health.
///
/// Implemented by [`crate::RedisUsage`] (one atomic script per call, Redis `TIME` as the clock) and
/// [`crate::MemoryUsage`] (one process, [`store::Clock`]); both give the same results. Object safe:
/// the router holds an `Arc<dyn UsageStore>`.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// The length of the fixed RPM/TPM window.
    fn window(&self) -> Duration;

    /// Walks `candidates` in `request.order` and reserves on the first with headroom: RPM + 1, TPM +
    /// `est_tokens` in the current window and an in-flight lease of `request.lease` (counted against
    /// `max_parallel`). Skips deployments in cooldown and those whose `max_input_tokens` is below
    /// `prompt_tokens`. Atomic across replicas: limits hold exactly.
    ///
    /// All candidates must belong to one group. No candidates gives `Unavailable { retry_in: None }`.
    async fn reserve(
        &self,
        candidates: &[Candidate],
        request: &ReserveRequest,
    ) -> Result<ReserveOutcome, UsageError>;

    /// Settles a reservation: corrects TPM by `actual_tokens - est_tokens` if still in the same window
    /// (`None` keeps the estimate), ends the in-flight lease, counts the outcome in the current window and
    /// folds `latency` into the deployment's EWMAs. Returns the window's counters for the cooldown policy.
    async fn settle(
        &self,
        reservation: &Reservation,
        actual_tokens: Option<u64>,
        outcome: Outcome,
        latency: Option<LatencySample>,
    ) -> Result<SettleReport, UsageError>;

    /// Extends the in-flight leases of `reservations` to now + `lease` (one call per group). Returns, in
    /// input order, whether each lease was still alive; an ended or expired lease is not revived.
    async fn renew(
        &self,
        reservations: &[Reservation],
        lease: Duration,
    ) -> Result<Vec<bool>, UsageError>;

    /// Puts a deployment in cooldown for `duration` (replacing any current cooldown); a zero duration
    /// lifts it. `reason` is stored for operators.
    async fn cooldown(
        &self,
        deployment: &DeploymentRef,
        duration: Duration,
        reason: &str,
    ) -> Result<(), UsageError>;

    /// The deployments of `group` among `deployments` that are cooling down, with the time left.
    async fn cooled_down(
        &self,
        group: &str,
        deployments: &[Arc<str>],
    ) -> Result<Vec<(Arc<str>, Duration)>, UsageError>;

    /// Usage and health of `deployments` of `group`, in input order (one round trip).
    async fn stats(
        &self,
        group: &str,
        deployments: &[Arc<str>],
    ) -> Result<Vec<DeploymentStats>, UsageError>;
}
