//! The crate's error type and the classification of backend failures.

use std::fmt;

/// Why a call to a usage store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The backend (Redis) did not answer correctly; see [`BackendErrorKind`].
    #[error("usage store {kind} error: {message}")]
    Backend {
        /// What went wrong, for the caller's retry and health decisions.
        kind: BackendErrorKind,
        /// A description without secrets.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// An argument cannot be stored: a deployment id with characters the key layout reserves, candidates
    /// of several groups in one call, a malformed reservation.
    #[error("invalid usage-store argument: {0}")]
    InvalidArgument(String),
    /// [`crate::UsageSettings`] are out of range.
    #[error("invalid usage-store settings: {0}")]
    InvalidSettings(String),
}

/// The class of a backend failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// No answer within the command timeout (or no pooled connection within the pool's timeouts).
    Timeout,
    /// The connection could not be made or broke (server down, restarting, network).
    Connection,
    /// Redis answered with an error (a script error, an unexpected reply): retrying will not help.
    Script,
}

impl fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendErrorKind::Timeout => "timeout",
            BackendErrorKind::Connection => "connection",
            BackendErrorKind::Script => "script",
        })
    }
}

impl UsageError {
    /// The backend failure class, if this is a backend failure.
    pub fn backend_kind(&self) -> Option<BackendErrorKind> {
        match self {
            UsageError::Backend { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether the same call may succeed later (timeouts and connection failures).
    ///
    /// A timed-out call may still have been applied by Redis: a reservation made then holds its RPM/TPM
    /// until the window rolls and its lease until it expires, which errs on the side of the limits.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.backend_kind(),
            Some(BackendErrorKind::Timeout | BackendErrorKind::Connection)
        )
    }

    /// A failed call on the shared connection, classified the same way.
    pub(crate) fn from_queue(what: &str, err: queue_core::QueueError) -> UsageError {
        let kind = match err.backend_kind() {
            Some(queue_core::BackendErrorKind::Timeout) => BackendErrorKind::Timeout,
            Some(queue_core::BackendErrorKind::Connection) => BackendErrorKind::Connection,
            _ => BackendErrorKind::Script,
        };
        UsageError::Backend {
            kind,
            message: format!("{what}: {err}"),
            source: Some(Box::new(err)),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> UsageError {
        UsageError::InvalidArgument(message.into())
    }
}

impl From<redis::RedisError> for UsageError {
    fn from(err: redis::RedisError) -> UsageError {
        let kind = if err.is_timeout() {
            BackendErrorKind::Timeout
        } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
            BackendErrorKind::Connection
        } else {
            match err.retry_method() {
                // Loading, busy, failover, cluster redirects: the server will answer again.
                redis::RetryMethod::NoRetry => BackendErrorKind::Script,
                _ => BackendErrorKind::Connection,
            }
        };
        UsageError::Backend {
            kind,
            message: err.to_string(),
            source: Some(Box::new(err)),
        }
    }
}

impl From<deadpool_redis::PoolError> for UsageError {
    fn from(err: deadpool_redis::PoolError) -> UsageError {
        match err {
            deadpool_redis::PoolError::Backend(err) => err.into(),
            deadpool_redis::PoolError::Timeout(_) => UsageError::Backend {
                kind: BackendErrorKind::Timeout,
                message: err.to_string(),
                source: Some(Box::new(err)),
            },
            other => UsageError::Backend {
                kind: BackendErrorKind::Connection,
                message: other.to_string(),
                source: Some(Box::new(other)),
            },
        }
    }
}
