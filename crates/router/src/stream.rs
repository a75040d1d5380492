//! Relaying an upstream stream to the client event by event, settling the reservation when it ends (success
//! with the reported usage), breaks (failure) or is dropped by the client (cancelled).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use serde_json::Value;
use tokio::time::Instant;
use usage_tracker::{LatencySample, Reservation};

use crate::capacity::{Capacity, Settlement};
use crate::error::{RouterError, UpstreamErrorKind};
use crate::provider::{stream_error, usage_of, SseEvent};
use crate::topology::Deployment;

/// The state of one relayed stream; settles its reservation exactly once (on drop at the latest).
pub(crate) struct Relay {
    capacity: Arc<Capacity>,
    reservation: Option<Reservation>,
    deployment: Arc<Deployment>,
    sent: Instant,
    ttft: Duration,
    /// Longest silence between events before the stream counts as broken.
    idle: Duration,
    /// (total, completion) tokens from the usage chunk.
    usage: (Option<u64>, Option<u64>),
    events: u64,
    /// Prompt tokens of the request, for settling a stream that reports no usage.
    prompt_tokens: u64,
}

impl Relay {
    pub(crate) fn new(
        capacity: Arc<Capacity>,
        reservation: Reservation,
        deployment: Arc<Deployment>,
        sent: Instant,
        ttft: Duration,
        idle: Duration,
        prompt_tokens: u64,
    ) -> Self {
        Self {
            capacity,
            reservation: Some(reservation),
            deployment,
            sent,
            ttft,
            idle,
            usage: (None, None),
            events: 0,
            prompt_tokens,
        }
    }

    fn observe(&mut self, event: &SseEvent) {
        self.events += 1;
        if event.data.contains("\"usage\"") {
            if let Ok(v) = serde_json::from_str::<Value>(&event.data) {
                let (total, completion) = usage_of(&v);
                if total.is_some() {
                    self.usage = (total, completion);
                }
            }
        }
    }

    async fn succeed(&mut self) {
        if let Some(r) = self.reservation.take() {
            let sample = LatencySample {
                total: self.sent.elapsed(),
                ttft: Some(self.ttft),
                // Without a usage chunk, content events approximate output tokens.
                output_tokens: self.usage.1.unwrap_or(self.events),
            };
            // Without a usage chunk the tokens are the prompt plus one per content event: closer than
            // keeping the estimate, which assumes the whole max_tokens.
            let actual = self
                .usage
                .0
                .unwrap_or(self.prompt_tokens + sample.output_tokens);
            self.capacity
                .settle(&r, Settlement::success(Some(actual), sample))
                .await;
        }
    }

    async fn fail(&mut self, err: &RouterError) {
        if let Some(r) = self.reservation.take() {
            self.capacity.settle(&r, Settlement::failure(err)).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // The client went away mid-stream: give the capacity back without counting a failure.
        if let Some(r) = self.reservation.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let capacity = self.capacity.clone();
                handle.spawn(async move { capacity.settle(&r, Settlement::cancelled()).await });
            }
        }
    }
}

/// The client-facing stream: `first`, then `rest` as it arrives, each as `data: ...\n\n`, ending with
/// `data: [DONE]\n\n` or an error item.
pub(crate) fn relay(
    relay: Relay,
    first: SseEvent,
    rest: BoxStream<'static, Result<SseEvent, RouterError>>,
) -> BoxStream<'static, Result<Bytes, RouterError>> {
    struct State {
        relay: Relay,
        first: Option<SseEvent>,
        rest: BoxStream<'static, Result<SseEvent, RouterError>>,
        finished: bool,
    }
    let state = State {
        relay,
        first: Some(first),
        rest,
        finished: false,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        let next = match st.first.take() {
            Some(e) => Some(Ok(e)),
            None => match tokio::time::timeout(st.relay.idle, st.rest.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let d = &st.relay.deployment;
                    Some(Err(RouterError::upstream(
                        UpstreamErrorKind::Timeout,
                        &d.id,
                        None,
                        format!(
                            "the stream was silent for {:.3} s",
                            st.relay.idle.as_secs_f64()
                        ),
                        None,
                    )))
                }
            },
        };
        let item = match next {
            // The upstream closed without `[DONE]`: a complete stream for the client.
            None => {
                st.finished = true;
                st.relay.succeed().await;
                Ok(SseEvent {
                    data: "[DONE]".into(),
                }
                .to_bytes())
            }
            Some(Err(e)) => {
                st.finished = true;
                st.relay.fail(&e).await;
                Err(e)
            }
            Some(Ok(event)) if event.is_done() => {
                st.finished = true;
                st.relay.succeed().await;
                Ok(event.to_bytes())
            }
            Some(Ok(event)) => match stream_error(&st.relay.deployment, &event) {
                Some(e) => {
                    st.finished = true;
                    st.relay.fail(&e).await;
                    Err(e)
                }
                None => {
                    st.relay.observe(&event);
                    Ok(event.to_bytes())
                }
            },
        };
        Some((item, st))
    })
    .boxed()
}
