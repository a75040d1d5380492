//! Where shared state lives: in memory (one instance) or in Redis (many replicas, one pool shared by usage
//! tracking, the queue and the response cache).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use queue_core::{
    Clock, Keyspace, MemoryQueue, QueueBackend, QueueState, RedisConnection, RedisQueue,
    RedisQueueSettings,
};
use usage_tracker::{MemoryUsage, RedisUsage, UsageSettings, UsageStore};

use crate::cache::ResponseCache;
use crate::config::RouterSettings;
use crate::error::RouterError;
use crate::topology::{CachePolicy, RedisFailureMode};
use admission::{AdmissionBackend, FailoverAdmission, MemoryAdmission, RedisAdmission};

/// How to reach Redis: URL (masked in `Debug`), pool size, per-call timeout, key prefix. Shared with
/// queue-core so every Redis user of the router agrees on it.
pub type RedisBackendConfig = queue_core::RedisQueueConfig;

/// The state backend. `Memory` (the default) serves one instance; `Redis` shares limits, cooldowns and the
/// queue between replicas.
#[derive(Clone, Debug, Default)]
pub enum Backend {
    /// In-process state.
    #[default]
    Memory,
    /// Redis.
    Redis(RedisBackendConfig),
}

impl Backend {
    /// The backend `router_settings` names: Redis when `redis_url` or `redis_host` is set, else memory.
    pub fn from_settings(settings: &RouterSettings) -> Result<Backend, RouterError> {
        let url = match (&settings.redis_url, &settings.redis_host) {
            (Some(url), _) => url.expose().to_owned(),
            (None, Some(host)) => {
                let port = settings.redis_port.unwrap_or(6379);
                if port == 0 || port > 65535 {
                    return Err(RouterError::config(
                        "router_settings.redis_port",
                        format!("{port} is not a port"),
                    ));
                }
                match &settings.redis_password {
                    Some(pw) => format!("redis://:{}@{host}:{port}", pw.expose()),
                    None => format!("redis://{host}:{port}"),
                }
            }
            (None, None) => return Ok(Backend::Memory),
        };
        let prefix = settings
            .key_prefix
            .clone()
            .unwrap_or_else(|| Keyspace::DEFAULT_PREFIX.to_owned());
        Keyspace::new(prefix.clone())
            .map_err(|e| RouterError::config("router_settings.key_prefix", e.to_string()))?;
        Ok(Backend::Redis(RedisBackendConfig {
            url,
            key_prefix: prefix,
            ..RedisBackendConfig::default()
        }))
    }
}

/// The built backend: the usage store, the admission steps and, on Redis, the shared pool.
pub(crate) struct BackendHandle {
    usage: Arc<dyn UsageStore>,
    /// The queues, for reads (depths); admission changes them through `admission` only.
    queue: Arc<dyn QueueBackend>,
    admission: Arc<dyn AdmissionBackend>,
    /// `redis_failure_mode: open`: the admission backend, to ask whether it serves from memory.
    failover: Option<Arc<FailoverAdmission>>,
    keyspace: Keyspace,
    /// `Some` on Redis.
    redis: Option<RedisHandle>,
}

/// The Redis pool, the kept connection every script of this replica multiplexes over, and the call
/// timeout.
#[derive(Clone)]
struct RedisHandle {
    pool: deadpool_redis::Pool,
    connection: RedisConnection,
    command_timeout: Duration,
}

