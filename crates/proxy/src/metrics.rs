//! Prometheus metrics: what the edge counts itself (requests, statuses, latencies) plus what the router exposes
//! (attempts, retries, queue depth, cooldowns, backend errors), read at scrape time.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Buckets (seconds) for request, queue-wait and upstream latency histograms.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Buckets (seconds) for the proxy's own overhead.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) endpoint: String,
    pub(crate) model_group: String,
    pub(crate) deployment: String,
    pub(crate) status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct EndpointGroupLabels {
    pub(crate) endpoint: String,
    pub(crate) model_group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupLabels {
    pub(crate) model_group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DeploymentLabels {
    pub(crate) model_group: String,
    pub(crate) deployment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KeyLabels {
    pub(crate) key_alias: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TimeoutLabels {
    pub(crate) timeout: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

fn overhead_histogram() -> Histogram {
    Histogram::new(OVERHEAD_BUCKETS.iter().copied())
}

/// The edge's own metrics, registered once per app.
#[derive(Debug)]
pub(crate) struct EdgeMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily<EndpointGroupLabels>,
    queue_wait: HistogramFamily<GroupLabels>,
    upstream_latency: HistogramFamily<DeploymentLabels>,
    overhead: HistogramFamily<GroupLabels>,
    in_flight: Gauge,
    backend_errors: Counter,
    key_spend: Family<KeyLabels, Counter<f64, AtomicU64>>,
    connections: ConnectionMetrics,
}

/// What the server counts of client connections: open now, and closed by a timeout (by which one).
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnectionMetrics {
    open: Gauge,
    timed_out: Family<TimeoutLabels, Counter>,
}

impl ConnectionMetrics {
    pub(crate) fn opened(&self) {
        self.open.inc();
    }

    pub(crate) fn closed(&self) {
        self.open.dec();
    }

    /// A connection was cut by `timeout` (`header`, `keepalive` or `body`).
    pub(crate) fn timed_out(&self, timeout: &'static str) {
        self.timed_out
            .get_or_create(&TimeoutLabels { timeout })
            .inc();
    }
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl EdgeMetrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("llm_scheduler");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by endpoint, model group, deployment and HTTP status",
            requests.clone(),
        );
        let request_duration: HistogramFamily<EndpointGroupLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request to response head (to the last byte for streams)",
            request_duration.clone(),
        );
        let queue_wait: HistogramFamily<GroupLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "queue_wait_seconds",
            "Time admitted requests waited for capacity",
            queue_wait.clone(),
        );
        let upstream_latency: HistogramFamily<DeploymentLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_latency_seconds",
            "Latency of the answering upstream call (to the first chunk for streams)",
            upstream_latency.clone(),
        );
        let overhead: HistogramFamily<GroupLabels> =
            Family::new_with_constructor(overhead_histogram);
        registry.register(
            "overhead_seconds",
            "Time to the response head minus upstream latency and queue wait",
            overhead.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "in_flight_requests",
            "Inference requests being served by this replica (queued or upstream)",
            in_flight.clone(),
        );
        let connections = ConnectionMetrics::default();
        registry.register(
            "open_connections",
            "Client connections open (general_settings.max_connections caps them)",
            connections.open.clone(),
        );
        registry.register(
            "connection_timeouts",
            "Client connections cut because the client was silent too long: timeout is header (a request head \
             not whole in time), keepalive (no request) or body (a request body not whole in time)",
            connections.timed_out.clone(),
        );
        let key_spend = Family::<KeyLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "key_spend_usd",
            "USD spent by virtual keys, settled on this replica, by key_alias (a key without one: its key_name)",
            key_spend.clone(),
        );
        // Exported with the scheduler's count at scrape time (one family, two sources).
        let backend_errors = Counter::default();
        Self {
            key_spend,
            connections,
            registry,
            backend_errors,
            requests,
            request_duration,
            queue_wait,
            upstream_latency,
            overhead,
            in_flight,
        }
    }

    /// A virtual key spent `usd`.
    pub(crate) fn key_spent(&self, key_alias: &str, usd: f64) {
        self.key_spend
            .get_or_create(&KeyLabels {
                key_alias: key_alias.to_owned(),
            })
            .inc_by(usd);
    }

    /// The counter of backend (Redis) failures.
    pub(crate) fn backend_errors(&self) -> &Counter {
        &self.backend_errors
    }

    /// The client connection counters, shared with the server's connection tasks.
    pub(crate) fn connections(&self) -> &ConnectionMetrics {
        &self.connections
    }

    pub(crate) fn request_started(&self) {
        self.in_flight.inc();
    }

    pub(crate) fn request_finished(&self) {
        self.in_flight.dec();
    }

    pub(crate) fn answered(&self, labels: RequestLabels) {
        self.requests.get_or_create(&labels).inc();
    }

    pub(crate) fn duration(&self, endpoint: &str, model_group: &str, took: Duration) {
        self.request_duration
            .get_or_create(&EndpointGroupLabels {
                endpoint: endpoint.to_owned(),
                model_group: model_group.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn routed(
        &self,
        model_group: &str,
        deployment: &str,
        queue_wait: Duration,
        upstream: Duration,
        overhead: Duration,
    ) {
        let group = GroupLabels {
            model_group: model_group.to_owned(),
        };
        self.queue_wait
            .get_or_create(&group)
            .observe(queue_wait.as_secs_f64());
        self.overhead
            .get_or_create(&group)
            .observe(overhead.as_secs_f64());
        if !deployment.is_empty() {
            self.upstream_latency
                .get_or_create(&DeploymentLabels {
                    model_group: model_group.to_owned(),
                    deployment: deployment.to_owned(),
                })
                .observe(upstream.as_secs_f64());
        }
    }

    /// The edge registry followed by `router` (a registry built at scrape time), in OpenMetrics text.
    pub(crate) fn encode(&self, router: &Registry) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode_registry(&mut out, &self.registry)?;
        encode_registry(&mut out, router)?;
        encode_eof(&mut out)?;
        Ok(out)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouterRequestLabels {
    model_group: String,
    deployment: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    model_group: String,
    deployment: String,
    outcome: String,
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    model_group: String,
    priority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    model_group: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: String,
}

/// The router's counters and per-deployment state, read now, as a registry to encode after the edge's.
pub(crate) async fn router_registry(
    router: &router::Router,
    edge_backend_errors: &Counter,
) -> Registry {
    use std::sync::atomic::Ordering::Relaxed;

    let mut registry = Registry::with_prefix("llm_scheduler");
    let snapshot = router.metrics().snapshot();
    let scheduler = router.scheduler_stats();

    let admissions = Family::<PathLabels, Counter>::default();
    for (path, n) in [
        ("fast", scheduler.fast_grants.load(Relaxed)),
        ("queued", scheduler.queued_grants.load(Relaxed)),
    ] {
        admissions
            .get_or_create(&PathLabels {
                path: path.to_owned(),
            })
            .inc_by(n);
    }
    registry.register(
        "admissions",
        "Requests admitted by this replica: at once (fast) or after waiting in the queue (queued)",
        admissions,
    );
    counter(
        &mut registry,
        "queue_abandoned",
        "Queued requests that stopped waiting (deadline or client gone)",
        scheduler.queue_timeouts.load(Relaxed),
    );
    counter(
        &mut registry,
        "admission_refused",
        "Requests refused by admission: queue full, or no capacity before their deadline",
        scheduler.refused.load(Relaxed),
    );

    let jobs = router.job_stats();
    let job_states = Family::<JobLabels, Counter>::default();
    for ((group, outcome), n) in jobs.finished_by_group() {
        job_states
            .get_or_create(&JobLabels {
                model_group: group,
                status: format!("finished_{outcome}"),
            })
            .inc_by(n);
    }
    registry.register(
        "jobs_finished",
        "Durable jobs this replica finished, by model group and outcome (ok, error; cancelled where the \
         cancel was asked)",
        job_states,
    );
    counter(
        &mut registry,
        "jobs_submitted",
        "Durable jobs submitted through this replica",
        jobs.submitted.load(Relaxed),
    );
    counter(
        &mut registry,
        "jobs_refused",
        "Durable jobs refused at submission (queue full)",
        jobs.refused.load(Relaxed),
    );
    counter(
        &mut registry,
        "job_runs_started",
        "Durable job runs this replica started",
        jobs.runs_started.load(Relaxed),
    );
    counter(
        &mut registry,
        "job_runs_handed_back",
        "Durable job runs this replica handed back at their place (shutdown)",
        jobs.handed_back.load(Relaxed),
    );
    let running = Gauge::<i64>::default();
    running.set(gauge_value(router.jobs_running() as u64));
    registry.register(
        "jobs_running",
        "Durable jobs running on this replica",
        running,
    );
    let wait = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    wait.set(jobs.wait_ms_total.load(Relaxed) as f64 / 1000.0);
    registry.register(
        "job_wait_seconds_sum",
        "Sum over the job runs this replica started of the time from submission to the start (divide by \
         job_runs_started for the mean wait)",
        wait,
    );

    let requests = Family::<RouterRequestLabels, Counter>::default();
    for ((group, status, deployment), n) in &snapshot.requests {
        requests
            .get_or_create(&RouterRequestLabels {
                model_group: group.clone(),
                deployment: deployment.clone(),
                status: status.to_string(),
            })
            .inc_by(*n);
    }
    registry.register(
        "router_requests",
        "Requests the router finished, by model group, deployment and status",
        requests,
    );
    let attempts = Family::<AttemptLabels, Counter>::default();
    for ((group, deployment, outcome), n) in &snapshot.attempts {
        attempts
            .get_or_create(&AttemptLabels {
                model_group: group.clone(),
                deployment: deployment.clone(),
                outcome: outcome.clone(),
            })
            .inc_by(*n);
    }
    registry.register(
        "upstream_attempts",
        "Upstream calls by model group, deployment and outcome (ok or the error status)",
        attempts,
    );
    counter(
        &mut registry,
        "retries",
        "Retries within a model group",
        snapshot.retries,
    );
    counter(
        &mut registry,
        "fallbacks",
        "Fallbacks to another model group",
        snapshot.fallbacks,
    );
    counter(
        &mut registry,
        "cache_hits",
        "Responses served from the cache",
        snapshot.cache_hits,
    );
    counter(
        &mut registry,
        "cache_misses",
        "Cacheable requests not found in the cache",
        snapshot.cache_misses,
    );

    let up = Gauge::<i64>::default();
    match router.health().await {
        Ok(deployments) => {
            up.set(1);
            let cooling = Family::<DeploymentLabels, Gauge>::default();
            let cooldown_left =
                Family::<DeploymentLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
            let in_flight = Family::<DeploymentLabels, Gauge>::default();
            let rpm = Family::<DeploymentLabels, Gauge>::default();
            let tpm = Family::<DeploymentLabels, Gauge>::default();
            for d in deployments {
                let labels = DeploymentLabels {
                    model_group: d.group.clone(),
                    deployment: d.id.clone(),
                };
                cooling
                    .get_or_create(&labels)
                    .set(i64::from(d.cooldown_remaining.is_some()));
                cooldown_left
                    .get_or_create(&labels)
                    .set(d.cooldown_remaining.map_or(0.0, |r| r.as_secs_f64()));
                in_flight
                    .get_or_create(&labels)
                    .set(gauge_value(d.in_flight));
                rpm.get_or_create(&labels).set(gauge_value(d.rpm_used));
                tpm.get_or_create(&labels).set(gauge_value(d.tpm_used));
            }
            registry.register(
                "deployment_cooldown",
                "1 while the deployment is cooled down (shared by every replica)",
                cooling,
            );
            registry.register(
                "deployment_cooldown_remaining_seconds",
                "Time left in the deployment's cooldown",
                cooldown_left,
            );
            registry.register(
                "deployment_in_flight",
                "Requests in flight on the deployment, all replicas",
                in_flight,
            );
            registry.register(
                "deployment_rpm_used",
                "Requests admitted to the deployment in the current usage window, all replicas",
                rpm,
            );
            registry.register(
                "deployment_tpm_used",
                "Tokens charged to the deployment in the current usage window, all replicas",
                tpm,
            );
        }
        Err(err) => {
            edge_backend_errors.inc();
            tracing::warn!(error = %err, "metrics: cannot read deployment state");
        }
    }
    match router.queue_depths().await {
        Ok(depths) => {
            let waiting = Family::<QueueLabels, Gauge>::default();
            for d in depths {
                waiting
                    .get_or_create(&QueueLabels {
                        model_group: d.group,
                        priority: d.priority.to_string(),
                    })
                    .set(gauge_value(d.waiting));
            }
            registry.register(
                "queue_depth",
                "Requests waiting in the model group's queue, by priority (all replicas)",
                waiting,
            );
        }
        Err(err) => {
            edge_backend_errors.inc();
            tracing::warn!(error = %err, "metrics: cannot read queue depths");
        }
    }
    let backend_errors = Family::<SourceLabels, Counter>::default();
    for (source, n) in [
        ("scheduler", scheduler.backend_errors.load(Relaxed)),
        ("edge", edge_backend_errors.get()),
    ] {
        backend_errors
            .get_or_create(&SourceLabels {
                source: source.to_owned(),
            })
            .inc_by(n);
    }
    registry.register(
        "backend_errors",
        "Failures of the state backend (Redis): in admission steps (scheduler) and in requests, health and metric \
         reads seen by the edge",
        backend_errors,
    );
    registry.register(
        "backend_up",
        "1 when the state backend (Redis) answered this scrape",
        up,
    );
    registry
}
