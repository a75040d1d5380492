//! Where shared state lives: in memory (one instance) or in Redis (many replicas, one pool shared by usage
//! tracking, the queue and the response cache).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use queue_core::{MemoryQueue, QueueBackend, QueueState, RedisQueue, RedisQueueSettings};
use store::{redact_url, Clock, Keyspace, RedisConfig, RedisConnection, RedisTopology, Subscriber};
use usage_tracker::{MemoryUsage, RedisUsage, UsageSettings, UsageStore};

use crate::cache::ResponseCache;
use crate::config::{CacheSettings, RedisNode, RouterSettings, Secret};
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
        let router = TopologyKeys::of_router(settings);
        let cache = settings.cache_kwargs.as_ref().map(TopologyKeys::of_cache);
        let named = if let Some(found) = router.topology()? {
            Some(found)
        } else if let Some(url) = &settings.redis_url {
            Some(router.of_url(url.expose(), "router_settings.redis_url")?)
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
            Some(router.standalone(
                router.node_url(host, port as u16),
                "router_settings.redis_host",
            )?)
        } else if let Some(found) = cache
            .as_ref()
            .map(TopologyKeys::topology)
            .transpose()?
            .flatten()
        {
            // LiteLLM users name their Cluster or Sentinels in `cache_params`: the scheduler shares them.
            Some(found)
        } else if let Some(url) = env("REDIS_URL").filter(|u| !u.trim().is_empty()) {
            Some(router.of_url(&url, "REDIS_URL")?)
        } else {
            None
        };
        let Some((config, source)) = named else {
            return Ok(BackendChoice::default());
        };
        let config = RedisConfig {
            key_prefix: settings
                .key_prefix
                .clone()
                .unwrap_or(config.key_prefix.clone()),
            ..config
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
            Backend::Redis(cfg) => match &cfg.topology {
                RedisTopology::Standalone => {
                    format!("redis {} (from {})", redact_url(&cfg.url), self.source)
                }
                RedisTopology::Cluster { nodes } => format!(
                    "redis cluster {} (from {})",
                    nodes
                        .iter()
                        .map(|n| redact_url(n))
                        .collect::<Vec<_>>()
                        .join(","),
                    self.source
                ),
                RedisTopology::Sentinel {
                    sentinels,
                    service_name,
                } => format!(
                    "redis sentinel primary {service_name} via {} (from {})",
                    sentinels
                        .iter()
                        .map(|n| redact_url(n))
                        .collect::<Vec<_>>()
                        .join(","),
                    self.source
                ),
            },
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

/// The Redis keys of `router_settings` or of `cache_kwargs` (LiteLLM's `cache_params`), with the path
/// errors name.
struct TopologyKeys<'a> {
    /// `router_settings.` or `router_settings.cache_kwargs.`.
    path: &'static str,
    password: Option<&'a str>,
    startup_nodes: Option<&'a [RedisNode]>,
    sentinel_nodes: Option<&'a [RedisNode]>,
    service_name: Option<&'a str>,
    sentinel_password: Option<&'a str>,
    ssl: bool,
    ssl_ca_certs: Option<&'a str>,
}

impl<'a> TopologyKeys<'a> {
    fn of_router(s: &'a RouterSettings) -> Self {
        TopologyKeys {
            path: "router_settings.",
            password: s.redis_password.as_ref().map(Secret::expose),
            startup_nodes: s.redis_startup_nodes.as_deref(),
            sentinel_nodes: s.sentinel_nodes.as_deref(),
            service_name: s.service_name.as_deref(),
            sentinel_password: s.sentinel_password.as_ref().map(Secret::expose),
            ssl: s.ssl.unwrap_or(false),
            ssl_ca_certs: s.ssl_ca_certs.as_deref(),
        }
    }

    fn of_cache(c: &'a CacheSettings) -> Self {
        TopologyKeys {
            path: "router_settings.cache_kwargs.",
            password: c.password.as_ref().map(Secret::expose),
            startup_nodes: c.redis_startup_nodes.as_deref(),
            sentinel_nodes: c.sentinel_nodes.as_deref(),
            service_name: c.service_name.as_deref(),
            sentinel_password: c.sentinel_password.as_ref().map(Secret::expose),
            ssl: c.ssl.unwrap_or(false),
            ssl_ca_certs: c.ssl_ca_certs.as_deref(),
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.path)
    }

