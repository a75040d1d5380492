//! The queue's error type.

use store::{BackendError, BackendErrorKind};

/// Everything a queue operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The group's queue already holds `depth` entries, the configured maximum.
    #[error("queue is full ({depth} requests waiting)")]
    QueueFull {
        /// Entries waiting when the request was refused.
        depth: u64,
    },
    /// A priority outside `0..=Priority::MAX`.
    #[error("priority {value} is out of range (0..={max})", max = crate::Priority::MAX.get())]
    InvalidPriority {
        /// The rejected value.
        value: i64,
    },
    /// An owner (replica) id that is empty, too long, or not printable ASCII without `|`.
    #[error("invalid owner id {owner:?}: expected 1..=128 printable ASCII characters without '|'")]
    InvalidOwner {
        /// The rejected id.
        owner: String,
    },
    /// A string that is not a queue member in canonical form.
    #[error("invalid queue member {member:?}")]
    InvalidMember {
        /// The rejected member.
        member: String,
    },
    /// The store failed (or its settings are unusable); the error's kind says how.
    #[error("queue backend {0}")]
    Backend(#[from] BackendError),
}

impl QueueError {
    /// True for [`QueueError::QueueFull`].
    pub fn is_queue_full(&self) -> bool {
        matches!(self, Self::QueueFull { .. })
    }

    /// True when the caller passed something invalid (priority, owner, member).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::InvalidPriority { .. } | Self::InvalidOwner { .. } | Self::InvalidMember { .. }
        )
    }

    /// The backend failure kind, if this is a backend failure.
    pub fn backend_kind(&self) -> Option<BackendErrorKind> {
        match self {
            Self::Backend(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// True if the backend did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.backend_kind() == Some(BackendErrorKind::Timeout)
    }

    /// True if the backend could not be reached or the connection broke.
    pub fn is_connection(&self) -> bool {
        self.backend_kind() == Some(BackendErrorKind::Connection)
    }

    /// True if the same call may succeed later (timeouts and connection failures).
    pub fn is_retryable(&self) -> bool {
        self.backend_kind()
            .is_some_and(BackendErrorKind::is_retryable)
    }

    pub(crate) fn reply(message: impl Into<String>) -> Self {
        Self::Backend(BackendError::reply(message))
    }
}

/// A queue failure as a failed store step: backend failures keep their kind; anything else (a refused
/// member or owner the step itself produced) is a [`BackendErrorKind::Reply`].
impl From<QueueError> for BackendError {
    fn from(e: QueueError) -> BackendError {
        match e {
            QueueError::Backend(e) => e,
            other => BackendError::reply(other.to_string()),
        }
    }
}
