//! [`Router`]: resolves the model group, orders deployments by strategy, takes capacity, calls the upstream,
//! retries within the group, falls back to other groups, caches responses.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use queue_core::Priority;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use usage_tracker::{Candidate, LatencySample, Limits, Reservation, TokenEstimate, TokenEstimator};

use crate::backend::{Backend, BackendHandle};
use crate::cache::ResponseCache;
use crate::capacity::Settlement;
use crate::config::RouterConfig;
use crate::error::{RouterError, UpstreamErrorKind};
use crate::metrics::RouterMetrics;
use crate::provider::{Call, Providers, Reply};
use crate::request::{
    Controls, Endpoint, ResponseBody, ResponseMeta, RouterRequest, RouterResponse,
};
use crate::strategy::{self, Strategy};
use crate::stream;
use crate::topology::{self, Deployment, ModelGroup, Topology};
use admission::{
    AdmissionSettings, AdmitRequest, GroupCandidates, GroupOrder, Scheduler, SchedulerStats,
};

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
            .field("model_groups", &self.inner.topology.model_names())
            .finish_non_exhaustive()
    }
}

/// The router's shared state.
pub(crate) struct RouterInner {
    pub(crate) topology: Topology,
    pub(crate) backend: BackendHandle,
    providers: Providers,
    cache: Option<ResponseCache>,
    pub(crate) metrics: RouterMetrics,
    estimator: TokenEstimator,
    /// latency-based-routing: per group, latency per output token of each deployment, and when it was read.
    latency: Mutex<HashMap<String, (Instant, Latencies)>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) scheduler: Scheduler,
    /// Reservations of this replica's requests in flight, by reservation id: their leases are renewed
    /// until they are settled.
    pub(crate) in_flight: Mutex<HashMap<String, Reservation>>,
    /// The lease renewer, awaited on shutdown.
    renewer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Releases of answered requests still on their way, awaited on shutdown.
    pub(crate) settling: TaskTracker,
}

/// Latency per output token of each deployment of a group, in the group's order.
type Latencies = Arc<Vec<Option<f64>>>;

/// A deployment as configured (no secrets).
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentInfo {
    /// Stable deployment id.
    pub id: String,
    /// Model group.
    pub group: String,
    /// `litellm_params.model` (`azure/my-deployment`).
    pub model: String,
    /// Provider prefix (`openai`, `azure`, ...).
    pub provider: String,
    /// Upstream base URL (empty for mock deployments).
    pub api_base: String,
    /// Requests per window.
    pub rpm: Option<u64>,
    /// Tokens per window.
    pub tpm: Option<u64>,
    /// Concurrent requests.
    pub max_parallel_requests: Option<u32>,
    /// Largest prompt.
    pub max_input_tokens: Option<u64>,
    /// Tier (`order`), if set.
    pub order: Option<u32>,
    /// simple-shuffle weight, if set.
    pub weight: Option<f64>,
    /// Tags.
    pub tags: Vec<String>,
    /// Answers with `mock_response`.
    pub mock: bool,
}

/// Requests waiting in one model group's queue at one priority.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueDepth {
    /// Model group.
    pub group: String,
    /// Priority (lower is served first).
    pub priority: u32,
    /// Requests waiting.
    pub waiting: u64,
}

/// Live usage and health of a deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentHealth {
    /// Stable deployment id.
    pub id: String,
    /// Model group.
    pub group: String,
    /// Remaining cooldown, if cooling down.
    pub cooldown_remaining: Option<Duration>,
    /// Requests in flight (all replicas).
    pub in_flight: u64,
    /// Requests admitted in the current window.
    pub rpm_used: u64,
    /// Tokens charged in the current window.
    pub tpm_used: u64,
    /// Configured rpm.
    pub rpm_limit: Option<u64>,
    /// Configured tpm.
    pub tpm_limit: Option<u64>,
    /// Successes in the current window.
    pub successes_in_window: u64,
    /// Failures in the current window.
    pub failures_in_window: u64,
    /// EWMA latency per output token (ms).
    pub latency_ms_per_token: Option<f64>,
    /// EWMA time to first token (ms).
    pub ttft_ms: Option<f64>,
}

