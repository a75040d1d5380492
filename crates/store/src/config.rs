//! How to reach Redis ([`RedisConfig`]) and the pool every Redis user of a replica shares ([`create_pool`]).

use std::fmt;
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::AsyncConnectionConfig;

use crate::{redact_url, BackendError, Keyspace};

/// How to reach Redis and name the keys: one value shared by the queue, usage tracking, admission and the
/// response cache, so every Redis user of a replica agrees on it. `Debug` masks the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://`, `redis+unix://`).
    pub url: String,
    /// Maximum number of pooled connections (each one multiplexes concurrent calls).
    pub pool_size: usize,
    /// Bound on every Redis call, including waiting for and creating a pooled connection.
    pub command_timeout: Duration,
    /// Key prefix (see [`Keyspace`]).
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            pool_size: 16,
            command_timeout: Duration::from_secs(1),
            key_prefix: Keyspace::DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("command_timeout", &self.command_timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl RedisConfig {
    /// A pool for `url` with `pool_size` connections, every step bounded by `command_timeout` (see
    /// [`create_pool`]). No connection is made yet.
    pub fn create_pool(&self) -> Result<Pool, BackendError> {
        create_pool(&self.url, self.pool_size, self.command_timeout)
    }

    /// The key names under `key_prefix`; fails if the prefix contains a brace.
    pub fn keyspace(&self) -> Result<Keyspace, BackendError> {
        Keyspace::new(self.key_prefix.clone())
    }
}

/// A deadpool-redis pool whose wait, create and recycle steps, connection attempts and responses are all
/// bounded by `timeout` (shareable by every Redis user of the replica). No connection is made yet; an
/// unusable URL is a [`crate::BackendErrorKind::Config`] error that shows the URL without its password.
pub fn create_pool(url: &str, pool_size: usize, timeout: Duration) -> Result<Pool, BackendError> {
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let manager = Manager::new_with_config(url, connection)
        .map_err(|e| BackendError::config(format!("invalid redis url {}: {e}", redact_url(url))))?;
    Pool::builder(manager)
        .max_size(pool_size.max(1))
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| BackendError::config(format!("cannot build redis pool: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BackendErrorKind;

    #[test]
    fn debug_masks_the_password() {
        let config = RedisConfig {
            url: "redis://:hunter2@h:1/0".to_owned(),
            ..RedisConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("redis://:***@h:1/0"),
            "{shown}"
        );
    }

    #[test]
    fn an_unusable_url_is_a_config_error_without_the_password() {
        let err = create_pool("nope://:hunter2@h:1", 1, Duration::from_secs(1)).unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Config);
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = RedisConfig {
            key_prefix: "a{b".to_owned(),
            ..RedisConfig::default()
        }
        .keyspace()
        .unwrap_err();
        assert_eq!(err.kind(), BackendErrorKind::Config);
    }
}
