//! Capacity: the one place requests take deployment capacity ([`RouterInner::acquire`], through the
//! priority scheduler) and give it back ([`RouterInner::settle`], which also feeds cooldowns).

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use queue_core::Priority;
use tokio::time::Instant;
use usage_tracker::{
    cooldown_decision, Candidate, CandidateOrder, FailureContext, FailureKind, LatencySample,
    Outcome, Reservation,
};

use crate::scheduler::{AdmissionError, AdmitRequest, Release};

use crate::error::{RouterError, UpstreamErrorKind};
use crate::router::RouterInner;

/// A request for capacity in one model group.
pub(crate) struct Ask<'a> {
    pub(crate) group: &'a str,
    /// Deployments in the strategy's preference order.
    pub(crate) candidates: Vec<Candidate>,
    pub(crate) order: CandidateOrder,
    pub(crate) est_tokens: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) priority: Priority,
    pub(crate) deadline: Instant,
    pub(crate) force_queue: bool,
    /// Not the request's first attempt: cooldowns refuse it at once instead of queueing it.
    pub(crate) retry: bool,
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

impl RouterInner {
    /// Reserves capacity in global priority order: at once when nobody of equal or better priority waits
    /// and a candidate has headroom, else after waiting in the group's queue. Returns the reservation and
    /// the time spent waiting.
    pub(crate) async fn acquire(
        &self,
        ask: Ask<'_>,
    ) -> Result<(Reservation, Duration), RouterError> {
        let group: Arc<str> = Arc::from(ask.group);
        let request = AdmitRequest {
            group,
            candidates: ask.candidates,
            order: ask.order,
            est_tokens: ask.est_tokens,
            prompt_tokens: ask.prompt_tokens,
            priority: ask.priority,
            deadline: ask.deadline,
            force_queue: ask.force_queue,
            lease: self.topology.policy.queue.inflight_lease,
            retry: ask.retry,
        };
        let (reservation, waited) = self.scheduler.acquire(request).await.map_err(|e| match e {
            AdmissionError::QueueFull { group, depth } => RouterError::QueueFull {
                group: format!("{group} ({depth} waiting)"),
                retry_after: Some(self.topology.policy.queue.polling_interval.max(Duration::from_secs(1))),
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
            AdmissionError::Backend(e) => RouterError::Backend(e.to_string()),
        })?;
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(reservation.id.clone(), reservation.clone());
        Ok((reservation, waited))
    }

    /// Gives the capacity back with the real usage and, after a failure, applies the cooldown policy; returns
    /// the cooldown put on the deployment. Backend errors are logged, not returned: the response is already
    /// decided.
    pub(crate) async fn settle(
        &self,
        reservation: &Reservation,
        s: Settlement,
    ) -> Option<Duration> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&reservation.id);
        let usage = &self.backend.usage;
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
        let mut policy = self.topology.policy.cooldown;
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
        if let Err(e) = usage
            .cooldown(&reservation.deployment, duration, &reason)
            .await
        {
            tracing::warn!(deployment = %reservation.deployment.id, error = %e, "cooldown failed");
            return None;
        }
        Some(duration)
    }
}
