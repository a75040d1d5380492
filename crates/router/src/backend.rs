//! Where shared state lives: in memory (one instance) or in Redis (many replicas, one pool shared by usage
//! tracking, the queue and the response cache).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use queue_core::{MemoryQueue, QueueBackend, QueueState, RedisQueue, RedisQueueSettings};
use store::{redact_url, Clock, Keyspace, RedisConfig, RedisConnection};
use usage_tracker::{MemoryUsage, RedisUsage, UsageSettings, UsageStore};

use crate::cache::ResponseCache;
use crate::config::RouterSettings;
use crate::error::RouterError;
use crate::topology::{CachePolicy, RedisFailureMode};
use admission::{
    AdmissionBackend, FailoverAdmission, JobStore, MemoryAdmission, QueueStatus, RedisAdmission,
};

/// The state backend. `Memory` (the default) serves one instance; `Redis` shares limits, cooldowns and the
/// queue between replicas.
#[derive(Clone, Debug, Default)]
pub enum Backend {
    /// In-process state.
    #[default]
    Memory,
    /// Redis: URL (masked in `Debug`), pool size, per-call timeout, key prefix, shared by every Redis user
    /// of the router.
    Redis(RedisConfig),
}

/// The backend `router_settings` (or the environment) names, and the setting that named it.
#[derive(Clone, Debug, Default)]
pub struct BackendChoice {
    /// What the router gets (`Debug` masks the Redis password).
    pub backend: Backend,
    /// `router_settings.redis_url`, `router_settings.redis_host`, `REDIS_URL`, or empty for memory.
    pub source: &'static str,
}

impl BackendChoice {
    /// `router_settings.redis_url`, else `redis_host`/`redis_port`/`redis_password`, else the `REDIS_URL`
    /// variable (read through `env`, so callers choose the environment), else memory.
    ///
    /// URLs must be `redis://`, `rediss://`, `redis+unix://` or `unix://`; a host is put in brackets when it
    /// is an IPv6 address and the password is percent-encoded. Errors name the key path
    /// (`router_settings.redis_port`) and never show a password.
    ///
    /// ```
    /// use router::{BackendChoice, RouterSettings};
    ///
    /// let settings = RouterSettings {
    ///     redis_host: Some("::1".into()),
    ///     redis_password: Some(router::Secret::new("p@ss")),
    ///     ..RouterSettings::default()
    /// };
    /// let choice = BackendChoice::from_settings(&settings, |_| None)?;
    /// assert_eq!(choice.describe(), "redis redis://:***@[::1]:6379/ (from router_settings.redis_host)");
    /// # Ok::<(), router::RouterError>(())
    /// ```
    pub fn from_settings(
        settings: &RouterSettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<BackendChoice, RouterError> {
        let (url, source) = if let Some(url) = &settings.redis_url {
            check_url(url.expose(), "router_settings.redis_url")?;
            (url.expose().to_owned(), "router_settings.redis_url")
        } else if let Some(host) = settings
            .redis_host
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
        {
            let port = settings.redis_port.unwrap_or(6379);
            if port == 0 || port > u64::from(u16::MAX) {
                return Err(RouterError::config(
                    "router_settings.redis_port",
                    format!("expected a port in 1..=65535, got {port}"),
                ));
            }
            if host.contains('/') || host.contains('@') {
                return Err(RouterError::config(
                    "router_settings.redis_host",
                    "expected a host name or address (use router_settings.redis_url for a URL)",
                ));
            }
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.to_owned()
            };
            let auth = match &settings.redis_password {
                Some(p) if !p.expose().is_empty() => format!(":{}@", percent_encode(p.expose())),
                _ => String::new(),
            };
            (
                format!("redis://{auth}{host}:{port}/"),
                "router_settings.redis_host",
            )
        } else if let Some(url) = env("REDIS_URL").filter(|u| !u.trim().is_empty()) {
            check_url(&url, "REDIS_URL")?;
            (url, "REDIS_URL")
        } else {
            return Ok(BackendChoice::default());
        };
        let defaults = RedisConfig::default();
        let config = RedisConfig {
            url,
            key_prefix: settings
                .key_prefix
                .clone()
                .unwrap_or(defaults.key_prefix.clone()),
            ..defaults
        };
        config
            .keyspace()
            .map_err(|e| RouterError::config("router_settings.key_prefix", e.message()))?;
        Ok(BackendChoice {
            backend: Backend::Redis(config),
            source,
        })
    }

