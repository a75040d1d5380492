//! Scripted behaviour of the mock upstream: how long it waits and what it answers.

use std::time::Duration;

/// How the mock upstream answers one inference request (chat, completions, embeddings).
///
/// A server has a default behaviour ([`MockUpstream::set_behavior`](crate::MockUpstream::set_behavior)) and a
/// queue of one-shot behaviours ([`MockUpstream::push_behavior`](crate::MockUpstream::push_behavior)) that are
/// consumed in request arrival order before the default applies again.
///
/// ```
/// use std::time::Duration;
/// use testkit::Behavior;
///
/// let slow_stream = Behavior::ok()
///     .with_latency(Duration::from_millis(50))
///     .with_token_latency(Duration::from_millis(10));
/// let throttled = Behavior::rate_limited(7);
/// # let _ = (slow_stream, throttled);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Behavior {
    /// Wait before sending the response head (time to first byte).
    pub latency: Duration,
    /// Wait between consecutive stream chunks; a non-streaming success waits this long per completion token
    /// on top of `latency`, so both forms take about as long.
    pub token_latency: Duration,
    /// Reply text for this behaviour instead of the server's reply text.
    pub reply: Option<String>,
    /// What the response is.
    pub outcome: Outcome,
}

/// The kind of answer a [`Behavior`] produces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// A normal OpenAI-shaped success (JSON, or server-sent events when the request asks for `stream`).
    #[default]
    Success,
    /// 400 with OpenAI's `context_length_exceeded` error body.
    ContextLengthExceeded,
    /// 401 with OpenAI's `invalid_api_key` error body.
    Unauthorized,
    /// 404 with OpenAI's `model_not_found` error body.
    NotFound,
    /// 429 with OpenAI's `rate_limit_exceeded` error body and, when set, a `Retry-After` header in seconds.
    RateLimited {
        /// Value of the `Retry-After` header; `None` sends no header.
        retry_after_secs: Option<u64>,
    },
    /// 500 with OpenAI's `server_error` body.
    InternalError,
    /// 503 with an "overloaded" `server_error` body.
    ServiceUnavailable,
    /// Any status with the given extra headers and body (sent as `application/json`).
    Status {
        /// HTTP status code.
        status: u16,
        /// Extra response headers (name, value).
        headers: Vec<(String, String)>,
        /// Response body, sent as is.
        body: String,
    },
    /// Never answer: the request stays open until the client gives up or the server shuts down.
    Hang,
    /// Send the response head and the first `after_chunks` body chunks, then break the connection so the client
    /// sees a truncated body. For streams a chunk is one server-sent event; a JSON body is sent as two chunks,
    /// its two halves.
    DropMidStream {
        /// Number of chunks sent before the connection breaks.
        after_chunks: usize,
    },
}

impl Behavior {
    /// Answer successfully without delay.
    pub fn ok() -> Self {
        Self::default()
    }

    /// Answer with `outcome` without delay.
    pub fn outcome(outcome: Outcome) -> Self {
        Self {
            outcome,
            ..Self::default()
        }
    }

    /// 400 `context_length_exceeded`.
    pub fn context_length_exceeded() -> Self {
        Self::outcome(Outcome::ContextLengthExceeded)
    }

    /// 401 `invalid_api_key`.
    pub fn unauthorized() -> Self {
        Self::outcome(Outcome::Unauthorized)
    }

    /// 404 `model_not_found`.
    pub fn not_found() -> Self {
        Self::outcome(Outcome::NotFound)
    }

    /// 429 with `Retry-After: retry_after_secs`.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self::outcome(Outcome::RateLimited {
            retry_after_secs: Some(retry_after_secs),
        })
    }

    /// 500 `server_error`.
    pub fn internal_error() -> Self {
        Self::outcome(Outcome::InternalError)
    }

    /// 503 overloaded.
    pub fn service_unavailable() -> Self {
        Self::outcome(Outcome::ServiceUnavailable)
    }

    /// Any status with a body sent as `application/json`.
    pub fn status(status: u16, body: impl Into<String>) -> Self {
        Self::outcome(Outcome::Status {
            status,
            headers: Vec::new(),
            body: body.into(),
        })
    }

    /// Never answer.
    pub fn hang() -> Self {
        Self::outcome(Outcome::Hang)
    }

    /// Break the connection after `after_chunks` body chunks.
    pub fn drop_after(after_chunks: usize) -> Self {
        Self::outcome(Outcome::DropMidStream { after_chunks })
    }

    /// The same behaviour, waiting `latency` before the response head.
    #[must_use]
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// The same behaviour, waiting `token_latency` between stream chunks.
    #[must_use]
    pub fn with_token_latency(mut self, token_latency: Duration) -> Self {
        self.token_latency = token_latency;
        self
    }

    /// The same behaviour, answering with `reply` instead of the server's reply text.
    #[must_use]
    pub fn with_reply(mut self, reply: impl Into<String>) -> Self {
        self.reply = Some(reply.into());
        self
    }
}
