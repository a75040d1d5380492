//! The request walk: the response cache, the request's own controls, then the groups tried in order (the
//! requested one, then fallbacks), each with its attempts.

mod attempts;
mod job;

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use queue_core::Priority;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use usage_tracker::{Reservation, TokenEstimator};

pub(crate) use attempts::Attempts;
use job::{estimate_tokens, Job};

use crate::cache::ResponseCache;
use crate::capacity::Capacity;
use crate::error::{RouterError, UpstreamErrorKind};
use crate::metrics::RouterMetrics;
use crate::request::{
    AnswerSource, Controls, Endpoint, ResponseBody, ResponseMeta, RouterRequest, RouterResponse,
};
use crate::stream_cache;
use crate::topology::{ModelGroup, Topology};

/// The request path of a router.
pub(crate) struct Walk {
    topology: Arc<Topology>,
    cache: Option<Arc<ResponseCache>>,
    estimator: TokenEstimator,
    metrics: Arc<RouterMetrics>,
    shutdown: CancellationToken,
    attempts: Attempts,
}

impl Walk {
    pub(crate) fn new(
        topology: Arc<Topology>,
        cache: Option<ResponseCache>,
        estimator: TokenEstimator,
        metrics: Arc<RouterMetrics>,
        shutdown: CancellationToken,
        attempts: Attempts,
    ) -> Self {
        Self {
            topology,
            cache: cache.map(Arc::new),
            estimator,
            metrics,
            shutdown,
            attempts,
        }
    }

    /// Checks a durable job's request as [`Walk::completion`] would, without running it: the model, the
    /// router-only fields, fallbacks, no streaming. Returns its model group and token estimate.
    pub(crate) async fn prepare_job(&self, req: &RouterRequest) -> Result<Prepared, RouterError> {
        if self.shutdown.is_cancelled() {
            return Err(RouterError::ShuttingDown);
        }
        if req.is_stream() {
            return Err(RouterError::BadRequest {
                message: "`stream` is not supported for queued jobs: jobs return whole answers"
                    .into(),
                param: Some("stream".into()),
            });
        }
        let topology = &self.topology;
        let Some(target) = topology.resolve(&req.model) else {
            return Err(RouterError::ModelNotFound {
                model: req.model.clone(),
                known: topology.model_names().join(", "),
            });
        };
        let group = target.group;
        let mut body = req.body.clone();
        let controls = Controls::take(&mut body, &group.name, req.overrides_allowed)?;
        if let Some(list) = &controls.fallbacks {
            if let Some(unknown) = list.iter().find(|g| topology.group(g).is_none()) {
                return Err(RouterError::BadRequest {
                    message: format!("fallback model group `{unknown}` is not served here"),
                    param: Some("fallbacks".into()),
                });
            }
        }
        let token_model = group
            .deployments
            .first()
            .map_or("", |d| d.litellm_model.as_str());
        let (estimate, _) =
            estimate_tokens(self.estimator, token_model, Value::Object(body)).await?;
        let est_tokens = if req.endpoint == Endpoint::Embeddings {
            estimate.prompt_tokens
        } else {
            estimate.est_tokens
        };
        let policy = topology.policy();
        Ok(Prepared {
            group: group.name.clone(),
            est_tokens,
            prompt_tokens: estimate.prompt_tokens,
            priority: req.priority.or(controls.priority).unwrap_or_else(|| {
                Priority::new(policy.queue.default_priority).unwrap_or(Priority::MAX)
            }),
            timeout: req.timeout.or(controls.timeout),
        })
    }

    /// Routes one request: cache, admission, upstream call, retries, fallbacks.
    pub(crate) async fn completion(
        &self,
        req: RouterRequest,
    ) -> Result<RouterResponse, RouterError> {
        self.completion_granted(req, None).await
    }

