//! What the router needs from a usage backend ([`UsageStore`]) and the per-call test surface ([`UsageOps`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::UsageError;
use crate::types::{
    Candidate, DeploymentRef, DeploymentStats, LatencySample, Outcome, Reservation, ReserveOutcome,
    ReserveRequest, SettleReport,
};

/// What the request path needs from a usage backend outside the admission step: lease renewal of
/// requests in flight, cooldowns after failures, health statistics.
///
/// Reserving and settling capacity happen only inside admission's composite step (this crate's fragment in
/// `admit_v2.lua`, [`crate::UsageState`] in the memory twin). Implemented by [`crate::RedisUsage`] (Redis
/// `TIME` as the clock: `renew_v1.lua`, `stats_v1.lua`, a SET/DEL for cooldowns) and [`crate::MemoryUsage`]
/// (one process, [`store::Clock`]); both give the same results. Object safe: the router holds an
/// `Arc<dyn UsageStore>`. Every other operation on its own is [`UsageOps`].
#[async_trait]
pub trait UsageStore: Send + Sync {
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

    /// Usage and health of `deployments` of `group`, in input order (one round trip).
    async fn stats(
        &self,
        group: &str,
        deployments: &[Arc<str>],
    ) -> Result<Vec<DeploymentStats>, UsageError>;
}

/// Reserving, settling and reading cooldowns one call at a time: the **test-support surface** of the
/// usage store.
///
/// The request path never calls these (admission reserves and settles inside its composite step). They
/// exist so the fragment's `u_try_reserve` and `u_settle` are checked call by call against
/// [`crate::UsageState`]: the shared test bodies of `tests/usage.rs` run on both backends, and
/// `tests/redis.rs` checks the key layout and script reloads through them. On Redis, `reserve` is
/// `reserve_v1.lua`, `settle` is `settle_v1.lua` and `cooled_down` a PTTL pipeline.
#[async_trait]
pub trait UsageOps: UsageStore {
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

    /// The deployments of `group` among `deployments` that are cooling down, with the time left.
    async fn cooled_down(
        &self,
        group: &str,
        deployments: &[Arc<str>],
    ) -> Result<Vec<(Arc<str>, Duration)>, UsageError>;
}
