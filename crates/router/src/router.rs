//! [`Router`]: the public API; builds the router's parts from the config and answers from them.

use std::sync::{Arc, Mutex, PoisonError};

use admission::{AdmissionSettings, GroupCandidates, Scheduler, SchedulerStats};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use usage_tracker::{TokenCounter, TokenEstimator};

use crate::backend::{Backend, BackendHandle};
use crate::capacity::Capacity;
use crate::config::RouterConfig;
use crate::error::RouterError;
use crate::health_check::{self, HealthCheck};
use crate::info::{self, DeploymentHealth, DeploymentInfo, GroupQueueStatus, QueueDepth};
use crate::jobs::{JobCaller, JobReport, JobStats, JobTicket, Jobs};
use crate::leases::{renew_leases, Leases};
use crate::metrics::RouterMetrics;
use crate::order::GroupOrders;
use crate::provider::Providers;
use crate::request::{RouterRequest, RouterResponse};
use crate::topology::{self, RedisFailureMode, SkippedDeployment, Topology};
use crate::walk::{Attempts, Walk};

/// LiteLLM's Router as a library: model groups of deployments, load balancing, admission against shared
/// limits, retries, fallbacks, cooldowns, timeouts and a response cache.
///
/// Cheap to clone (one `Arc`); every clone is the same router.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field(
                "model_groups",
                &self
                    .inner
                    .topology
                    .groups()
                    .map(|g| &g.name)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The router's parts.
struct RouterInner {
    topology: Arc<Topology>,
    /// The request path.
    walk: Arc<Walk>,
    /// Durable jobs: submissions, reads, this replica's workers.
    jobs: Arc<Jobs>,
    capacity: Arc<Capacity>,
    /// For readiness, health and queue depths.
    backend: BackendHandle,
    metrics: Arc<RouterMetrics>,
    /// For health checks.
    providers: Providers,
    shutdown: CancellationToken,
    /// The lease renewer, awaited on shutdown.
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Releases of answered requests still on their way, awaited on shutdown.
    settling: TaskTracker,
}

impl Router {
    /// Validates `config` and builds the router on `backend`. Errors name the key path of the problem.
    pub async fn new(config: RouterConfig, backend: Backend) -> Result<Router, RouterError> {
        let topology = Arc::new(topology::build(&config)?);
        for s in topology.skipped() {
            tracing::warn!(entry = %s.path, model_name = %s.model_name, model = %s.model,
                "deployment skipped: {}", s.reason);
        }
        let policy = topology.policy();
        let backend = BackendHandle::build(
            &backend,
            policy.queue.usage_window,
            policy.queue.rolling_window,
            policy.queue.failure_mode,
            policy.queue.replica_heartbeat,
        )?;
        let cache = backend.response_cache(policy.cache.as_ref())?;
        let estimator = match policy.queue.default_max_tokens {
            Some(n) => TokenEstimator::new(n),
            None => TokenEstimator::default(),
        };
        let providers = Providers::new()?;
        // Loading the BPE tables takes a fraction of a second: do it now, not on the first request. Only the
        // tokenizers the groups count with (their first deployment's model): each holds tens of MB of
        // tables, and a config of other providers needs none.
        let mut counters: Vec<TokenCounter> = topology
            .groups()
            .filter_map(|g| g.deployments.first())
            .map(|d| TokenCounter::for_model(&d.litellm_model))
            .collect();
        counters.sort_unstable_by_key(|c| *c as u8);
        counters.dedup();
        let _ = tokio::task::spawn_blocking(move || {
            counters.into_iter().for_each(TokenCounter::preload)
        })
        .await;
        let settings = AdmissionSettings {
            polling_interval: policy.queue.polling_interval,
            queue_lease: policy.queue.queue_lease,
            heartbeat: policy.queue.replica_heartbeat,
            inflight_lease: policy.queue.inflight_lease,
            max_queue_depth: policy.queue.max_queue_depth,
            max_grants_per_step: 128,
        };
        let inflight_lease = policy.queue.inflight_lease;
        let owner: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());

