//! How to reach Redis ([`RedisConfig`]) and the pool every Redis user of a replica shares ([`create_pool`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use deadpool_redis::{Manager, Pool, Runtime};
use redis::{AsyncConnectionConfig, ConnectionInfo, IntoConnectionInfo, TlsCertificates};

use crate::{redact_url, BackendError, Keyspace};

/// How the replicas find their Redis: one server, a Redis Cluster, or the primary a group of Sentinels
/// names.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum RedisTopology {
    /// One server at [`RedisConfig::url`].
    #[default]
    Standalone,
    /// A Redis Cluster reached through any of these startup nodes (URLs with their credentials and
    /// scheme; `rediss://` for TLS). Every atomic step stays within one slot (a group's hash tag).
    Cluster {
        /// `redis://[user:password@]host:port` of each startup node.
        nodes: Vec<String>,
    },
    /// The primary that these Sentinels name `service_name`, followed across failovers;
    /// [`RedisConfig::url`] carries the primary's scheme, credentials and database (its host is unused).
    Sentinel {
        /// `redis://[:sentinel_password@]host:port` of each Sentinel.
        sentinels: Vec<String>,
        /// The monitored primary's name (`SENTINEL get-master-addr-by-name`).
        service_name: String,
    },
}

impl fmt::Debug for RedisTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Standalone => f.write_str("Standalone"),
            Self::Cluster { nodes } => f
                .debug_struct("Cluster")
                .field(
                    "nodes",
                    &nodes.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
                )
                .finish(),
            Self::Sentinel {
                sentinels,
                service_name,
            } => f
                .debug_struct("Sentinel")
                .field(
                    "sentinels",
                    &sentinels.iter().map(|n| redact_url(n)).collect::<Vec<_>>(),
                )
                .field("service_name", service_name)
                .finish(),
        }
    }
}

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
    /// One server, a Cluster, or Sentinels (default: one server at `url`).
    pub topology: RedisTopology,
    /// PEM file of the certificate authorities a `rediss://` server's certificate is checked against
    /// (LiteLLM's `ssl_ca_certs`); `None`: the system's roots.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            pool_size: 16,
            command_timeout: Duration::from_secs(1),
            key_prefix: Keyspace::DEFAULT_PREFIX.to_owned(),
            topology: RedisTopology::Standalone,
            tls_ca_file: None,
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
            .field("topology", &self.topology)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

impl RedisConfig {
    /// A pool for `url` with `pool_size` connections, every step bounded by `command_timeout` (see
    /// [`create_pool`]), trusting `tls_ca_file` for `rediss://`. No connection is made yet. Only for one
    /// server: a Cluster or Sentinel topology is reached through [`RedisConfig::connect`].
    pub fn create_pool(&self) -> Result<Pool, BackendError> {
        if self.topology != RedisTopology::Standalone {
            return Err(BackendError::config(
                "a pool reaches one server; use RedisConfig::connect for Cluster and Sentinel",
            ));
        }
        let info = self.connection_info(&self.url)?;
        pool_of(info, &self.url, self.pool_size, self.command_timeout)
    }

    /// `url` as connection parameters, with `tls_ca_file`'s roots for TLS.
    pub(crate) fn connection_info(&self, url: &str) -> Result<ConnectionInfo, BackendError> {
        let info = url.into_connection_info().map_err(|e| {
            BackendError::config(format!("invalid redis url {}: {e}", redact_url(url)))
        })?;
        let Some(certs) = self.tls_certificates()? else {
            return Ok(info);
        };
        if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
            return Ok(info);
        }
        let client = redis::Client::build_with_tls(info, certs).map_err(|e| {
            BackendError::config(format!("cannot use TLS for {}: {e}", redact_url(url)))
        })?;
        Ok(client.get_connection_info().clone())
    }

    /// The CA roots of `tls_ca_file`, read now.
    pub(crate) fn tls_certificates(&self) -> Result<Option<TlsCertificates>, BackendError> {
        let Some(path) = &self.tls_ca_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(|e| {
            BackendError::config(format!(
                "cannot read the TLS CA file {}: {e}",
                path.display()
            ))
        })?;
        Ok(Some(TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        }))
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
    let info = url
        .into_connection_info()
        .map_err(|e| BackendError::config(format!("invalid redis url {}: {e}", redact_url(url))))?;
    pool_of(info, url, pool_size, timeout)
}

fn pool_of(
    info: ConnectionInfo,
    url: &str,
    pool_size: usize,
    timeout: Duration,
) -> Result<Pool, BackendError> {
    let connection = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let manager = Manager::new_with_config(info, connection)
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
