//! Where a replica subscribes to its wake-up channels: the one server, any node of a Redis Cluster, or
//! the primary the Sentinels name.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::PubSub;
use redis::Client;

use crate::config::{RedisConfig, RedisTopology};
use crate::connection::SentinelSource;
use crate::{BackendError, BackendErrorKind};

/// Opens Pub/Sub connections for wake-ups.
///
/// Steps publish wake-ups with `PUBLISH`, which a Redis Cluster forwards to every node: a subscriber on
/// any node hears every shard's wake-ups, so on a Cluster this subscribes on one node and moves to the
/// next startup node when that one goes away. Behind Sentinels it subscribes on the primary they name
/// (a failover closes the connection and the next subscription finds the new primary). Wake-ups only
/// shorten waits (pollers poll anyway), so a subscription lost for a moment costs latency, not
/// correctness.
#[derive(Clone)]
pub struct Subscriber {
    target: Target,
}

#[derive(Clone)]
enum Target {
    One(Arc<Client>),
    Nodes {
        clients: Arc<Vec<Client>>,
        next: Arc<AtomicUsize>,
    },
    Sentinel(Arc<SentinelSource>),
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.target {
            Target::One(_) => "Subscriber(one server)",
            Target::Nodes { .. } => "Subscriber(cluster nodes)",
            Target::Sentinel(_) => "Subscriber(sentinel primary)",
        })
    }
}

impl From<Client> for Subscriber {
    fn from(client: Client) -> Self {
        Subscriber {
            target: Target::One(Arc::new(client)),
        }
    }
}

impl Subscriber {
    /// The subscriber `config` describes; no connection is made yet.
    pub fn new(config: &RedisConfig) -> Result<Subscriber, BackendError> {
        let client = |url: &str| {
            Client::open(config.connection_info(url)?).map_err(|e| {
                BackendError::config(format!("invalid redis url {}: {e}", crate::redact_url(url)))
            })
        };
        let target = match &config.topology {
            RedisTopology::Standalone => Target::One(Arc::new(client(&config.url)?)),
            RedisTopology::Cluster { nodes } => Target::Nodes {
                clients: Arc::new(nodes.iter().map(|n| client(n)).collect::<Result<_, _>>()?),
                next: Arc::new(AtomicUsize::new(0)),
            },
            RedisTopology::Sentinel {
                sentinels,
                service_name,
            } => Target::Sentinel(Arc::new(SentinelSource::new(
                config,
                sentinels,
                service_name,
            )?)),
        };
        Ok(Subscriber { target })
    }

    /// A Pub/Sub connection subscribed to `channels`, within `timeout` (a Cluster's next node is tried
    /// on the next call after a failure).
    pub async fn subscribe(
        &self,
        channels: &[&str],
        timeout: Duration,
    ) -> Result<PubSub, BackendError> {
        let attempt = async {
            let client = match &self.target {
                Target::One(client) => Client::clone(client),
                Target::Nodes { clients, next } => {
                    let n = clients.len().max(1);
                    let i = next.fetch_add(1, Ordering::Relaxed) % n;
                    clients.get(i).cloned().ok_or_else(|| {
                        BackendError::config("a Redis Cluster needs startup nodes")
                    })?
                }
                Target::Sentinel(sentinel) => Client::open(sentinel.primary_info(timeout).await?)
                    .map_err(BackendError::from)?,
            };
            let mut pubsub = client
                .get_async_pubsub()
                .await
                .map_err(BackendError::from)?;
            pubsub
                .subscribe(channels)
                .await
                .map_err(BackendError::from)?;
            Ok::<_, BackendError>(pubsub)
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(BackendError::new(
                    BackendErrorKind::Timeout,
                    format!("no subscription within {timeout:?}"),
                ))
            })
    }
}