/// One request on its way through groups and attempts.
struct Job {
    endpoint: Endpoint,
    body: Value,
    stream: bool,
    prompt_tokens: u64,
    est_tokens: u64,
    priority: Priority,
    deadline: Instant,
    force_queue: bool,
    timeout: Option<Duration>,
    stream_timeout: Option<Duration>,
    num_retries: Option<u32>,
    mock_response: Option<String>,
    mock_delay: Option<Duration>,
    attempts: u32,
    queue_wait: Duration,
}

/// A successful answer from some deployment.
struct Answer {
    body: ResponseBody,
    group: String,
    deployment_id: String,
    upstream_latency: Duration,
}

impl Router {
    /// Validates `config` and builds the router on `backend`. Errors name the key path of the problem.
    pub async fn new(config: RouterConfig, backend: Backend) -> Result<Router, RouterError> {
        let topology = topology::build(&config)?;
        let backend = BackendHandle::build(&backend, topology.policy().queue.usage_window)?;
        let cache = match &topology.policy().cache {
            None => None,
            Some(c) => match (c.redis, &backend.redis) {
                (Some(true), None) => {
                    return Err(RouterError::config(
                        "router_settings.cache_kwargs.type",
                        "a redis cache needs the Redis backend (redis_host or redis_url)",
                    ))
                }
                (Some(false), _) | (None, None) => {
                    Some(ResponseCache::memory(c.ttl, c.max_size_bytes))
                }
                (_, Some(r)) => Some(ResponseCache::redis(
                    c.ttl,
                    r.pool.clone(),
                    backend.keyspace.clone(),
                    r.command_timeout,
                )),
            },
        };
        let estimator = match topology.policy().queue.default_max_tokens {
            Some(n) => TokenEstimator::new(n),
            None => TokenEstimator::default(),
        };
        let providers = Providers::new()?;
        // Loading the BPE tables takes a fraction of a second: do it now, not on the first request.
        let _ = tokio::task::spawn_blocking(usage_tracker::preload_tokenizers).await;
        let settings = AdmissionSettings {
            polling_interval: topology.policy().queue.polling_interval,
            queue_lease: topology.policy().queue.queue_lease,
            inflight_lease: topology.policy().queue.inflight_lease,
            max_queue_depth: topology.policy().queue.max_queue_depth,
            max_grants_per_step: 128,
        };
        let owner: Arc<str> = Arc::from(uuid::Uuid::new_v4().simple().to_string());
        let admission = backend.admission.clone();
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<RouterInner>| {
            let weak = weak.clone();
            let candidates: GroupCandidates = Arc::new(move |group: &str| {
                let inner = weak.upgrade()?;
                inner.group_order(group)
            });
            RouterInner {
                topology,
                backend,
                providers,
                cache,
                metrics: RouterMetrics::default(),
                estimator,
                latency: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                scheduler: Scheduler::new(owner, admission, settings, candidates),
                in_flight: Mutex::new(HashMap::new()),
                renewer: Mutex::new(None),
                settling: TaskTracker::new(),
            }
        });
        let renewer = tokio::spawn(renew_leases(
            Arc::downgrade(&inner),
            inner.topology.policy().queue.inflight_lease,
            inner.shutdown.clone(),
        ));
        *inner.renewer.lock().unwrap_or_else(PoisonError::into_inner) = Some(renewer);
        Ok(Router { inner })
    }

    /// The model groups served, with visible aliases, sorted.
    pub fn model_groups(&self) -> Vec<String> {
        self.inner.topology.model_names()
    }

    /// The deployments, without secrets.
    pub fn deployments(&self) -> Vec<DeploymentInfo> {
        self.inner
            .topology
            .groups()
            .flat_map(|g| g.deployments.iter())
            .map(|d| DeploymentInfo {
                id: d.id.clone(),
                group: d.group.clone(),
                model: d.litellm_model.clone(),
                provider: d.provider.clone(),
                api_base: d.api_base.clone(),
                rpm: d.rpm,
                tpm: d.tpm,
                max_parallel_requests: d.max_parallel,
                max_input_tokens: d.max_input_tokens,
                order: (d.tier != u32::MAX).then_some(d.tier),
                weight: d.weight,
                tags: d.tags.clone(),
                mock: d.mock_response.is_some(),
            })
            .collect()
    }

    /// Usage and health of every deployment (one backend call per group).
    pub async fn health(&self) -> Result<Vec<DeploymentHealth>, RouterError> {
        let mut out = Vec::new();
        for g in self.inner.topology.groups() {
            let ids: Vec<Arc<str>> = g.deployments.iter().map(|d| d.dref.id.clone()).collect();
            let stats = self
                .inner
                .backend
                .usage
                .stats(&g.name, &ids)
                .await
                .map_err(RouterError::backend)?;
            for (d, s) in g.deployments.iter().zip(stats) {
                out.push(DeploymentHealth {
                    id: d.id.clone(),
                    group: g.name.clone(),
                    cooldown_remaining: s.cooldown_remaining,
                    in_flight: s.in_flight,
                    rpm_used: s.rpm_used,
                    tpm_used: s.tpm_used,
                    rpm_limit: d.rpm,
                    tpm_limit: d.tpm,
                    successes_in_window: s.successes_in_window,
                    failures_in_window: s.failures_in_window,
                    latency_ms_per_token: s.latency_ms_per_token,
                    ttft_ms: s.ttft_ms,
                });
            }
        }
        Ok(out)
    }

    /// Readiness: the backend answers (always Ok in memory).
    pub async fn ping_backend(&self) -> Result<(), RouterError> {
        self.inner.backend.ping().await
    }

    /// Stops taking requests (new and retrying requests fail with [`RouterError::ShuttingDown`]), stops
    /// the queue pollers and cancels this replica's queued requests so other replicas proceed.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.settling.close();
        self.inner.settling.wait().await;
        self.inner.scheduler.shutdown().await;
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
        let mut out = Vec::new();
        for group in self.inner.topology.groups().map(|g| &g.name) {
            let depths = self
                .inner
                .backend
                .queue
                .depth_by_priority(group)
                .await
                .map_err(RouterError::backend)?;
            out.extend(depths.into_iter().map(|(priority, waiting)| QueueDepth {
                group: group.clone(),
                priority: priority.get(),
                waiting,
            }));
        }
        Ok(out)
    }

    /// Releases of answered requests still running in the background (each a moment after its answer).
    pub fn releases_pending(&self) -> usize {
        self.inner.settling.len()
    }

    /// This replica's id in the shared queue.
    pub fn replica_id(&self) -> &str {
        self.inner.scheduler.owner()
    }

    /// Admission counters of this replica.
    pub fn scheduler_stats(&self) -> Arc<SchedulerStats> {
        self.inner.scheduler.stats()
    }

    /// The router's counters.
    pub fn metrics(&self) -> &RouterMetrics {
        &self.inner.metrics
    }

    /// Routes one request: cache, admission, upstream call, retries, fallbacks.
    pub async fn completion(&self, req: RouterRequest) -> Result<RouterResponse, RouterError> {
        let inner = &self.inner;
        if inner.shutdown.is_cancelled() {
            return Err(RouterError::ShuttingDown);
        }
        let start = Instant::now();
        let stream = req.is_stream();
        let RouterRequest {
            endpoint,
            model,
            mut body,
            priority,
            timeout,
            force_queue,
            cache,
        } = req;
        let topology = &inner.topology;
        let Some(target) = topology.resolve(&model) else {
            return Err(RouterError::ModelNotFound {
                model,
                known: self.model_groups().join(", "),
            });
        };
        let group = target.group;
        let controls = Controls::take(&mut body, &group.name)?;
        let cache_control = if cache == Default::default() {
            controls.cache.unwrap_or_default()
        } else {
            cache
        };
        let mut request_fallbacks = controls.fallbacks;
        if let Some(list) = &request_fallbacks {
            if let Some(unknown) = list.iter().find(|g| topology.group(g).is_none()) {
                return Err(RouterError::BadRequest {
                    message: format!("fallback model group `{unknown}` is not served here"),
                    param: Some("fallbacks".into()),
                });
            }
        }

        let cache_key = match &inner.cache {
            Some(_) if !stream => Some(ResponseCache::key(&group.name, endpoint, &body)),
            _ => None,
        };
        if let (Some(c), Some(key)) = (&inner.cache, &cache_key) {
            if !cache_control.no_cache {
                let hit = c.get(key, cache_control.s_maxage).await;
                inner.metrics.cache(hit.is_some());
                if let Some(v) = hit {
                    inner.metrics.request(&group.name, 200, "");
                    return Ok(RouterResponse {
                        body: ResponseBody::Json(v),
                        meta: ResponseMeta {
                            model_group: group.name.clone(),
                            cache_hit: true,
                            ..ResponseMeta::default()
                        },
                    });
                }
            }
        }

        let body = Value::Object(body);
        let token_model = group
            .deployments
            .first()
            .map_or("", |d| d.litellm_model.as_str());
        let (estimate, body) = estimate_tokens(inner.estimator, token_model, body).await?;
        let est_tokens = if endpoint == Endpoint::Embeddings {
            estimate.prompt_tokens
        } else {
            estimate.est_tokens
        };
        let timeout = timeout.or(controls.timeout);
        let policy = &topology.policy();
        let mut job = Job {
            endpoint,
            body,
            stream,
            prompt_tokens: estimate.prompt_tokens,
            est_tokens,
            priority: priority.or(controls.priority).unwrap_or_else(|| {
                Priority::new(policy.queue.default_priority).unwrap_or(Priority::MAX)
            }),
            deadline: start + timeout.unwrap_or(policy.timeout),
            force_queue,
            timeout,
            stream_timeout: controls.stream_timeout,
            num_retries: controls.num_retries,
            mock_response: controls.mock_response,
            mock_delay: controls.mock_delay,
            attempts: 0,
            queue_wait: Duration::ZERO,
        };

        // Groups in the order tried: the first, then fallbacks depth first (a failing fallback's own
        // fallbacks come before its siblings), each group once, at most max_fallbacks of them.
        let mut current: (&ModelGroup, Option<&[String]>) = (group, target.only);
        let mut tried: HashSet<String> = HashSet::from([group.name.clone()]);
        let mut pending: VecDeque<String> = VecDeque::new();
        let mut used: Vec<String> = Vec::new();
        let mut first_error: Option<RouterError> = None;
        let result = loop {
            match self.run_group(&mut job, current.0, current.1).await {
                Ok(answer) => break Ok(answer),
                Err(e) => {
                    let next = self.fallbacks_for(&e, &current.0.name, request_fallbacks.take());
                    for g in next.into_iter().rev() {
                        if !tried.contains(&g) && !pending.contains(&g) {
                            pending.push_front(g);
                        }
                    }
                    let stop = matches!(e, RouterError::ShuttingDown)
                        || used.len()
                            >= usize::try_from(policy.max_fallbacks).unwrap_or(usize::MAX);
                    // The client gets the first group's error: it is about the model it asked for.
                    let err = first_error.take().unwrap_or(e);
                    let next_group = if stop { None } else { pending.pop_front() };
                    let Some(next) = next_group.and_then(|g| topology.group(&g)) else {
                        break Err(err);
                    };
                    first_error = Some(err);
                    tracing::info!(from = %current.0.name, to = %next.name, "falling back");
                    inner.metrics.fallback();
                    tried.insert(next.name.clone());
                    used.push(next.name.clone());
                    current = (next, None);
                }
            }
        };

        match result {
            Ok(answer) => {
                inner
                    .metrics
                    .request(&group.name, 200, &answer.deployment_id);
                if let (Some(c), Some(key), ResponseBody::Json(v)) =
                    (&inner.cache, &cache_key, &answer.body)
                {
                    if !cache_control.no_store {
                        c.put(key, v, cache_control.ttl).await;
                    }
                }
                Ok(RouterResponse {
                    body: answer.body,
                    meta: ResponseMeta {
                        model_group: answer.group,
                        deployment_id: answer.deployment_id,
                        attempts: job.attempts,
                        fallbacks: used,
                        cache_hit: false,
                        queue_wait: job.queue_wait,
                        upstream_latency: answer.upstream_latency,
                    },
                })
            }
            Err(e) => {
                inner.metrics.request(&group.name, e.status_code(), "");
                Err(e)
            }
        }
    }

    /// The groups to fall back to after `err` in `group`. Context-window and content-policy errors use their
    /// own lists when configured; errors caused by the request itself do not fall back.
    fn fallbacks_for(
        &self,
        err: &RouterError,
        group: &str,
        request: Option<Vec<String>>,
    ) -> Vec<String> {
        let policy = &self.inner.topology.policy();
        if err.is_context_window() {
            let list = policy.context_window_fallbacks.for_group(group);
            if !list.is_empty() {
                return list.to_vec();
            }
        } else if err.upstream_kind() == Some(UpstreamErrorKind::ContentPolicyViolation) {
            let list = policy.content_policy_fallbacks.for_group(group);
            if !list.is_empty() {
                return list.to_vec();
            }
        } else {
            let own_fault = matches!(
                err,
                RouterError::BadRequest { .. }
                    | RouterError::ModelNotFound { .. }
                    | RouterError::InvalidConfig { .. }
                    | RouterError::Backend(_)
                    | RouterError::ShuttingDown
                    | RouterError::Internal(_)
            ) || err.upstream_kind() == Some(UpstreamErrorKind::BadRequest);
            if own_fault {
                return Vec::new();
            }
        }
        match request {
            Some(list) => list,
            None => policy.fallbacks.for_group(group).to_vec(),
        }
    }

    /// Attempts in one group: each attempt reserves capacity on the strategy's preferred deployment with
    /// headroom; retryable failures are retried (another deployment at once, else after Retry-After or a
    /// backoff) up to the retry budget.
    async fn run_group(
        &self,
        job: &mut Job,
        group: &ModelGroup,
        only: Option<&[String]>,
    ) -> Result<Answer, RouterError> {
        let inner = &self.inner;
        let policy = &inner.topology.policy();
        let eligible: Vec<usize> = (0..group.deployments.len())
            .filter(|&i| only.is_none_or(|ids| ids.contains(&group.deployments[i].id)))
            .collect();
        if policy.pre_call_checks {
            let fits = |i: &usize| {
                group.deployments[*i]
                    .max_input_tokens
                    .is_none_or(|m| job.prompt_tokens <= m)
            };
            if !eligible.iter().any(fits) {
                return Err(RouterError::PromptTooLong {
                    group: group.name.clone(),
                    prompt_tokens: job.prompt_tokens,
                    max_input_tokens: eligible
                        .iter()
                        .filter_map(|&i| group.deployments[i].max_input_tokens)
                        .max()
                        .unwrap_or(0),
                });
            }
        }
        let mut failed: HashSet<usize> = HashSet::new();
        let mut retries: u32 = 0;
        let mut last_error: Option<RouterError> = None;
        loop {
            if inner.shutdown.is_cancelled() {
                return Err(RouterError::ShuttingDown);
            }
            let remaining = job.deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(last_error.unwrap_or_else(|| RouterError::QueueTimeout {
                    group: group.name.clone(),
                    waited: job.queue_wait,
                }));
            }
            // Deployments that failed this request are skipped while others remain.
            let healthy: Vec<usize> = eligible
                .iter()
                .copied()
                .filter(|i| !failed.contains(i))
                .collect();
            let pool = if healthy.is_empty() {
                eligible.clone()
            } else {
                healthy
            };
            let order = self.order(group, &pool).await;
            let candidates: Vec<Candidate> = order
                .iter()
                .map(|&i| candidate(&group.deployments[i], policy.pre_call_checks))
                .collect();
            let deployment_timeout =
                |d: &Deployment| job.timeout.or(d.timeout).unwrap_or(policy.timeout);
            let (reservation, waited) = inner
                .acquire(AdmitRequest {
                    group: group.name.as_str().into(),
                    candidates,
                    order: policy.strategy.candidate_order(),
                    est_tokens: job.est_tokens,
                    prompt_tokens: job.prompt_tokens,
                    priority: job.priority,
                    deadline: job.deadline,
                    force_queue: job.force_queue,
                    retry: job.attempts > 0,
                })
                .await?;
            job.queue_wait += waited;
            // From here the request may be dropped at any await (client gone): the guard settles it.
            let mut held = Held::new(inner.clone(), reservation);
            // The reservation names its deployment: a grant from the queue was made with the poller's
            // candidate order, not this request's, so its candidate index means nothing here.
            let reserved = &held.reservation().deployment.id;
            let Some(index) = group.deployments.iter().position(|d| *d.id == **reserved) else {
                return Err(RouterError::Internal(format!(
                    "reservation names deployment {reserved}, not in group {}",
                    group.name
                )));
            };
            let d = &group.deployments[index];
            job.attempts += 1;

            let remaining = job
                .deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let attempt_timeout = deployment_timeout(d);
            let first_byte_timeout = if job.stream {
                job.stream_timeout
                    .or(d.stream_timeout)
                    .or(policy.stream_timeout)
                    .unwrap_or(attempt_timeout)
            } else {
                attempt_timeout
            }
            .min(remaining);
            let sent = Instant::now();
            let Some(body) = job.body.as_object() else {
                return Err(RouterError::Internal(
                    "request body is not an object".into(),
                ));
            };
            let reply = inner
                .providers
                .call(Call {
                    deployment: d,
                    endpoint: job.endpoint,
                    body,
                    stream: job.stream,
                    timeout: first_byte_timeout,
                    mock_response: job.mock_response.as_deref(),
                    mock_delay: job.mock_delay,
                    prompt_tokens: job.prompt_tokens,
                })
                .await;
            let latency = sent.elapsed();
            match reply {
                Ok(Reply::Json(v)) => {
                    inner
                        .metrics
                        .attempt(&group.name, &d.id, "ok", Some(latency));
                    let (actual, output) = usage_of(&v);
                    let sample = LatencySample {
                        total: latency,
                        ttft: None,
                        output_tokens: output.unwrap_or(0),
                    };
                    // The answer does not wait for the release step (a Redis round trip that also admits
                    // the next waiters): it runs in the background, and shutdown waits for it.
                    let settled = inner.clone();
                    let reservation = held.take();
                    inner.settling.spawn(async move {
                        settled
                            .settle(&reservation, Settlement::success(actual, sample))
                            .await;
                    });
                    return Ok(Answer {
                        body: ResponseBody::Json(v),
                        group: group.name.clone(),
                        deployment_id: d.id.clone(),
                        upstream_latency: latency,
                    });
                }
                Ok(Reply::Stream { first, rest }) => {
                    inner
                        .metrics
                        .attempt(&group.name, &d.id, "ok", Some(latency));
                    let relay = stream::relay(
                        stream::Relay::new(
                            inner.clone(),
                            held.take(),
                            d.clone(),
                            sent,
                            latency,
                            attempt_timeout,
                            job.prompt_tokens,
                        ),
                        first,
                        rest,
                    );
                    return Ok(Answer {
                        body: ResponseBody::Stream(relay),
                        group: group.name.clone(),
                        deployment_id: d.id.clone(),
                        upstream_latency: latency,
                    });
                }
                Err(e) => {
                    let status = e.status_code().to_string();
                    inner.metrics.attempt(&group.name, &d.id, &status, None);
                    tracing::warn!(group = %group.name, deployment = %d.id, attempt = job.attempts, error = %e,
                        "upstream attempt failed");
                    let cooled = inner
                        .settle(&held.take(), Settlement::failure(&e))
                        .await
                        .is_some();
                    failed.insert(index);
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    let budget = e
                        .upstream_kind()
                        .and_then(|k| policy.retry_policy.for_kind(k))
                        .or(job.num_retries)
                        .or(d.num_retries)
                        .unwrap_or(policy.num_retries);
                    if retries >= budget {
                        return Err(e);
                    }
                    retries += 1;
                    inner.metrics.retry();
                    // Another deployment that has not failed this request is tried at once. Otherwise wait
                    // (Retry-After or backoff) unless the failure cooled the deployment: then the next
                    // reservation answers at once, with a 429 naming when to retry if all are cooling down.
                    let another_healthy = eligible.iter().any(|i| !failed.contains(i));
                    if !another_healthy && !cooled {
                        let wait = e.retry_after().unwrap_or_else(|| backoff(retries - 1));
                        if Instant::now() + wait >= job.deadline {
                            return Err(e);
                        }
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = inner.shutdown.cancelled() => return Err(e),
                        }
                    }
                    last_error = Some(e);
                }
            }
        }
    }

    /// The strategy's order of `pool` (indices into the group's deployments), lower tiers first.
    async fn order(&self, group: &ModelGroup, pool: &[usize]) -> Vec<usize> {
        let policy = &self.inner.topology.policy();
        let tiers: Vec<u32> = group.deployments.iter().map(|d| d.tier).collect();
        match policy.strategy {
            Strategy::SimpleShuffle => {
                let weights: Vec<f64> = pool.iter().map(|&i| group.shuffle_weights[i]).collect();
                let order = strategy::weighted_order(&weights, &mut rand::rng());
                strategy::by_tier(order.into_iter().map(|j| pool[j]).collect(), &tiers)
            }
            Strategy::LatencyBased => {
                let all = self.latencies(group).await;
                let lat: Vec<Option<f64>> = pool
                    .iter()
                    .map(|&i| all.get(i).copied().flatten())
                    .collect();
                let order =
                    strategy::latency_order(&lat, policy.lowest_latency_buffer, &mut rand::rng());
                strategy::by_tier(order.into_iter().map(|j| pool[j]).collect(), &tiers)
            }
            // The reserve script sorts by (tier, metric, given index): a shuffle spreads ties.
            Strategy::UsageBased | Strategy::LeastBusy => {
                let mut order = pool.to_vec();
                order.shuffle(&mut rand::rng());
                order
            }
        }
    }

    /// Latency per output token of each deployment of `group`, read at most once per `ttl`.
    async fn latencies(&self, group: &ModelGroup) -> Latencies {
        let inner = &self.inner;
        let ttl = inner.topology.policy().latency_ttl;
        {
            let cache = inner.latency.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, v)) = cache.get(&group.name) {
                if at.elapsed() < ttl {
                    return v.clone();
                }
            }
        }
        let ids: Vec<Arc<str>> = group
            .deployments
            .iter()
            .map(|d| d.dref.id.clone())
            .collect();
        let v = match inner.backend.usage.stats(&group.name, &ids).await {
            Ok(stats) => stats.iter().map(|s| s.latency_ms_per_token).collect(),
            Err(e) => {
                tracing::warn!(group = %group.name, error = %e, "latency stats unavailable");
                vec![None; ids.len()]
            }
        };
        let v = Arc::new(v);
        inner
            .latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(group.name.clone(), (Instant::now(), v.clone()));
        v
    }
}

