//! Capacity: the one place requests take deployment capacity ([`Capacity::acquire`], through the priority
//! scheduler) and give it back ([`Capacity::settle`], which also feeds cooldowns).

use std::sync::Arc;
use std::time::Duration;

use usage_tracker::{
    cooldown_decision, FailureContext, FailureKind, LatencySample, Outcome, Reservation, UsageStore,
};

use admission::{AdmissionError, AdmitRequest, Release, Scheduler, SchedulerStats};

use crate::error::{RouterError, UpstreamErrorKind};
use crate::leases::Leases;
use crate::topology::Topology;

/// Takes capacity for requests in global priority order and gives it back, applying cooldowns.
pub(crate) struct Capacity {
    scheduler: Scheduler,
    leases: Arc<Leases>,
    /// Where cooldowns are put.
    usage: Arc<dyn UsageStore>,
    /// Group sizes, cooldown settings and the queue's polling interval.
    topology: Arc<Topology>,
}

/// How a reserved request ended.
pub(crate) struct Settlement {
    /// Tokens the upstream reported (prompt + completion); `None` keeps the estimate.
    pub(crate) actual_tokens: Option<u64>,
    pub(crate) outcome: Outcome,
    pub(crate) latency: Option<LatencySample>,
    /// The upstream's Retry-After, for the cooldown length.
    pub(crate) retry_after: Option<Duration>,
}

impl Settlement {
    pub(crate) fn success(actual_tokens: Option<u64>, latency: LatencySample) -> Self {
        Self {
            actual_tokens,
            outcome: Outcome::Success,
            latency: Some(latency),
            retry_after: None,
        }
    }

    pub(crate) fn failure(err: &RouterError) -> Self {
        Self {
            actual_tokens: None,
            outcome: failure_kind(err).map_or(Outcome::Cancelled, Outcome::Failure),
            latency: None,
            retry_after: err.retry_after(),
        }
    }

    pub(crate) fn cancelled() -> Self {
        Self {
            actual_tokens: None,
            outcome: Outcome::Cancelled,
            latency: None,
            retry_after: None,
        }
    }
}

/// The usage-tracker failure kind of an upstream error (`None`: not the deployment's doing).
fn failure_kind(err: &RouterError) -> Option<FailureKind> {
    Some(match err.upstream_kind()? {
        UpstreamErrorKind::RateLimited => FailureKind::RateLimited,
        UpstreamErrorKind::Authentication => FailureKind::Authentication,
        UpstreamErrorKind::NotFound => FailureKind::NotFound,
        UpstreamErrorKind::Timeout => FailureKind::Timeout,
        UpstreamErrorKind::BadRequest | UpstreamErrorKind::PermissionDenied => {
            FailureKind::BadRequest
        }
        UpstreamErrorKind::ContentPolicyViolation => FailureKind::ContentPolicy,
        UpstreamErrorKind::ContextWindowExceeded => FailureKind::ContextWindowExceeded,
        UpstreamErrorKind::ServiceUnavailable
        | UpstreamErrorKind::InternalServer
        | UpstreamErrorKind::InvalidResponse => FailureKind::Server,
        UpstreamErrorKind::Connection => FailureKind::Connection,
    })
}

impl Capacity {
    pub(crate) fn new(
        scheduler: Scheduler,
        leases: Arc<Leases>,
        usage: Arc<dyn UsageStore>,
        topology: Arc<Topology>,
    ) -> Self {
        Self {
            scheduler,
            leases,
            usage,
            topology,
        }
    }

    /// This replica's id in the shared queue.
    pub(crate) fn owner(&self) -> &str {
        self.scheduler.owner()
    }

    /// Admission counters of this replica.
    pub(crate) fn stats(&self) -> Arc<SchedulerStats> {
        self.scheduler.stats()
    }

    /// Stops the queue pollers and cancels this replica's queued requests.
    pub(crate) async fn shutdown(&self) {
        self.scheduler.shutdown().await;
    }