    fn base(&self) -> RedisConfig {
        RedisConfig {
            tls_ca_file: self
                .ssl_ca_certs
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(std::path::PathBuf::from),
            ..RedisConfig::default()
        }
    }

    /// `redis[s]://[:password@]host:port/`, `rediss` when `ssl` is set.
    fn node_url(&self, host: &str, port: u16) -> String {
        url_of(self.ssl, self.password, host, port)
    }

    fn standalone(
        &self,
        url: String,
        source: &'static str,
    ) -> Result<(RedisConfig, &'static str), RouterError> {
        Ok((RedisConfig { url, ..self.base() }, source))
    }

    /// A `redis_url`: one server, or a Cluster when written `redis+cluster://` (`rediss+cluster://`) with
    /// comma-separated `host:port` nodes. `ssl: true` turns `redis://` into `rediss://`.
    fn of_url(
        &self,
        url: &str,
        key: &'static str,
    ) -> Result<(RedisConfig, &'static str), RouterError> {
        let url = url.trim();
        let cluster = url
            .strip_prefix("redis+cluster://")
            .map(|rest| (false, rest))
            .or_else(|| {
                url.strip_prefix("rediss+cluster://")
                    .map(|rest| (true, rest))
            });
        if let Some((tls, rest)) = cluster {
            let rest = rest.trim_end_matches('/');
            let (auth, hosts) = match rest.rsplit_once('@') {
                Some((auth, hosts)) => (Some(auth), hosts),
                None => (None, rest),
            };
            let scheme = if tls || self.ssl { "rediss" } else { "redis" };
            let auth = auth.map(|a| format!("{a}@")).unwrap_or_default();
            let mut nodes = Vec::new();
            for node in hosts.split(',').filter(|h| !h.trim().is_empty()) {
                let (host, port) = RedisNode::Text(node.to_owned())
                    .address()
                    .map_err(|e| RouterError::config(key, e))?;
                nodes.push(format!("{scheme}://{auth}{}:{port}/", bracket(&host)));
            }
            if nodes.is_empty() {
                return Err(RouterError::config(key, "a cluster URL names no nodes"));
            }
            return Ok((
                RedisConfig {
                    url: nodes[0].clone(),
                    topology: RedisTopology::Cluster { nodes },
                    ..self.base()
                },
                key,
            ));
        }
        check_url(url, key)?;
        let url = match url.strip_prefix("redis://") {
            Some(rest) if self.ssl => format!("rediss://{rest}"),
            _ => url.to_owned(),
        };
        self.standalone(url, key)
    }

    /// A Cluster (`redis_startup_nodes`) or Sentinels (`sentinel_nodes` + `service_name`), if named.
    fn topology(&self) -> Result<Option<(RedisConfig, &'static str)>, RouterError> {
        let addresses =
            |nodes: &[RedisNode], key: &str| -> Result<Vec<(String, u16)>, RouterError> {
                nodes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        n.address()
                            .map_err(|e| RouterError::config(format!("{}[{i}]", self.key(key)), e))
                    })
                    .collect()
            };
        if let Some(nodes) = self.startup_nodes.filter(|n| !n.is_empty()) {
            let nodes: Vec<String> = addresses(nodes, "redis_startup_nodes")?
                .iter()
                .map(|(h, p)| self.node_url(h, *p))
                .collect();
            let source = if self.path == "router_settings." {
                "router_settings.redis_startup_nodes"
            } else {
                "litellm_settings.cache_params.redis_startup_nodes"
            };
            return Ok(Some((
                RedisConfig {
                    url: nodes[0].clone(),
                    topology: RedisTopology::Cluster { nodes },
                    ..self.base()
                },
                source,
            )));
        }
        if let Some(nodes) = self.sentinel_nodes.filter(|n| !n.is_empty()) {
            let service_name = self
                .service_name
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| {
                    RouterError::config(
                        self.key("service_name"),
                        "sentinel_nodes needs the service_name of the primary they monitor",
                    )
                })?;
            let sentinels = addresses(nodes, "sentinel_nodes")?
                .iter()
                .map(|(h, p)| url_of(false, self.sentinel_password, h, *p))
                .collect();
            let source = if self.path == "router_settings." {
                "router_settings.sentinel_nodes"
            } else {
                "litellm_settings.cache_params.sentinel_nodes"
            };
            // The host is replaced by the primary the Sentinels name; the URL carries its password and TLS.
            return Ok(Some((
                RedisConfig {
                    url: self.node_url("localhost", 6379),
                    topology: RedisTopology::Sentinel {
                        sentinels,
                        service_name: service_name.to_owned(),
                    },
                    ..self.base()
                },
                source,
            )));
        }
        Ok(None)
    }
}

