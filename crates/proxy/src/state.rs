//! `AppState`: what every handler shares (the router, the master key, limits, metrics).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use router::{HealthCheck, Router};

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
    started_epoch_secs: u64,
    shutting_down: AtomicBool,
    /// The last background health check: when (Unix seconds) and what it found.
    health_checks: Mutex<Option<(u64, Vec<HealthCheck>)>>,
}

impl AppState {
    /// State for `router` with the proxy settings of `config`.
    pub fn new(router: Router, config: &Config) -> Self {
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