/// Bodies with more text than this are counted on the blocking pool: a BPE count takes about 25-50 µs per KB,
/// and a 100 KB prompt would hold an async worker (and every request it serves) for milliseconds.
const BLOCKING_ESTIMATE_BYTES: usize = 16 * 1024;

/// Token estimate of `body` for admission, off the async worker when the body is large.
async fn estimate_tokens(
    estimator: TokenEstimator,
    model: &str,
    body: Value,
) -> Result<(TokenEstimate, Value), RouterError> {
    if usage_tracker::text_len(&body) <= BLOCKING_ESTIMATE_BYTES {
        return Ok((estimator.estimate(model, &body), body));
    }
    let model = model.to_owned();
    tokio::task::spawn_blocking(move || (estimator.estimate(&model, &body), body))
        .await
        .map_err(|e| RouterError::Internal(format!("token estimate failed: {e}")))
}

/// Renews the in-flight leases of this replica's requests every third of the lease (`inflight_lease`):
/// one backend call per model group with requests in flight, whatever their number.
async fn renew_leases(
    inner: std::sync::Weak<RouterInner>,
    lease: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let held: Vec<Reservation> = inner
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        if held.is_empty() {
            continue;
        }
        if let Err(e) = inner.backend.usage.renew(&held, lease).await {
            tracing::warn!(error = %e, "renewing in-flight leases failed (retried at the next tick)");
        }
    }
}