/// The cache's own Cluster or Sentinels when `cache_kwargs` names them and `router_settings` names a Redis
/// of its own (else the scheduler uses them and the cache shares its connection).
pub(crate) fn own_cache_topology(
    s: &RouterSettings,
    c: &CacheSettings,
) -> Result<Option<RedisConfig>, RouterError> {
    let router = TopologyKeys::of_router(s);
    let router_names_redis = router.startup_nodes.is_some_and(|n| !n.is_empty())
        || router.sentinel_nodes.is_some_and(|n| !n.is_empty())
        || s.redis_url.is_some()
        || s.redis_host
            .as_deref()
            .is_some_and(|h| !h.trim().is_empty());
    if !router_names_redis {
        return Ok(None);
    }
    Ok(TopologyKeys::of_cache(c)
        .topology()?
        .map(|(config, _)| RedisConfig {
            key_prefix: c
                .namespace
                .clone()
                .or_else(|| s.key_prefix.clone())
                .unwrap_or(config.key_prefix.clone()),
            ..config
        }))
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn url_of(tls: bool, password: Option<&str>, host: &str, port: u16) -> String {
    let scheme = if tls { "rediss" } else { "redis" };
    let auth = match password {
        Some(p) if !p.is_empty() => format!(":{}@", percent_encode(p)),
        _ => String::new(),
    };
    format!("{scheme}://{auth}{}:{port}/", bracket(host))
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

/// The kept connection (one server's, the Cluster client's or the Sentinels' primary's) every script of
/// this replica multiplexes over.
#[derive(Clone)]
struct RedisHandle {
    connection: RedisConnection,
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
                let settings = UsageSettings {
                    keyspace: keyspace.clone(),
                    window,
                    rolling,
                    command_timeout: cfg.command_timeout,
                    ..UsageSettings::default()
                };
                let connection = RedisConnection::connect(cfg)
                    .map_err(|e| RouterError::config("router_settings.redis_url", e.to_string()))?;
                let usage = RedisUsage::from_connection(connection.clone(), settings)
                    .map_err(|e| RouterError::config("router_settings", e.to_string()))?;
                let client = Subscriber::new(cfg)
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
                    redis: Some(RedisHandle { connection }),
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
            let connection = RedisConnection::connect(own).map_err(|e| {
                RouterError::config("router_settings.cache_kwargs.host", e.to_string())
            })?;
            let keyspace = own.keyspace().map_err(|e| {
                RouterError::config("router_settings.cache_kwargs.namespace", e.to_string())
            })?;
            return Ok(Some(ResponseCache::redis(c.ttl, connection, keyspace)));
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
                r.connection.clone(),
                self.keyspace.clone(),
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

    fn topology(choice: &BackendChoice) -> RedisTopology {
        match &choice.backend {
            Backend::Redis(cfg) => cfg.topology.clone(),
            Backend::Memory => panic!("memory"),
        }
    }

    fn error_path(yaml: &str) -> String {
        match BackendChoice::from_settings(&settings(yaml), no_env) {
            Err(RouterError::InvalidConfig { path, .. }) => path,
            other => panic!("{yaml}: {other:?}"),
        }
    }

    #[test]
    fn startup_nodes_in_every_litellm_spelling_make_a_cluster() {
        let s = settings(
            "redis_startup_nodes: [{host: a, port: '7001'}, [b, 7002], 'c:7003', {host: 'fd00::1'}]
\
             redis_password: 'p@ss'\nssl: true\n",
        );
        let choice = BackendChoice::from_settings(&s, no_env).unwrap();
        assert_eq!(choice.source, "router_settings.redis_startup_nodes");
        assert_eq!(
            topology(&choice),
            RedisTopology::Cluster {
                nodes: vec![
                    "rediss://:p%40ss@a:7001/".to_owned(),
                    "rediss://:p%40ss@b:7002/".to_owned(),
                    "rediss://:p%40ss@c:7003/".to_owned(),
                    "rediss://:p%40ss@[fd00::1]:6379/".to_owned(),
                ]
            }
        );
        let shown = format!("{} {choice:?}", choice.describe());
        assert!(
            !shown.contains("p%40ss") && shown.contains("redis cluster"),
            "{shown}"
        );
    }

    #[test]
    fn a_cluster_url_lists_its_nodes() {
        let s = settings("redis_url: 'redis+cluster://:pw@h1:7000,h2:7001/'\n");
        let choice = BackendChoice::from_settings(&s, no_env).unwrap();
        assert_eq!(
            topology(&choice),
            RedisTopology::Cluster {
                nodes: vec![
                    "redis://:pw@h1:7000/".to_owned(),
                    "redis://:pw@h2:7001/".to_owned()
                ]
            }
        );
        let s = settings("redis_url: 'rediss+cluster://h1:7000'\n");
        let choice = BackendChoice::from_settings(&s, no_env).unwrap();
        assert_eq!(
            topology(&choice),
            RedisTopology::Cluster {
                nodes: vec!["rediss://h1:7000/".to_owned()]
            }
        );
        let s = settings("redis_url: 'redis://h:1/'\nssl: true\n");
        let choice = BackendChoice::from_settings(&s, no_env).unwrap();
        assert_eq!(redis_url(&choice), Some("rediss://h:1/"));
    }

    #[test]
    fn sentinels_need_a_service_name_and_keep_their_own_password() {
        let s = settings(
            "sentinel_nodes: [[s1, 26379], {host: s2, port: 26380}]\nservice_name: mymaster\n\
             sentinel_password: spw\nredis_password: rpw\n",
        );
        let choice = BackendChoice::from_settings(&s, no_env).unwrap();
        assert_eq!(choice.source, "router_settings.sentinel_nodes");
        assert_eq!(
            topology(&choice),
            RedisTopology::Sentinel {
                sentinels: vec![
                    "redis://:spw@s1:26379/".to_owned(),
                    "redis://:spw@s2:26380/".to_owned()
                ],
                service_name: "mymaster".to_owned(),
            }
        );
        assert_eq!(redis_url(&choice), Some("redis://:rpw@localhost:6379/"));
        let shown = format!("{} {choice:?}", choice.describe());
        assert!(!shown.contains("spw") && !shown.contains("rpw"), "{shown}");
        assert_eq!(
            error_path("sentinel_nodes: [[s1, 26379]]\n"),
            "router_settings.service_name"
        );
    }

    #[test]
    fn bad_nodes_name_their_key_path() {
        assert_eq!(
            error_path("redis_startup_nodes: [{host: a, port: 1}, {host: b, port: 70000}]\n"),
            "router_settings.redis_startup_nodes[1]"
        );
        assert_eq!(
            error_path("sentinel_nodes: ['s1:x']\nservice_name: m\n"),
            "router_settings.sentinel_nodes[0]"
        );
        assert_eq!(
            error_path("redis_url: 'redis+cluster://'\n"),
            "router_settings.redis_url"
        );
    }

    #[test]
    fn cache_params_topology_serves_the_scheduler_when_the_router_names_none() {
        let s = settings(
            "cache_kwargs: {type: redis, redis_startup_nodes: [{host: a, port: 7001}], password: pw, \
             ssl_ca_certs: /ca.pem}\n",
        );
        let choice = BackendChoice::from_settings(&s, no_env).unwrap();
        assert_eq!(
            choice.source,
            "litellm_settings.cache_params.redis_startup_nodes"
        );
        assert_eq!(
            topology(&choice),
            RedisTopology::Cluster {
                nodes: vec!["redis://:pw@a:7001/".to_owned()]
            }
        );
        let Backend::Redis(cfg) = &choice.backend else {
            panic!("memory")
        };
        assert_eq!(
            cfg.tls_ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
        // With a Redis of the router's own, the cache's Cluster is the cache's.
        let s = settings(
            "redis_host: r\ncache_kwargs: {type: redis, redis_startup_nodes: [{host: a, port: 7001}]}\n",
        );
        let choice = BackendChoice::from_settings(&s, no_env).unwrap();
        assert_eq!(redis_url(&choice), Some("redis://r:6379/"));
        let own = own_cache_topology(&s, s.cache_kwargs.as_ref().unwrap())
            .unwrap()
            .unwrap();
        assert!(matches!(own.topology, RedisTopology::Cluster { .. }));
    }
}
