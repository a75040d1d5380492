//! `AppState`: what every handler shares (the router, the master key, limits, metrics).

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

use keys::Keys;
use router::{Backend, HealthCheck, Router, RouterSettings};

use crate::key_config::KeyRouters;

use crate::config::Config;
use crate::master_key::MasterKey;
use crate::metrics::EdgeMetrics;

/// Shared state of the HTTP app; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    router: Router,
    /// The router's groups never change; kept to label metrics without asking each time.
    groups: HashSet<String>,
    master_key: Option<MasterKey>,
    max_request_size: usize,
    metrics_require_auth: bool,
    allow_client_side_overrides: bool,
    backend: String,
    metrics: EdgeMetrics,
    /// Virtual keys, in the router's store (Redis or memory).
    keys: Keys,
    /// Routers of keys with deployments of their own.
    key_routers: KeyRouters,
    /// The backend and router settings, for the routers of keys' own deployments.
    backend_choice: Backend,
    router_settings: RouterSettings,
    /// USD per (prompt, completion) token by deployment id, for key spend.
    prices: HashMap<String, (f64, f64)>,
    /// The priority of requests that name none (`router_settings.default_priority`).
    default_priority: u32,
    /// How long a request may wait at most (`router_settings.timeout`), when it names no timeout.
    default_timeout: Duration,
    started_epoch_secs: u64,
    shutting_down: AtomicBool,
    /// The last background health check: when (Unix seconds) and what it found.
    health_checks: Mutex<Option<(u64, Vec<HealthCheck>)>>,
}

impl AppState {
    /// State for `router` with the proxy settings of `config`.
    pub fn new(router: Router, config: &Config) -> Self {
        let prices = router
            .deployments()
            .into_iter()
            .filter(|d| d.input_cost_per_token.is_some() || d.output_cost_per_token.is_some())
            .map(|d| {
                let price = (
                    d.input_cost_per_token.unwrap_or(0.0),
                    d.output_cost_per_token.unwrap_or(0.0),
                );
                (d.id, price)
            })
            .collect();
        let settings = &config.router.settings;
        Self {
            inner: Arc::new(Inner {
                groups: router.model_groups().into_iter().collect(),
                router,
                master_key: config.master_key.clone(),
                max_request_size: config.max_request_size,
                metrics_require_auth: config.metrics_require_auth,
                allow_client_side_overrides: config.allow_client_side_overrides,
                backend: if config.backend.is_redis() {
                    "redis".to_owned()
                } else {
                    "memory".to_owned()
                },
                metrics: EdgeMetrics::new(),
                keys: key_store(&config.backend.backend),
                key_routers: KeyRouters::default(),
                backend_choice: config.backend.backend.clone(),
                router_settings: config.router.settings.clone(),
                prices,
                default_priority: settings
                    .default_priority
                    .and_then(|p| u32::try_from(p).ok())
                    .unwrap_or(128),
                default_timeout: settings
                    .timeout
                    .filter(|t| t.is_finite() && *t > 0.0)
                    .map_or(Duration::from_secs(600), Duration::from_secs_f64),
                started_epoch_secs: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                shutting_down: AtomicBool::new(false),
                health_checks: Mutex::new(None),
            }),
        }
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.inner.router
    }

    /// Marks the replica as shutting down: readiness answers 503 so load balancers stop sending traffic.
    pub fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::SeqCst)
    }

    /// Whether `name` is a model group (or visible alias) the router serves.
    pub(crate) fn serves(&self, name: &str) -> bool {
        self.inner.groups.contains(name)
    }

    pub(crate) fn master_key(&self) -> Option<&MasterKey> {
        self.inner.master_key.as_ref()
    }

    pub(crate) fn max_request_size(&self) -> usize {
        self.inner.max_request_size
    }

    pub(crate) fn metrics_require_auth(&self) -> bool {
        self.inner.metrics_require_auth
    }

    pub(crate) fn allow_client_side_overrides(&self) -> bool {
        self.inner.allow_client_side_overrides
    }

    pub(crate) fn backend_name(&self) -> &str {
        &self.inner.backend
    }

    pub(crate) fn metrics(&self) -> &EdgeMetrics {
        &self.inner.metrics
    }

    pub(crate) fn keys(&self) -> &Keys {
        &self.inner.keys
    }

    pub(crate) fn key_routers(&self) -> &KeyRouters {
        &self.inner.key_routers
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.inner.backend_choice
    }

    pub(crate) fn router_settings(&self) -> &RouterSettings {
        &self.inner.router_settings
    }

    /// Shuts down the routers of keys' own deployments (the proxy's router is shut down by its owner).
    pub async fn shutdown_key_routers(&self) {
        self.inner.key_routers.shutdown().await;
    }

    /// USD per (prompt, completion) token of a deployment, when it has prices.
    pub(crate) fn price(&self, deployment: &str) -> Option<(f64, f64)> {
        self.inner.prices.get(deployment).copied()
    }

    pub(crate) fn default_priority(&self) -> u32 {
        self.inner.default_priority
    }

    pub(crate) fn default_timeout(&self) -> Duration {
        self.inner.default_timeout
    }

    pub(crate) fn started_epoch_secs(&self) -> u64 {
        self.inner.started_epoch_secs
    }

    /// Keeps the results of a background health check for `/health`.
    pub(crate) fn record_health_checks(&self, checks: Vec<HealthCheck>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        *self
            .inner
            .health_checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((now, checks));
    }

    /// The last background health check, if one ran.
    pub(crate) fn health_checks(&self) -> Option<(u64, Vec<HealthCheck>)> {
        self.inner
            .health_checks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The key store beside the router's: the same Redis (a pool or Cluster client of its own, the same call
/// timeout and key prefix), or memory.
fn key_store(backend: &Backend) -> Keys {
    match backend {
        Backend::Memory => Keys::memory(),
        Backend::Redis(redis) => match store::RedisConnection::connect(&store::RedisConfig {
            pool_size: 8,
            ..redis.clone()
        }) {
            Ok(connection) => Keys::redis(connection, &redis.key_prefix),
            // The router connected with the same settings before this: not reached in practice.
            Err(error) => {
                tracing::error!(%error, "cannot reach Redis for virtual keys; keys live in memory");
                Keys::memory()
            }
        },
    }
}
