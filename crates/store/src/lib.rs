//! The plumbing under queue-core, usage-tracker and admission: how a replica reaches the shared store.
//!
//! queue-core and usage-tracker are siblings over this crate: both (and admission, which composes their Lua
//! fragments into one step, and the router, which builds them) take their Redis connection, pool, key names
//! and clock from here, and report every failure of the store with one [`BackendErrorKind`]. Nothing here
//! knows about queues or usage.
//!
//! Invariants and where each is kept:
//! - **Every Redis call is bounded**: [`RedisConnection`] wraps each call (getting a connection included) in
//!   its timeout; [`create_pool`] sets the pool's wait, create and recycle timeouts and the connection and
//!   response timeouts.
//! - **All keys of a model group hash to one Redis Cluster slot**: [`Keyspace`] (the group's hash tag), so
//!   every step is single-slot and the Cluster client routes it to the slot's primary.
//! - **Failures are classified once**: the `From<redis::RedisError>` and `From<deadpool_redis::PoolError>`
//!   conversions of [`BackendError`]; callers decide on [`BackendErrorKind`], never on messages.
//! - **No password in logs or errors**: [`redact_url`], used by [`RedisConfig`]'s `Debug`, [`create_pool`]'s
//!   errors and the router's backend description.
//!
//! # Layout
//! - `config`: [`RedisConfig`] (URL, pool size, call timeout, key prefix, [`RedisTopology`]: one server,
//!   Cluster or Sentinel, TLS roots) and [`create_pool`].
//! - `connection`: [`RedisConnection`], one kept multiplexed connection (or Cluster client, or the
//!   Sentinels' primary) with a timeout on every call.
//! - `subscriber`: [`Subscriber`], where wake-up subscriptions go (any Cluster node, the Sentinels'
//!   primary).
//! - `function`: [`StepFunction`] and [`StepCall`], an atomic Lua step run as a Redis Function (`FCALL`),
//!   or as a cached script where the server has no Functions.
//! - `keyspace`: [`Keyspace`] and [`GroupKeys`], key names, hash tags and their Redis Cluster slot.
//! - `clock`: [`Clock`], epoch-millisecond time for the in-memory twins.
//! - `redact`: [`redact_url`].
//! - `error`: [`BackendErrorKind`], [`BackendError`].
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use store::{BackendErrorKind, Keyspace, RedisConfig, RedisConnection};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let config = RedisConfig {
//!     url: "redis://:hunter2@127.0.0.1:1/".to_owned(), // nothing listens on port 1
//!     command_timeout: Duration::from_millis(200),
//!     ..RedisConfig::default()
//! };
//! assert!(!format!("{config:?}").contains("hunter2"));
//! let keys = config.keyspace()?.group("gpt-4o");
//! assert_eq!(Keyspace::slot(&keys.queue), Keyspace::slot(&keys.deployment("a1")));
//!
//! let connection = RedisConnection::new(config.create_pool()?, config.command_timeout);
//! let err = connection.query::<String>(&redis::cmd("PING")).await.unwrap_err();
//! assert!(matches!(err.kind(), BackendErrorKind::Connection | BackendErrorKind::Timeout));
//! assert!(err.is_retryable());
//! # Ok::<(), store::BackendError>(())
//! # }).unwrap();
//! ```

mod clock;
mod config;
mod connection;
mod error;
mod function;
mod keyspace;
mod redact;
mod subscriber;

pub use clock::Clock;
pub use config::{create_pool, RedisConfig, RedisTopology};
pub use connection::RedisConnection;
pub use error::{BackendError, BackendErrorKind};
pub use function::{StepCall, StepFunction};
pub use keyspace::{GroupKeys, Keyspace};
pub use redact::redact_url;
pub use subscriber::Subscriber;
