//! Why admission failed: [`AdmissionError`] for the request, [`BackendError`] for a failed step.

use std::sync::Arc;
use std::time::Duration;

use queue_core::BackendErrorKind;

/// Why a request got no capacity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    /// The group's queue holds `max_queue_depth` entries.
    #[error("the queue of model group `{group}` is full ({depth} requests waiting)")]
    QueueFull {
        /// The model group.
        group: Arc<str>,
        /// Entries waiting.
        depth: u64,
    },
    /// The request's deadline passed while it waited.
    #[error("request timed out after waiting {waited:?} in the queue of model group `{group}`")]
    QueueTimeout {
        /// The model group.
        group: Arc<str>,
        /// How long it waited.
        waited: Duration,
    },
    /// The request's prompt or token estimate exceeds every deployment's limits.
    #[error("no deployment of model group `{group}` can ever serve this request (its prompt or token estimate exceeds every deployment's limits)")]
    NeverFits {
        /// The model group.
        group: Arc<str>,
    },
    /// Cooldowns or full windows block every deployment until after the deadline (or, for a retry, now).
    #[error("no deployment of model group `{group}` has capacity before the request's deadline")]
    NoCapacityBeforeDeadline {
        /// The model group.
        group: Arc<str>,
        /// When capacity may return.
        retry_after: Duration,
    },
    /// The replica is shutting down.
    #[error("the router is shutting down")]
    ShuttingDown,
    /// A step failed.
    #[error("admission backend: {0}")]
    Backend(#[from] BackendError),
}

/// A failed backend step; `kind` says how (queue-core's classification, shared by every backend).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind} error: {message}")]
pub struct BackendError {
    /// How it failed.
    pub kind: BackendErrorKind,
    /// What happened (never contains credentials).
    pub message: String,
}

impl BackendError {
    /// A reply that does not decode.
    pub fn reply(message: impl Into<String>) -> BackendError {
        BackendError {
            kind: BackendErrorKind::Reply,
            message: message.into(),
        }
    }

    /// True for timeouts and broken connections (the store may answer again).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self.kind,
            BackendErrorKind::Timeout | BackendErrorKind::Connection
        )
    }
}

impl From<queue_core::QueueError> for BackendError {
    fn from(e: queue_core::QueueError) -> BackendError {
        BackendError {
            kind: e.backend_kind().unwrap_or(BackendErrorKind::Reply),
            message: e.to_string(),
        }
    }
}