/// A reservation whose request is on its way upstream. Dropped unsettled (the client went away during the
/// call), it is settled as cancelled in the background so its in-flight slot comes back at once.
struct Held {
    inner: Arc<RouterInner>,
    reservation: Reservation,
    settled: bool,
}

impl Held {
    fn new(inner: Arc<RouterInner>, reservation: Reservation) -> Held {
        Held {
            inner,
            reservation,
            settled: false,
        }
    }

    fn reservation(&self) -> &Reservation {
        &self.reservation
    }

    /// The reservation, to settle now (the guard no longer settles it).
    fn take(&mut self) -> Reservation {
        self.settled = true;
        self.reservation.clone()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let inner = self.inner.clone();
            let r = self.reservation.clone();
            handle.spawn(async move { inner.settle(&r, Settlement::cancelled()).await });
        }
    }
}

impl RouterInner {
    /// All deployments of `group` in the strategy's order, without waiting for statistics: admission steps
    /// not tied to one request (polls, releases) grant with this order.
    fn group_order(&self, group: &str) -> Option<GroupOrder> {
        let group = self.topology.group(group)?;
        let policy = &self.topology.policy();
        let tiers: Vec<u32> = group.deployments.iter().map(|d| d.tier).collect();
        let all: Vec<usize> = (0..group.deployments.len()).collect();
        let order = match policy.strategy {
            Strategy::SimpleShuffle => {
                strategy::weighted_order(&group.shuffle_weights, &mut rand::rng())
            }
            Strategy::LatencyBased => {
                let cached = self
                    .latency
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get(&group.name)
                    .map(|(_, v)| v.clone());
                match cached {
                    Some(lat) => strategy::latency_order(
                        &lat,
                        policy.lowest_latency_buffer,
                        &mut rand::rng(),
                    ),
                    None => all,
                }
            }
            Strategy::UsageBased | Strategy::LeastBusy => {
                let mut order = all;
                order.shuffle(&mut rand::rng());
                order
            }
        };
        let order = strategy::by_tier(order, &tiers);
        let candidates: Arc<[Candidate]> = order
            .iter()
            .map(|&i| candidate(&group.deployments[i], policy.pre_call_checks))
            .collect();
        Some((candidates, policy.strategy.candidate_order()))
    }
}