        let orders = Arc::new(GroupOrders::new(topology.clone(), backend.usage().clone()));
        let admission_orders = orders.clone();
        let candidates: GroupCandidates =
            Arc::new(move |group: &str| admission_orders.for_admission(group));
        let scheduler = Scheduler::new(owner, backend.admission().clone(), settings, candidates);
        let leases = Arc::new(Leases::default());
        let capacity = Arc::new(Capacity::new(
            scheduler,
            leases.clone(),
            backend.usage().clone(),
            topology.clone(),
        ));
        let metrics = Arc::new(RouterMetrics::default());
        let shutdown = CancellationToken::new();
        let settling = TaskTracker::new();
        let attempts = Attempts::new(
            topology.clone(),
            orders,
            capacity.clone(),
            providers.clone(),
            metrics.clone(),
            shutdown.clone(),
            settling.clone(),
        );
        let walk = Arc::new(Walk::new(
            topology.clone(),
            cache,
            estimator,
            metrics.clone(),
            shutdown.clone(),
            attempts,
        ));
        let jobs = Jobs::new(
            topology.clone(),
            walk.clone(),
            capacity.clone(),
            backend.jobs().clone(),
        );
        jobs.start();
        let renewer = tokio::spawn(renew_leases(
            Arc::downgrade(&leases),
            backend.usage().clone(),
            inflight_lease,
            shutdown.clone(),
        ));
        Ok(Router {
            inner: Arc::new(RouterInner {
                topology,
                walk,
                jobs,
                capacity,
                backend,
                metrics,
                providers,
                shutdown,
                renewer: Mutex::new(Some(renewer)),
                settling,
            }),
        })
    }

    /// The model groups served, with visible aliases, sorted.
    pub fn model_groups(&self) -> Vec<String> {
        self.inner.topology.model_names()
    }

    /// The deployments, without secrets.
    pub fn deployments(&self) -> Vec<DeploymentInfo> {
        info::deployments(&self.inner.topology)
    }

    /// LiteLLM's health check: one small call (`ping`, one token) to every deployment at once, outside
    /// admission (it does not count against rpm/tpm); a failure that counts against a deployment cools it
    /// down for its `cooldown_time`, as a failed request would.
    pub async fn check_health(&self) -> Vec<HealthCheck> {
        health_check::check_all(
            &self.inner.topology,
            &self.inner.providers,
            self.inner.backend.usage(),
        )
        .await
    }

    /// The `model_list` entries not served because their provider prefix is not supported.
    pub fn skipped_deployments(&self) -> Vec<SkippedDeployment> {
        self.inner.topology.skipped().to_vec()
    }

    /// Usage and health of every deployment (one backend call per group).
    pub async fn health(&self) -> Result<Vec<DeploymentHealth>, RouterError> {
        info::health(&self.inner.topology, self.inner.backend.usage().as_ref()).await
    }

    /// Readiness: the backend answers (always Ok in memory).
    pub async fn ping_backend(&self) -> Result<(), RouterError> {
        self.inner.backend.ping().await
    }

    /// `router_settings.redis_failure_mode` in force, and whether admission serves from memory now (Redis
    /// does not answer and the mode is `open`).
    pub fn redis_failure_mode(&self) -> (RedisFailureMode, bool) {
        (
            self.inner.topology.policy().queue.failure_mode,
            self.inner.backend.serving_from_memory(),
        )
    }

    /// Stops taking requests (new and retrying requests fail with [`RouterError::ShuttingDown`]), stops
    /// the queue pollers and cancels this replica's queued requests so other replicas proceed.
    ///
    /// Durable jobs: this replica stops taking them; the first call waits for the running ones (the
    /// caller bounds it with the grace period), a later call hands back those still running, at their
    /// place in the queue.
    pub async fn shutdown(&self) {
        self.inner.jobs.stop_claiming();
        self.inner.shutdown.cancel();
        self.inner.jobs.shutdown().await;
        self.inner.settling.close();
        self.inner.settling.wait().await;
        self.inner.capacity.shutdown().await;
        let renewer = self
            .inner
            .renewer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(renewer) = renewer {
            let _ = renewer.await;
        }
    }

    /// Requests waiting in each model group's queue, by priority (all replicas; one backend call per
    /// group). Entries of a crashed replica count until they are reaped at the head of the queue.
    pub async fn queue_depths(&self) -> Result<Vec<QueueDepth>, RouterError> {
        info::queue_depths(&self.inner.topology, self.inner.backend.queue()).await
    }

    /// Every model group's queue as the shared store holds it: depth and oldest waiter by priority, live
    /// replicas, grants not yet taken, durable jobs (one backend call per group).
    pub async fn queue_status(&self) -> Result<Vec<GroupQueueStatus>, RouterError> {
        info::queue_status(&self.inner.topology, self.inner.backend.status()).await
    }

    /// `router_settings.usage_window`: the span rpm and tpm are counted over.
    pub fn usage_window(&self) -> std::time::Duration {
        self.inner.topology.policy().queue.usage_window
    }

    /// Releases of answered requests still running in the background (each a moment after its answer).
    pub fn releases_pending(&self) -> usize {
        self.inner.settling.len()
    }

    /// This replica's id in the shared queue.
    pub fn replica_id(&self) -> &str {
        self.inner.capacity.owner()
    }

    /// Admission counters of this replica.
    pub fn scheduler_stats(&self) -> Arc<SchedulerStats> {
        self.inner.capacity.stats()
    }

    /// The router's counters.
    pub fn metrics(&self) -> &RouterMetrics {
        &self.inner.metrics
    }

    /// Enqueues `req` as a durable job of `caller` (checked like [`Router::completion`]; `stream: true` is
    /// refused) and answers its id, place and an estimate of its start.
    pub async fn submit_job(
        &self,
        req: RouterRequest,
        caller: &JobCaller,
    ) -> Result<JobTicket, RouterError> {
        self.inner.jobs.submit(req, caller).await
    }

    /// Job `id` as `caller` sees it (another key's job is [`RouterError::JobNotFound`]); waits up to `wait`
    /// for it to finish.
    pub async fn job(
        &self,
        id: &str,
        caller: &JobCaller,
        wait: std::time::Duration,
    ) -> Result<JobReport, RouterError> {
        self.inner.jobs.read(id, caller, wait).await
    }

    /// Cancels job `id` of `caller`: a queued job never runs, a running one's result is discarded; a
    /// finished one is [`RouterError::JobFinished`].
    pub async fn cancel_job(&self, id: &str, caller: &JobCaller) -> Result<JobReport, RouterError> {
        self.inner.jobs.cancel(id, caller).await
    }

    /// Durable jobs' counters on this replica.
    pub fn job_stats(&self) -> Arc<JobStats> {
        self.inner.jobs.stats()
    }

    /// Durable jobs running on this replica now.
    pub fn jobs_running(&self) -> usize {
        self.inner.jobs.running()
    }

    /// Routes one request: cache, admission, upstream call, retries, fallbacks.
    pub async fn completion(&self, req: RouterRequest) -> Result<RouterResponse, RouterError> {
        self.inner.walk.completion(req).await
    }
}