    /// [`Walk::completion`] for a request already granted capacity (a durable job taken from the queue):
    /// its first attempt uses `granted`; a grant the walk does not use (a cache hit, an early error) is
    /// given back.
    pub(crate) async fn completion_granted(
        &self,
        req: RouterRequest,
        granted: Option<Reservation>,
    ) -> Result<RouterResponse, RouterError> {
        let mut granted = UnusedGrant(granted, self.attempts.capacity());
        if self.shutdown.is_cancelled() {
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
            overrides_allowed,
        } = req;
        let topology = &self.topology;
        let Some(target) = topology.resolve(&model) else {
            return Err(RouterError::ModelNotFound {
                model,
                known: topology.model_names().join(", "),
            });
        };
        let group = target.group;
        let controls = Controls::take(&mut body, &group.name, overrides_allowed)?;
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

        // The key leaves out router-only fields: a request's own mock answer must not be served a cached one.
        // Streaming and whole answers share it: a stream is cached as the whole answer it spelled out and
        // replayed as a stream.
        let cache_key = match &self.cache {
            Some(_) if controls.mock_response.is_none() => {
                Some(stream_neutral_key(&group.name, endpoint, &body))
            }
            _ => None,
        };
        if let (Some(c), Some(key)) = (&self.cache, &cache_key) {
            if !cache_control.no_cache {
                // Boxed: the cache's futures would otherwise enlarge every request's future (see `run_group`).
                let hit = Box::pin(c.get(key, cache_control.s_maxage)).await;
                self.metrics.cache(hit.is_some());
                if let Some(v) = hit {
                    self.metrics.request(&group.name, 200, "");
                    let body = if stream {
                        let usage = body
                            .get("stream_options")
                            .and_then(|o| o.get("include_usage"))
                            .and_then(Value::as_bool)
                            .unwrap_or(false);
                        ResponseBody::Stream(stream_cache::replay(endpoint, &v, usage))
                    } else {
                        ResponseBody::Json(v)
                    };
                    return Ok(RouterResponse {
                        body,
                        meta: ResponseMeta {
                            model_group: group.name.clone(),
                            cache_hit: true,
                            source: AnswerSource::Cache,
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
        let (estimate, body) = estimate_tokens(self.estimator, token_model, body).await?;
        let est_tokens = if endpoint == Endpoint::Embeddings {
            estimate.prompt_tokens
        } else {
            estimate.est_tokens
        };
        let timeout = timeout.or(controls.timeout);
        let policy = topology.policy();
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
            granted: granted.0.take(),
        };

        // Groups in the order tried: the first, then fallbacks depth first (a failing fallback's own
        // fallbacks come before its siblings), each group once, at most max_fallbacks of them.
        let mut current: (&ModelGroup, Option<&[String]>) = (group, target.only);
        let mut tried: HashSet<String> = HashSet::from([group.name.clone()]);
        let mut pending: VecDeque<String> = VecDeque::new();
        let mut used: Vec<String> = Vec::new();
        let mut first_error: Option<RouterError> = None;
        let result = loop {
            match self
                .attempts
                .run_group(&mut job, current.0, current.1)
                .await
            {
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
                    // A group not served (every deployment skipped at startup) is passed over.
                    let next_group = if stop {
                        None
                    } else {
                        std::iter::from_fn(|| pending.pop_front()).find_map(|g| topology.group(&g))
                    };
                    let Some(next) = next_group else {
                        break Err(err);
                    };
                    first_error = Some(err);
                    tracing::info!(from = %current.0.name, to = %next.name, "falling back");
                    self.metrics.fallback();
                    tried.insert(next.name.clone());
                    used.push(next.name.clone());
                    current = (next, None);
                }
            }
        };

        granted.0 = job.granted.take();
        drop(granted);
        match result {
            Ok(mut answer) => {
                self.metrics
                    .request(&group.name, 200, &answer.deployment_id);
                if let (Some(c), Some(key)) = (&self.cache, cache_key) {
                    if !cache_control.no_store && answer.source.is_cacheable() {
                        answer.body = match answer.body {
                            ResponseBody::Json(v) => {
                                Box::pin(c.put(&key, &v, answer.source, cache_control.ttl)).await;
                                ResponseBody::Json(v)
                            }
                            ResponseBody::Stream(s) => ResponseBody::Stream(cache_when_done(
                                s,
                                endpoint,
                                c.clone(),
                                key,
                                answer.source,
                                cache_control.ttl,
                            )),
                        };
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
                        source: answer.source,
                    },
                })
            }
            Err(e) => {
                self.metrics.request(&group.name, e.status_code(), "");
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
        let policy = self.topology.policy();
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
}

/// The cache key of a request, the same whether it streams or not (`stream` and `stream_options` left out).
fn stream_neutral_key(
    group: &str,
    endpoint: Endpoint,
    body: &serde_json::Map<String, Value>,
) -> String {
    if body.contains_key("stream") || body.contains_key("stream_options") {
        let mut neutral = body.clone();
        neutral.remove("stream");
        neutral.remove("stream_options");
        ResponseCache::key(group, endpoint, &neutral)
    } else {
        ResponseCache::key(group, endpoint, body)
    }
}

/// `stream` relayed as is, gathering the whole answer it spells out and storing it once the stream ended
/// with `[DONE]`, before the `[DONE]` goes on (a broken or abandoned stream stores nothing).
fn cache_when_done(
    stream: futures::stream::BoxStream<'static, Result<bytes::Bytes, RouterError>>,
    endpoint: Endpoint,
    cache: Arc<ResponseCache>,
    key: String,
    source: AnswerSource,
    ttl: Option<Duration>,
) -> futures::stream::BoxStream<'static, Result<bytes::Bytes, RouterError>> {
    use futures::StreamExt;
    let mut gathering = Some(stream_cache::Assembler::new(endpoint));
    let key: Arc<str> = key.into();
    stream
        .map(move |item| {
            let mut whole = None;
            match &item {
                Ok(bytes) => {
                    if let Some(a) = gathering.as_mut() {
                        a.observe(bytes);
                    }
                    if bytes.as_ref() == b"data: [DONE]\n\n" {
                        whole = gathering.take().and_then(stream_cache::Assembler::finish);
                    }
                }
                Err(_) => gathering = None,
            }
            (item, whole)
        })
        .then(move |(item, whole)| {
            let (cache, key) = (cache.clone(), key.clone());
            async move {
                if let Some(whole) = whole {
                    cache.put(&key, &whole, source, ttl).await;
                }
                item
            }
        })
        .boxed()
}
/// A durable job's request as checked at submission.
pub(crate) struct Prepared {
    /// The model group it runs in.
    pub(crate) group: String,
    pub(crate) est_tokens: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) priority: Priority,
    /// The request's `timeout`: the job's deadline from its submission.
    pub(crate) timeout: Option<Duration>,
}

/// A granted reservation the walk did not use, given back (never sent) when dropped.
struct UnusedGrant(Option<Reservation>, Arc<Capacity>);

impl Drop for UnusedGrant {
    fn drop(&mut self) {
        let Some(reservation) = self.0.take() else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let capacity = self.1.clone();
            handle.spawn(async move { capacity.give_back(&reservation).await });
        }
    }
}