    /// Reserves capacity in global priority order: at once when nobody of equal or better priority waits
    /// and a candidate has headroom, else after waiting in the group's queue. Returns the reservation and
    /// the time spent waiting.
    pub(crate) async fn acquire(
        &self,
        request: AdmitRequest,
    ) -> Result<(Reservation, Duration), RouterError> {
        let (reservation, waited) = self.scheduler.acquire(request).await.map_err(|e| match e {
            AdmissionError::QueueFull { group, depth } => RouterError::QueueFull {
                group: format!("{group} ({depth} waiting)"),
                retry_after: Some(self.topology.policy().queue.polling_interval.max(Duration::from_secs(1))),
            },
            AdmissionError::QueueTimeout { group, waited } => RouterError::QueueTimeout {
                group: group.to_string(),
                waited,
            },
            AdmissionError::NeverFits { group } => RouterError::NoDeploymentAvailable {
                group: group.to_string(),
                retry_after: None,
                reason: "no deployment can ever take this request (tokens above its limits)".to_owned(),
            },
            AdmissionError::NoCapacityBeforeDeadline { group, retry_after } => {
                RouterError::NoDeploymentAvailable {
                    group: group.to_string(),
                    retry_after: Some(retry_after),
                    reason: "every deployment is cooling down or at its rpm/tpm limit until after the request's deadline".to_owned(),
                }
            }
            AdmissionError::ShuttingDown => RouterError::ShuttingDown,
            AdmissionError::Backend(e) => RouterError::Backend(e),
            other => RouterError::Internal(other.to_string()),
        })?;
        self.leases.hold(&reservation);
        Ok((reservation, waited))
    }

    /// Takes over a reservation granted to a durable job (its lease is renewed from now on).
    pub(crate) fn adopt(&self, reservation: &Reservation) {
        self.leases.hold(reservation);
    }

    /// Gives back a reservation that never reached the upstream (capacity, request count and tokens).
    pub(crate) async fn give_back(&self, reservation: &Reservation) {
        self.leases.release(&reservation.id);
        let release = Release {
            sent: false,
            outcome: Outcome::Cancelled,
            actual_tokens: None,
            latency: None,
        };
        if let Err(e) = self.scheduler.release(reservation, &release).await {
            tracing::warn!(deployment = %reservation.deployment.id, error = %e, "giving back a grant failed (its lease expires)");
        }
    }

    /// The replica's scheduler (durable jobs' claims and submissions).
    pub(crate) fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Gives the capacity back with the real usage and, after a failure, applies the cooldown policy; returns
    /// the cooldown put on the deployment. Backend errors are logged, not returned: the response is already
    /// decided.
    pub(crate) async fn settle(
        &self,
        reservation: &Reservation,
        s: Settlement,
    ) -> Option<Duration> {
        self.leases.release(&reservation.id);
        let release = Release {
            sent: true,
            outcome: s.outcome,
            actual_tokens: s.actual_tokens,
            latency: s.latency,
        };
        let report = match self.scheduler.release(reservation, &release).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(deployment = %reservation.deployment.id, error = %e, "settle failed");
                return None;
            }
        };
        let Outcome::Failure(kind) = s.outcome else {
            return None;
        };
        let group = self.topology.group(&reservation.deployment.group);
        let group_size = group.map_or(1, |g| g.deployments.len());
        let mut policy = self.topology.policy().cooldown;
        if let Some(t) = group
            .and_then(|g| {
                g.deployments
                    .iter()
                    .find(|d| *d.id == *reservation.deployment.id)
            })
            .and_then(|d| d.cooldown_time)
        {
            policy.cooldown_time = t;
        }
        let failure = FailureContext {
            kind,
            group_size,
            report,
            retry_after: s.retry_after,
        };
        let duration = cooldown_decision(&policy, &failure)?;
        let reason = format!("{kind:?}");
        tracing::info!(
            group = %reservation.deployment.group,
            deployment = %reservation.deployment.id,
            cooldown_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            reason,
            "deployment cooling down"
        );
        if let Err(e) = self
            .usage
            .cooldown(&reservation.deployment, duration, &reason)
            .await
        {
            tracing::warn!(deployment = %reservation.deployment.id, error = %e, "cooldown failed");
            return None;
        }
        Some(duration)
    }
}

/// A reservation whose request is on its way upstream. Dropped unsettled (the client went away during the
/// call), it is settled as cancelled in the background so its in-flight slot comes back at once.
pub(crate) struct Held {
    capacity: Arc<Capacity>,
    reservation: Reservation,
    settled: bool,
}

impl Held {
    pub(crate) fn new(capacity: Arc<Capacity>, reservation: Reservation) -> Held {
        Held {
            capacity,
            reservation,
            settled: false,
        }
    }

    pub(crate) fn reservation(&self) -> &Reservation {
        &self.reservation
    }

    /// The reservation, to settle now (the guard no longer settles it).
    pub(crate) fn take(&mut self) -> Reservation {
        self.settled = true;
        self.reservation.clone()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let capacity = self.capacity.clone();
            let r = self.reservation.clone();
            handle.spawn(async move { capacity.settle(&r, Settlement::cancelled()).await });
        }
    }
}
