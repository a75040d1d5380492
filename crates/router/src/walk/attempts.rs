//! [`Attempts`]: one request's attempts in one model group: reserve, call the upstream, retry with backoff.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use admission::AdmitRequest;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use usage_tracker::LatencySample;

use super::job::{Answer, Job};
use crate::capacity::{Capacity, Held, Settlement};
use crate::error::RouterError;
use crate::metrics::RouterMetrics;
use crate::order::GroupOrders;
use crate::params;
use crate::provider::{self, usage_of, Call, Providers, Reply};
use crate::request::Endpoint;
use crate::request::ResponseBody;
use crate::stream;
use crate::text_completion;
use crate::topology::{Deployment, ModelGroup, Topology};

/// What a request's attempts in a group use: the strategy's order, capacity, the upstream clients.
pub(crate) struct Attempts {
    topology: Arc<Topology>,
    orders: Arc<GroupOrders>,
    capacity: Arc<Capacity>,
    providers: Providers,
    metrics: Arc<RouterMetrics>,
    shutdown: CancellationToken,
    /// Releases of answered requests still on their way.
    settling: TaskTracker,
}

impl Attempts {
    pub(crate) fn new(
        topology: Arc<Topology>,
        orders: Arc<GroupOrders>,
        capacity: Arc<Capacity>,
        providers: Providers,
        metrics: Arc<RouterMetrics>,
        shutdown: CancellationToken,
        settling: TaskTracker,
    ) -> Self {
        Self {
            topology,
            orders,
            capacity,
            providers,
            metrics,
            shutdown,
            settling,
        }
    }

    /// The capacity requests take and give back.
    pub(crate) fn capacity(&self) -> Arc<Capacity> {
        self.capacity.clone()
    }

    /// Attempts in one group: each attempt reserves capacity on the strategy's preferred deployment with
    /// headroom; retryable failures are retried (another deployment at once, else after Retry-After or a
    /// backoff) up to the retry budget.
    pub(super) async fn run_group(
        &self,
        job: &mut Job,
        group: &ModelGroup,
        only: Option<&[String]>,
    ) -> Result<Answer, RouterError> {
        let policy = self.topology.policy();
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
            if self.shutdown.is_cancelled() {
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
            let (candidates, order) = self.orders.for_request(group, &pool).await;
            let deployment_timeout =
                |d: &Deployment| job.timeout.or(d.timeout).unwrap_or(policy.timeout);
            // A grant made before the walk (a durable job) serves the first attempt in its group; one left
            // unused goes back when the walk ends.
            let granted = if job
                .granted
                .as_ref()
                .is_some_and(|r| *r.deployment.group == *group.name)
            {
                job.granted.take()
            } else {
                None
            };
            let (reservation, waited) = match granted {
                Some(reservation) => (reservation, Duration::ZERO),
                None => {
                    self.capacity
                        .acquire(AdmitRequest {
                            group: group.name.as_str().into(),
                            candidates,
                            order,
                            est_tokens: job.est_tokens,
                            prompt_tokens: job.prompt_tokens,
                            priority: job.priority,
                            deadline: job.deadline,
                            force_queue: job.force_queue,
                            retry: job.attempts > 0,
                        })
                        .await?
                }
            };
            job.queue_wait += waited;
            // From here the request may be dropped at any await (client gone): the guard settles it.
            let mut held = Held::new(self.capacity.clone(), reservation);
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
            let as_chat = job.endpoint == Endpoint::Completions && text_completion::through_chat(d);
            let (endpoint, body) = if as_chat {
                let chat = text_completion::chat_body(body)?;
                let kept =
                    params::for_deployment(d, Endpoint::ChatCompletions, &chat, policy.drop_params)
                        .into_owned();
                (Endpoint::ChatCompletions, std::borrow::Cow::Owned(kept))
            } else {
                (
                    job.endpoint,
                    params::for_deployment(d, job.endpoint, body, policy.drop_params),
                )
            };
            // Boxed, as every await after the grant: the request's future is allocated once for its whole
            // life, at the size of its largest state, and the upstream call (the HTTP client's futures) is
            // several times what waiting in the queue needs. Unboxed, every waiter would carry it.
            let reply = Box::pin(self.providers.call(Call {
                deployment: d,
                endpoint,
                body: &body,
                stream: job.stream,
                timeout: first_byte_timeout,
                mock_response: job.mock_response.as_deref(),
                mock_delay: job.mock_delay,
                prompt_tokens: job.prompt_tokens,
            }))
            .await
            .map(|reply| {
                if as_chat {
                    text_completion::reply_as_text(reply)
                } else {
                    reply
                }
            });
            let latency = sent.elapsed();
            let source = provider::answer_source(d, job.mock_response.as_deref());
            match reply {
                Ok(Reply::Json(v)) => {
                    self.metrics
                        .attempt(&group.name, &d.id, "ok", Some(latency));
                    let (actual, output) = usage_of(&v);
                    let sample = LatencySample {
                        total: latency,
                        ttft: None,
                        output_tokens: output.unwrap_or(0),
                    };
                    // The answer does not wait for the release step (a Redis round trip that also admits
                    // the next waiters): it runs in the background, and shutdown waits for it.
                    let settled = self.capacity.clone();
                    let reservation = held.take();
                    self.settling.spawn(async move {
                        settled
                            .settle(&reservation, Settlement::success(actual, sample))
                            .await;
                    });
                    return Ok(Answer {
                        body: ResponseBody::Json(v),
                        group: group.name.clone(),
                        deployment_id: d.id.clone(),
                        upstream_latency: latency,
                        source,
                    });
                }
                Ok(Reply::Stream { first, rest }) => {
                    self.metrics
                        .attempt(&group.name, &d.id, "ok", Some(latency));
                    let relay = stream::relay(
                        stream::Relay::new(
                            self.capacity.clone(),
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
                        source,
                    });
                }
                Err(e) => {
                    let status = e.status_code().to_string();
                    self.metrics.attempt(&group.name, &d.id, &status, None);
                    tracing::warn!(group = %group.name, deployment = %d.id, attempt = job.attempts, error = %e,
                        "upstream attempt failed");
                    let cooled =
                        Box::pin(self.capacity.settle(&held.take(), Settlement::failure(&e)))
                            .await
                            .is_some();
                    failed.insert(index);
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    let budget = e
                        .upstream_kind()
                        .and_then(|k| policy.retry_policy_of(&group.name).for_kind(k))
                        .or(job.num_retries)
                        .or(d.num_retries)
                        .unwrap_or(policy.num_retries);
                    if retries >= budget {
                        return Err(e);
                    }
                    retries += 1;
                    self.metrics.retry();
                    // Another deployment that has not failed this request is tried at once. Otherwise wait
                    // (Retry-After or backoff) unless the failure cooled the deployment: then the next
                    // reservation answers at once, with a 429 naming when to retry if all are cooling down.
                    let another_healthy = eligible.iter().any(|i| !failed.contains(i));
                    if !another_healthy && !cooled {
                        let wait = e
                            .retry_after()
                            .unwrap_or_else(|| backoff(retries - 1))
                            .max(policy.retry_after);
                        if Instant::now() + wait >= job.deadline {
                            return Err(e);
                        }
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = self.shutdown.cancelled() => return Err(e),
                        }
                    }
                    last_error = Some(e);
                }
            }
        }
    }
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
}
