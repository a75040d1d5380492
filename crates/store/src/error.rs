//! The one classification of store failures: [`BackendErrorKind`] and [`BackendError`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::{ErrorKind, RedisError, ServerErrorKind};

/// The underlying error of a failure, shared so the error can be cloned (one failed step may be delivered
/// to several waiters).
type SharedSource = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What kind of store failure happened, so callers can decide without reading messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The call did not finish within the command timeout (or the pool timed out waiting/creating).
    Timeout,
    /// Redis is unreachable or the connection broke (refused, reset, closed, server loading/busy, failover).
    Connection,
    /// Redis answered with an error: a failing script or a rejected command.
    Script,
    /// Redis answered something the caller cannot decode.
    Reply,
    /// The store settings are unusable (a bad URL, a key prefix with braces).
    Config,
}

impl BackendErrorKind {
    /// True if the same call may succeed later: timeouts and connection failures.
    ///
    /// A timed-out call may still have been applied by Redis.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Timeout | Self::Connection)
    }
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

/// A failed call to the store: its [`BackendErrorKind`], a message without credentials and, when there is
/// one, the client error underneath.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind} error: {message}")]
pub struct BackendError {
    kind: BackendErrorKind,
    message: String,
    #[source]
    source: Option<SharedSource>,
}

impl BackendError {
    /// A failure of `kind` described by `message` (which must not contain credentials).
    pub fn new(kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// No answer within `after`.
    pub fn timed_out(after: Duration) -> Self {
        Self::new(
            BackendErrorKind::Timeout,
            format!("no answer from redis within {after:?}"),
        )
    }

    /// A reply that does not decode.
    pub fn reply(message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Reply, message)
    }

    /// Unusable settings.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(BackendErrorKind::Config, message)
    }

    /// How it failed.
    pub fn kind(&self) -> BackendErrorKind {
        self.kind
    }

    /// What happened.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True if the same call may succeed later (see [`BackendErrorKind::is_retryable`]).
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// True if the store did not answer in time.
    pub fn is_timeout(&self) -> bool {
        self.kind == BackendErrorKind::Timeout
    }

    /// The same failure with `what` (the operation) in front of its message.
    pub fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl From<RedisError> for BackendError {
    fn from(err: RedisError) -> Self {
        Self {
            kind: classify(&err),
            message: err.to_string(),
            source: Some(Arc::new(err)),
        }
    }
}

impl From<deadpool_redis::PoolError> for BackendError {
    fn from(err: deadpool_redis::PoolError) -> Self {
        use deadpool_redis::PoolError;
        match err {
            PoolError::Backend(err) => err.into(),
            PoolError::Timeout(kind) => Self::new(
                BackendErrorKind::Timeout,
                format!("redis pool timed out ({kind:?})"),
            ),
            other => Self {
                kind: BackendErrorKind::Connection,
                message: format!("redis pool: {other}"),
                source: Some(Arc::new(other)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_errors_are_classified_once() {
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(BackendError::from(io).kind(), BackendErrorKind::Connection);
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let timeout = BackendError::from(timeout);
        assert!(timeout.is_timeout() && timeout.is_retryable());
        // A reply the client cannot parse leaves the connection out of step: reconnect.
        let parse = RedisError::from((ErrorKind::Parse, "bad"));
        assert_eq!(
            BackendError::from(parse).kind(),
            BackendErrorKind::Connection
        );
        let unexpected = RedisError::from((ErrorKind::UnexpectedReturnType, "not an int"));
        assert_eq!(
            BackendError::from(unexpected).kind(),
            BackendErrorKind::Reply
        );
        let config = RedisError::from((ErrorKind::InvalidClientConfig, "no"));
        let config = BackendError::from(config);
        assert_eq!(config.kind(), BackendErrorKind::Config);
        assert!(!config.is_retryable());
    }

    #[test]
    fn context_names_the_operation() {
        let e = BackendError::reply("odd array").context("reserve");
        assert_eq!(e.to_string(), "reply error: reserve: odd array");
    }
}
