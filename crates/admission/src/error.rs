//! Why admission failed: [`AdmissionError`]; a failed step is a `store::BackendError`.

use std::sync::Arc;
use std::time::Duration;

use store::BackendError;

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
