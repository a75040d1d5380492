//! The crate's error type.

use store::{BackendError, BackendErrorKind};

/// Why a call to a usage store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The store (Redis) did not answer correctly; the error's kind says how.
    #[error("usage store {0}")]
    Backend(#[from] BackendError),
    /// An argument cannot be stored: a deployment id with characters the key layout reserves, candidates
    /// of several groups in one call, a malformed reservation.
    #[error("invalid usage-store argument: {0}")]
    InvalidArgument(String),
    /// [`crate::UsageSettings`] are out of range.
    #[error("invalid usage-store settings: {0}")]
    InvalidSettings(String),
}

impl UsageError {
    /// The backend failure kind, if this is a backend failure.
    pub fn backend_kind(&self) -> Option<BackendErrorKind> {
        match self {
            UsageError::Backend(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// Whether the same call may succeed later (timeouts and connection failures).
    ///
    /// A timed-out call may still have been applied by Redis: a reservation made then holds its RPM/TPM
    /// until the window rolls and its lease until it expires, which errs on the side of the limits.
    pub fn is_retryable(&self) -> bool {
        self.backend_kind()
            .is_some_and(BackendErrorKind::is_retryable)
    }

    pub(crate) fn invalid(message: impl Into<String>) -> UsageError {
        UsageError::InvalidArgument(message.into())
    }
}

/// A usage failure as a failed store call: backend failures keep their kind; refused arguments and
/// settings are [`BackendErrorKind::Config`] (the deployment ids and settings come from the config).
impl From<UsageError> for BackendError {
    fn from(e: UsageError) -> BackendError {
        match e {
            UsageError::Backend(e) => e,
            other => BackendError::config(other.to_string()),
        }
    }
}
