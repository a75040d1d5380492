//! The queue's error type and the classification of backend failures.

use std::fmt;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Boxed source of a backend failure.
type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of backend failure happened, so callers can decide without reading messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The call did not finish within the command timeout (or the pool timed out waiting/creating).
    Timeout,
    /// Redis is unreachable or the connection broke (refused, reset, closed, server loading/busy).
    Connection,
    /// Redis answered with an error: a failing script or a rejected command.
    Script,
    /// Redis answered something the queue cannot decode.
    Reply,
    /// The connection settings are unusable (bad URL, authentication rejected).
    Config,
}

impl fmt::Display for BackendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Script => "script",
            Self::Reply => "reply",
            Self::Config => "config",
        })
    }
}

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
    /// A key prefix containing `{` or `}` (it would break the group's hash tag).
    #[error("invalid key prefix {prefix:?}: it must not contain '{{' or '}}'")]
    InvalidKeyPrefix {
        /// The rejected prefix.
        prefix: String,
    },
    /// A string that is not a queue member in canonical form.
    #[error("invalid queue member {member:?}")]
    InvalidMember {
        /// The rejected member.
        member: String,
    },
    /// The Redis backend failed; `kind` says how.
    #[error("queue backend {kind} error: {message}")]
    Backend {
        /// Classification of the failure.
        kind: BackendErrorKind,
        /// Human-readable description (never contains credentials).
        message: String,
        /// Underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

impl QueueError {
    /// True for [`QueueError::QueueFull`].
    pub fn is_queue_full(&self) -> bool {
        matches!(self, Self::QueueFull { .. })
    }

    /// True when the caller passed something invalid (priority, owner, prefix, member).
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Self::InvalidPriority { .. }
                | Self::InvalidOwner { .. }
                | Self::InvalidKeyPrefix { .. }
                | Self::InvalidMember { .. }
        )
    }

    /// The backend failure kind, if this is a backend failure.
    pub fn backend_kind(&self) -> Option<BackendErrorKind> {
        match self {
            Self::Backend { kind, .. } => Some(*kind),
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
        matches!(
            self.backend_kind(),
            Some(BackendErrorKind::Timeout | BackendErrorKind::Connection)
        )
    }

    pub(crate) fn backend(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self::Backend {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn timed_out(after: Duration) -> Self {
        Self::backend(
            BackendErrorKind::Timeout,
            format!("no answer from redis within {after:?}"),
        )
    }

    pub(crate) fn reply(message: impl Into<String>) -> Self {
        Self::backend(BackendErrorKind::Reply, message)
    }

    pub(crate) fn from_redis(err: RedisError) -> Self {
        Self::Backend {
            kind: classify(&err),
            message: err.to_string(),
            source: Some(Box::new(err)),
        }
    }

    pub(crate) fn from_pool(err: deadpool_redis::PoolError) -> Self {
        use deadpool_redis::PoolError;
        match err {
            PoolError::Backend(err) => Self::from_redis(err),
            PoolError::Timeout(kind) => Self::backend(
                BackendErrorKind::Timeout,
                format!("redis pool timed out ({kind:?})"),
            ),
            other => Self::Backend {
                kind: BackendErrorKind::Connection,
                message: format!("redis pool: {other}"),
                source: Some(Box::new(other)),
            },
        }
    }
}

/// Maps a client error onto the kinds callers act on.
fn classify(err: &RedisError) -> BackendErrorKind {
    if err.is_timeout() {
        return BackendErrorKind::Timeout;
    }
    if err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
    {
        return BackendErrorKind::Connection;
    }
    match err.kind() {
        ErrorKind::Server(
            ServerErrorKind::BusyLoading
            | ServerErrorKind::TryAgain
            | ServerErrorKind::ClusterDown
            | ServerErrorKind::MasterDown
            | ServerErrorKind::ReadOnly,
        ) => BackendErrorKind::Connection,
        // BUSY: another script is running too long; the server is unavailable, not our script broken.
        ErrorKind::Extension if err.code() == Some("BUSY") => BackendErrorKind::Connection,
        ErrorKind::Server(_) | ErrorKind::Extension => BackendErrorKind::Script,
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => BackendErrorKind::Reply,
        ErrorKind::InvalidClientConfig | ErrorKind::AuthenticationFailed => {
            BackendErrorKind::Config
        }
        _ => BackendErrorKind::Connection,
    }
}
