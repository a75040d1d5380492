//! One request on its way through groups and attempts ([`Job`]), the answer it ends with, its token estimate.

use std::time::Duration;

use queue_core::Priority;
use serde_json::Value;
use tokio::time::Instant;
use usage_tracker::{Reservation, TokenEstimate, TokenEstimator};

use crate::error::RouterError;
use crate::request::{AnswerSource, Endpoint, ResponseBody};

/// One request on its way through groups and attempts.
pub(super) struct Job {
    pub(super) endpoint: Endpoint,
    pub(super) body: Value,
    pub(super) stream: bool,
    pub(super) prompt_tokens: u64,
    pub(super) est_tokens: u64,
    pub(super) priority: Priority,
    pub(super) deadline: Instant,
    pub(super) force_queue: bool,
    pub(super) timeout: Option<Duration>,
    pub(super) stream_timeout: Option<Duration>,
    pub(super) num_retries: Option<u32>,
    pub(super) mock_response: Option<String>,
    pub(super) mock_delay: Option<Duration>,
    pub(super) attempts: u32,
    pub(super) queue_wait: Duration,
    /// Capacity granted before the walk (a durable job): the first attempt in its group uses it.
    pub(super) granted: Option<Reservation>,
}

/// A successful answer from some deployment.
pub(super) struct Answer {
    pub(super) body: ResponseBody,
    pub(super) group: String,
    pub(super) deployment_id: String,
    pub(super) upstream_latency: Duration,
    pub(super) source: AnswerSource,
}

/// Bodies with more text than this are counted on the blocking pool: a BPE count takes about 25-50 µs per KB,
/// and a 100 KB prompt would hold an async worker (and every request it serves) for milliseconds.
const BLOCKING_ESTIMATE_BYTES: usize = 16 * 1024;

/// Token estimate of `body` for admission, off the async worker when the body is large.
pub(super) async fn estimate_tokens(
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

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