impl BackendHandle {
    pub(crate) fn build(
        backend: &Backend,
        window: Duration,
        failure_mode: RedisFailureMode,
        probe_every: Duration,
    ) -> Result<Self, RouterError> {
        // The usage store counts in whole milliseconds.
        let window =
            Duration::from_millis(u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1));
        match backend {
            Backend::Memory => {
                let keyspace = Keyspace::default();
                let clock = Clock::new();
                let settings = UsageSettings {
                    keyspace: keyspace.clone(),
                    window,
                    ..UsageSettings::default()
                };
                let usage = MemoryUsage::with_clock(&settings, clock).map_err(|e| {
                    RouterError::config("router_settings.usage_window", e.to_string())
                })?;
                let queue_state = Arc::new(Mutex::new(QueueState::new()));
                let queue = MemoryQueue::with_state(queue_state.clone(), clock);
                let admission = MemoryAdmission::new(queue_state, usage.shared_state(), clock);
                Ok(Self {
                    usage: Arc::new(usage),
                    queue: Arc::new(queue),
                    admission: Arc::new(admission),
                    failover: None,
                    keyspace,
                    redis: None,
                })
            }
            Backend::Redis(cfg) => {
                let keyspace = Keyspace::new(cfg.key_prefix.clone()).map_err(|e| {
                    RouterError::config("router_settings.key_prefix", e.to_string())
                })?;
                let pool = queue_core::create_pool(&cfg.url, cfg.pool_size, cfg.command_timeout)
                    .map_err(|e| RouterError::config("router_settings.redis_url", e.to_string()))?;
                let settings = UsageSettings {
                    keyspace: keyspace.clone(),
                    window,
                    command_timeout: cfg.command_timeout,
                    ..UsageSettings::default()
                };
                let connection = RedisConnection::new(pool.clone(), cfg.command_timeout);
                let usage = RedisUsage::from_connection(connection.clone(), settings)
                    .map_err(|e| RouterError::config("router_settings", e.to_string()))?;
                let client = redis::Client::open(cfg.url.as_str())
                    .map_err(|e| RouterError::config("router_settings.redis_url", e.to_string()))?;
                let redis_admission =
                    RedisAdmission::new(connection.clone(), client, keyspace.clone(), window);
                let (admission, failover): (Arc<dyn AdmissionBackend>, _) = match failure_mode {
                    RedisFailureMode::Closed => (Arc::new(redis_admission), None),
                    RedisFailureMode::Open => {
                        let local = MemoryAdmission::new(
                            Arc::new(Mutex::new(QueueState::new())),
                            Arc::new(Mutex::new(usage_tracker::UsageState::new(
                                window,
                                UsageSettings::default().latency_ewma_alpha,
                            ))),
                            Clock::new(),
                        );
                        let failover =
                            Arc::new(FailoverAdmission::new(redis_admission, local, probe_every));
                        (failover.clone(), Some(failover))
                    }
                };
                let queue = RedisQueue::from_connection(
                    connection.clone(),
                    RedisQueueSettings {
                        keyspace: keyspace.clone(),
                        command_timeout: cfg.command_timeout,
                    },
                );
                Ok(Self {
                    usage: Arc::new(usage),
                    queue: Arc::new(queue),
                    admission,
                    failover,
                    keyspace,
                    redis: Some(RedisHandle {
                        pool,
                        connection,
                        command_timeout: cfg.command_timeout,
                    }),
                })
            }
        }
    }

    /// The usage store: limits, leases, cooldowns, statistics.
    pub(crate) fn usage(&self) -> &Arc<dyn UsageStore> {
        &self.usage
    }

    /// The queues, for reads (depths).
    pub(crate) fn queue(&self) -> &dyn QueueBackend {
        self.queue.as_ref()
    }

    /// The admission steps.
    pub(crate) fn admission(&self) -> &Arc<dyn AdmissionBackend> {
        &self.admission
    }

    /// The response cache `policy` asks for: in memory, or in Redis on this backend's pool.
    pub(crate) fn response_cache(
        &self,
        policy: Option<&CachePolicy>,
    ) -> Result<Option<ResponseCache>, RouterError> {
        let Some(c) = policy else {
            return Ok(None);
        };
        Ok(match (c.redis, &self.redis) {
            (Some(true), None) => {
                return Err(RouterError::config(
                    "router_settings.cache_kwargs.type",
                    "a redis cache needs the Redis backend (redis_host or redis_url)",
                ))
            }
            (Some(false), _) | (None, None) => Some(ResponseCache::memory(c.ttl, c.max_size_bytes)),
            (_, Some(r)) => Some(ResponseCache::redis(
                c.ttl,
                r.pool.clone(),
                self.keyspace.clone(),
                r.command_timeout,
            )),
        })
    }

    /// True while `redis_failure_mode: open` admits from memory because Redis does not answer.
    pub(crate) fn serving_from_memory(&self) -> bool {
        self.failover.as_ref().is_some_and(|f| f.is_down())
    }

    /// Readiness: Redis answers PING (always Ok in memory, and while fail-open admission serves).
    pub(crate) async fn ping(&self) -> Result<(), RouterError> {
        let Some(r) = &self.redis else {
            return Ok(());
        };
        if self.serving_from_memory() {
            return Ok(());
        }
        r.connection
            .query::<String>(&redis::cmd("PING"))
            .await
            .map(drop)
            .map_err(RouterError::backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn settings_choose_the_backend() {
        assert!(matches!(
            Backend::from_settings(&RouterSettings::default()),
            Ok(Backend::Memory)
        ));
        let s = RouterSettings {
            redis_host: Some("h".into()),
            redis_password: Some(Secret::new("pw")),
            ..RouterSettings::default()
        };
        let Ok(Backend::Redis(cfg)) = Backend::from_settings(&s) else {
            panic!()
        };
        assert_eq!(cfg.url, "redis://:pw@h:6379");
        assert!(!format!("{cfg:?}").contains("pw@"));
    }
}