    /// A description safe to log: the URL with its password replaced by `***`.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Redis(cfg) => format!("redis {} (from {})", redact_url(&cfg.url), self.source),
            Backend::Memory => "in-memory (single replica)".to_owned(),
        }
    }

    /// Whether state is shared through Redis.
    pub fn is_redis(&self) -> bool {
        matches!(self.backend, Backend::Redis(_))
    }
}

fn check_url(url: &str, key: &str) -> Result<(), RouterError> {
    let ok = ["redis://", "rediss://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    if ok {
        Ok(())
    } else {
        Err(RouterError::config(
            key,
            format!(
                "expected a redis:// or rediss:// URL, got {}",
                redact_url(url)
            ),
        ))
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a password inside a URL.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The admission steps, jobs' records, queue status and (fail-open) the failover wrapper, on Redis.
type RedisSides = (
    Arc<dyn AdmissionBackend>,
    Arc<dyn JobStore>,
    Arc<dyn QueueStatus>,
    Option<Arc<FailoverAdmission>>,
);

/// The built backend: the usage store, the admission steps and, on Redis, the shared pool.
pub(crate) struct BackendHandle {
    usage: Arc<dyn UsageStore>,
    /// The queues, for reads (depths); admission changes them through `admission` only.
    queue: Arc<dyn QueueBackend>,
    admission: Arc<dyn AdmissionBackend>,
    /// Read-only views of the queues for operators (the same store as `admission`).
    status: Arc<dyn QueueStatus>,
    /// Durable jobs' records (the same store as `admission`).
    jobs: Arc<dyn JobStore>,
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
        rolling: bool,
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
                    rolling,
                    ..UsageSettings::default()
                };
                let usage = MemoryUsage::with_clock(&settings, clock).map_err(|e| {
                    RouterError::config("router_settings.usage_window", e.to_string())
                })?;
                let queue_state = Arc::new(Mutex::new(QueueState::new()));
                let queue = MemoryQueue::with_state(queue_state.clone(), clock);
                let admission = Arc::new(MemoryAdmission::new(
                    queue_state,
                    usage.shared_state(),
                    clock,
                ));
                Ok(Self {
                    usage: Arc::new(usage),
                    queue: Arc::new(queue),
                    admission: admission.clone(),
                    status: admission.clone(),
                    jobs: admission,
                    failover: None,
                    keyspace,
                    redis: None,
                })
            }
            Backend::Redis(cfg) => {
                let keyspace = Keyspace::new(cfg.key_prefix.clone()).map_err(|e| {
                    RouterError::config("router_settings.key_prefix", e.to_string())
                })?;
                let pool = cfg
                    .create_pool()
                    .map_err(|e| RouterError::config("router_settings.redis_url", e.to_string()))?;
                let settings = UsageSettings {
                    keyspace: keyspace.clone(),
                    window,
                    rolling,
                    command_timeout: cfg.command_timeout,
                    ..UsageSettings::default()
                };
                let connection = RedisConnection::new(pool.clone(), cfg.command_timeout);
                let usage = RedisUsage::from_connection(connection.clone(), settings)
                    .map_err(|e| RouterError::config("router_settings", e.to_string()))?;
                let client = redis::Client::open(cfg.url.as_str())
                    .map_err(|e| RouterError::config("router_settings.redis_url", e.to_string()))?;
                let redis_admission =
                    RedisAdmission::new(connection.clone(), client, keyspace.clone(), window)
                        .rolling(rolling);
                let (admission, jobs, status, failover): RedisSides = match failure_mode {
                    RedisFailureMode::Closed => {
                        let redis_admission = Arc::new(redis_admission);
                        (
                            redis_admission.clone(),
                            redis_admission.clone(),
                            redis_admission,
                            None,
                        )
                    }
                    RedisFailureMode::Open => {
                        let local = MemoryAdmission::new(
                            Arc::new(Mutex::new(QueueState::new())),
                            Arc::new(Mutex::new(
                                usage_tracker::UsageState::new(
                                    window,
                                    UsageSettings::default().latency_ewma_alpha,
                                )
                                .rolling(rolling),
                            )),
                            Clock::new(),
                        );
                        let failover =
                            Arc::new(FailoverAdmission::new(redis_admission, local, probe_every));
                        (
                            failover.clone(),
                            failover.clone(),
                            failover.clone(),
                            Some(failover),
                        )
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
                    status,
                    jobs,
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

    /// Read-only views of the queues.
    pub(crate) fn status(&self) -> &dyn QueueStatus {
        self.status.as_ref()
    }

    /// Durable jobs' records.
    pub(crate) fn jobs(&self) -> &Arc<dyn JobStore> {
        &self.jobs
    }

    /// The response cache `policy` asks for: in memory, or in Redis on this backend's pool.
    pub(crate) fn response_cache(
        &self,
        policy: Option<&CachePolicy>,
    ) -> Result<Option<ResponseCache>, RouterError> {
        let Some(c) = policy else {
            return Ok(None);
        };
        if let Some(own) = &c.own_redis {
            let pool = own.create_pool().map_err(|e| {
                RouterError::config("router_settings.cache_kwargs.host", e.to_string())
            })?;
            let keyspace = own.keyspace().map_err(|e| {
                RouterError::config("router_settings.cache_kwargs.namespace", e.to_string())
            })?;
            return Ok(Some(ResponseCache::redis(
                c.ttl,
                pool,
                keyspace,
                own.command_timeout,
            )));
        }
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

    fn settings(yaml: &str) -> RouterSettings {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn redis_url(choice: &BackendChoice) -> Option<&str> {
        match &choice.backend {
            Backend::Redis(cfg) => Some(&cfg.url),
            Backend::Memory => None,
        }
    }

    #[test]
    fn no_redis_setting_means_memory() {
        let choice = BackendChoice::from_settings(&RouterSettings::default(), no_env).unwrap();
        assert!(matches!(choice.backend, Backend::Memory) && !choice.is_redis());
        assert_eq!(choice.describe(), "in-memory (single replica)");
    }

    #[test]
    fn host_port_password_build_a_url() {
        let s = settings("redis_host: redis\nredis_port: 6380\nredis_password: 'p@ss:w/rd'\n");
        let choice = BackendChoice::from_settings(&s, no_env).unwrap();
        assert_eq!(
            redis_url(&choice),
            Some("redis://:p%40ss%3Aw%2Frd@redis:6380/")
        );
        let shown = choice.describe();
        assert!(!shown.contains("p%40ss"), "{shown}");
        assert!(shown.contains("redis://:***@redis:6380/"), "{shown}");
        assert!(!format!("{choice:?}").contains("p%40ss"));
        let s = settings("redis_host: h\nredis_password: pw\n");
        let choice = BackendChoice::from_settings(&s, no_env).unwrap();
        assert_eq!(redis_url(&choice), Some("redis://:pw@h:6379/"));
        assert!(!format!("{choice:?}").contains("pw@"));
        let s = settings("redis_host: 'fd00::1'\n");
        let choice = BackendChoice::from_settings(&s, no_env).unwrap();
        assert_eq!(redis_url(&choice), Some("redis://[fd00::1]:6379/"));
    }

    #[test]
    fn precedence_is_url_then_host_then_environment() {
        let env = |name: &str| (name == "REDIS_URL").then(|| "redis://env:1/".to_owned());
        let url = |s: &str| {
            let choice = BackendChoice::from_settings(&settings(s), env).unwrap();
            redis_url(&choice).unwrap_or("memory").to_owned()
        };
        assert_eq!(
            url("redis_url: redis://u:1/\nredis_host: h\n"),
            "redis://u:1/"
        );
        assert_eq!(url("redis_host: h\n"), "redis://h:6379/");
        assert_eq!(url("redis_host: '  '\n"), "redis://env:1/");
        assert_eq!(url("{}"), "redis://env:1/");
        let choice = BackendChoice::from_settings(&settings("{}"), env).unwrap();
        assert_eq!(choice.source, "REDIS_URL");
    }

    #[test]
    fn errors_name_the_key_and_hide_the_password() {
        let path = |s: &str, env: Option<&str>| {
            let env = |name: &str| env.filter(|_| name == "REDIS_URL").map(str::to_owned);
            match BackendChoice::from_settings(&settings(s), env) {
                Err(RouterError::InvalidConfig { path, message }) => {
                    assert!(!message.contains("hunter2"), "{message}");
                    path
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            path("redis_url: 'http://:hunter2@x'", None),
            "router_settings.redis_url"
        );
        assert_eq!(path("{}", Some("http://:hunter2@x")), "REDIS_URL");
        assert_eq!(
            path("redis_host: h\nredis_port: 70000\n", None),
            "router_settings.redis_port"
        );
        assert_eq!(
            path("redis_host: h\nredis_port: 0\n", None),
            "router_settings.redis_port"
        );
        assert_eq!(
            path("redis_host: 'redis://h'\n", None),
            "router_settings.redis_host"
        );
        assert_eq!(
            path("redis_host: h\nkey_prefix: 'a{b'\n", None),
            "router_settings.key_prefix"
        );
    }
}
