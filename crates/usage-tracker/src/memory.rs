//! The in-memory usage store for single-instance deployments and tests.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use store::Clock;

use crate::error::UsageError;
use crate::settings::UsageSettings;
use crate::state::UsageState;
use crate::store::{UsageOps, UsageStore};
use crate::types::{
    check_candidates, check_deployment_id, Candidate, DeploymentRef, DeploymentStats,
    LatencySample, Outcome, Reservation, ReserveOutcome, ReserveRequest, SettleReport,
};

/// [`UsageStore`] and [`UsageOps`] over a [`UsageState`] behind a mutex, timed by a [`Clock`].
///
/// Same semantics as [`crate::RedisUsage`] within one process. Clones share the state.
#[derive(Debug, Clone)]
pub struct MemoryUsage {
    state: Arc<Mutex<UsageState>>,
    clock: Clock,
}

impl MemoryUsage {
    /// A store reading the wall clock (through tokio time, so tests can pause it).
    pub fn new(settings: &UsageSettings) -> Result<MemoryUsage, UsageError> {
        MemoryUsage::with_clock(settings, Clock::new())
    }

    /// A store reading `clock`; share the clock with the queue's memory backend when composing them.
    pub fn with_clock(settings: &UsageSettings, clock: Clock) -> Result<MemoryUsage, UsageError> {
        settings.validate()?;
        Ok(MemoryUsage {
            state: Arc::new(Mutex::new(
                UsageState::new(settings.window, settings.latency_ewma_alpha)
                    .rolling(settings.rolling),
            )),
            clock,
        })
    }

    /// The state, for callers that combine usage and queue changes under their own locks (lock order is
    /// the caller's; never hold the lock across `.await`).
    pub fn shared_state(&self) -> Arc<Mutex<UsageState>> {
        Arc::clone(&self.state)
    }

    /// The clock this store reads.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    fn lock(&self) -> MutexGuard<'_, UsageState> {
        // The state stays consistent even if a holder panicked: every method finishes its writes.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl UsageStore for MemoryUsage {
    async fn renew(
        &self,
        reservations: &[Reservation],
        lease: Duration,
    ) -> Result<Vec<bool>, UsageError> {
        for r in reservations {
            check_deployment_id(&r.deployment.id)?;
        }
        let now = self.clock.now_ms();
        let mut state = self.lock();
        Ok(reservations
            .iter()
            .map(|r| state.renew(now, r, lease))
            .collect())
    }

    async fn cooldown(
        &self,
        deployment: &DeploymentRef,
        duration: Duration,
        reason: &str,
    ) -> Result<(), UsageError> {
        check_deployment_id(&deployment.id)?;
        let now = self.clock.now_ms();
        self.lock().cooldown(now, deployment, duration, reason);
        Ok(())
    }

    async fn stats(
        &self,
        group: &str,
        deployments: &[Arc<str>],
    ) -> Result<Vec<DeploymentStats>, UsageError> {
        for id in deployments {
            check_deployment_id(id)?;
        }
        let now = self.clock.now_ms();
        let state = self.lock();
        let group: Arc<str> = Arc::from(group);
        Ok(deployments
            .iter()
            .map(|id| {
                state.stats(
                    now,
                    &DeploymentRef {
                        group: Arc::clone(&group),
                        id: Arc::clone(id),
                    },
                )
            })
            .collect())
    }
}

#[async_trait]
impl UsageOps for MemoryUsage {
    async fn reserve(
        &self,
        candidates: &[Candidate],
        request: &ReserveRequest,
    ) -> Result<ReserveOutcome, UsageError> {
        check_candidates(candidates)?;
        let now = self.clock.now_ms();
        Ok(self.lock().try_reserve(now, candidates, request))
    }

    async fn settle(
        &self,
        reservation: &Reservation,
        actual_tokens: Option<u64>,
        outcome: Outcome,
        latency: Option<LatencySample>,
    ) -> Result<SettleReport, UsageError> {
        check_deployment_id(&reservation.deployment.id)?;
        let now = self.clock.now_ms();
        Ok(self
            .lock()
            .settle(now, reservation, actual_tokens, outcome, latency.as_ref()))
    }

    async fn cooled_down(
        &self,
        group: &str,
        deployments: &[Arc<str>],
    ) -> Result<Vec<(Arc<str>, Duration)>, UsageError> {
        for id in deployments {
            check_deployment_id(id)?;
        }
        let now = self.clock.now_ms();
        let state = self.lock();
        let group: Arc<str> = Arc::from(group);
        Ok(deployments
            .iter()
            .filter_map(|id| {
                let d = DeploymentRef {
                    group: Arc::clone(&group),
                    id: Arc::clone(id),
                };
                state
                    .cooldown_remaining(now, &d)
                    .map(|left| (Arc::clone(id), left))
            })
            .collect())
    }
}