fn candidate(d: &Deployment, pre_call_checks: bool) -> Candidate {
    Candidate {
        deployment: d.dref.clone(),
        limits: Limits {
            rpm: d.rpm,
            tpm: d.tpm,
            max_parallel: d.max_parallel,
            max_input_tokens: if pre_call_checks {
                d.max_input_tokens
            } else {
                None
            },
            tier: d.tier,
        },
    }
}

/// (total tokens, completion tokens) of a response's `usage`.
pub(crate) fn usage_of(v: &Value) -> (Option<u64>, Option<u64>) {
    let Some(u) = v.get("usage").filter(|u| u.is_object()) else {
        return (None, None);
    };
    let get = |k: &str| u.get(k).and_then(Value::as_u64);
    let completion = get("completion_tokens");
    let total =
        get("total_tokens").or_else(|| Some(get("prompt_tokens")? + completion.unwrap_or(0)));
    (total, completion)
}

/// Exponential backoff before retrying a deployment that failed: 0.5 s * 2^n, at most 8 s, with jitter
/// (half fixed, half random).
fn backoff(n: u32) -> Duration {
    let base = (0.5 * 2f64.powi(i32::try_from(n.min(16)).unwrap_or(16))).min(8.0);
    let jitter: f64 = rand::rng().random::<f64>();
    Duration::from_secs_f64(base * (0.5 + 0.5 * jitter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for n in 0..10 {
            let d = backoff(n).as_secs_f64();
            let base = (0.5 * 2f64.powi(n as i32)).min(8.0);
            assert!(d >= base * 0.5 && d <= base, "{n}: {d}");
        }
    }

    #[test]
    fn usage_is_read() {
        let v = serde_json::json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}});
        assert_eq!(usage_of(&v), (Some(7), Some(4)));
        assert_eq!(usage_of(&serde_json::json!({"usage": null})), (None, None));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn large_bodies_are_estimated_off_the_worker_with_the_same_result() {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        let estimator = TokenEstimator::default();
        let body = |words: usize| {
            serde_json::json!({
                "messages": [{"role": "user", "content": "lorem ipsum ".repeat(words)}],
                "max_tokens": 7,
            })
        };
        // On this one-thread runtime a task spawned before the estimate runs only if the estimate lets the
        // worker go: a small body is counted in place, a large one on the blocking pool.
        for (words, offloaded) in [(10, false), (10_000, true)] {
            let body = body(words);
            let ran = Arc::new(AtomicBool::new(false));
            let flag = ran.clone();
            let other = tokio::spawn(async move { flag.store(true, SeqCst) });
            let direct = estimator.estimate("openai/gpt-4o", &body);
            let (estimate, back) = estimate_tokens(estimator, "openai/gpt-4o", body.clone())
                .await
                .expect("estimate");
            assert_eq!(ran.load(SeqCst), offloaded, "{words} words");
            assert_eq!(estimate, direct);
            assert_eq!(back, body, "the body comes back unchanged");
            other.await.expect("the other task");
        }
    }
}
