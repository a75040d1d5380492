//! The router's error type and the decisions callers take from it (status, retry, cooldown, Retry-After).

use std::fmt;
use std::time::Duration;

use store::{BackendError, BackendErrorKind};

/// Everything that can go wrong in the router.
///
/// Callers decide with the methods ([`RouterError::status_code`], [`RouterError::is_retryable`],
/// [`RouterError::triggers_cooldown`], [`RouterError::retry_after`]), never by reading messages. `Display` never
/// contains API keys: upstream messages are scrubbed of the deployment's key when the error is built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// The configuration is wrong; `path` names the key (`model_list[2].litellm_params.rpm`).
    #[error("invalid config{}: {message}", if path.is_empty() { String::new() } else { format!(" at `{path}`") })]
    InvalidConfig {
        /// Key path of the offending value.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The request itself is invalid (400).
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// The offending request field.
        param: Option<String>,
    },
    /// The body overrides how the request is routed or answered (`mock_response`, `fallbacks`, ...) and the
    /// caller may not ([`crate::RouterRequest::overrides_allowed`]; 403).
    #[error("`{param}` in the request body overrides how the request is routed or answered, and this caller may not override it")]
    OverrideNotAllowed {
        /// The offending request field.
        param: String,
    },
    /// No model group, alias or deployment has this name (404).
    #[error("model `{model}` is not served here; known models: {known}")]
    ModelNotFound {
        /// The name the client asked for.
        model: String,
        /// The model groups served, comma separated.
        known: String,
    },
    /// The prompt exceeds `max_input_tokens` of every deployment of the group (pre-call check; 400).
    #[error("the prompt ({prompt_tokens} tokens) exceeds the context window of every deployment of `{group}` (largest {max_input_tokens})")]
    PromptTooLong {
        /// The model group.
        group: String,
        /// Estimated prompt tokens.
        prompt_tokens: u64,
        /// The largest `max_input_tokens` in the group.
        max_input_tokens: u64,
    },
    /// Every deployment of the group is cooled down or at its limits (429).
    #[error("no deployment of `{group}` can take the request now ({reason}){}", RetryHint(*retry_after))]
    NoDeploymentAvailable {
        /// The model group.
        group: String,
        /// When capacity may return.
        retry_after: Option<Duration>,
        /// Why: cooled down, at its limits, prompt too large.
        reason: String,
    },
    /// The group's queue is full (429).
    #[error("the queue of `{group}` is full{}", RetryHint(*retry_after))]
    QueueFull {
        /// The model group.
        group: String,
        /// When to try again.
        retry_after: Option<Duration>,
    },
    /// The request waited in the queue until its deadline (408).
    #[error("the request waited {waited:?} in the queue of `{group}` without being admitted")]
    QueueTimeout {
        /// The model group.
        group: String,
        /// How long it waited.
        waited: Duration,
    },
    /// An upstream call failed.
    #[error("{0}")]
    Upstream(Box<UpstreamError>),
    /// The shared store (Redis) failed (503); [`RouterError::backend_kind`] says how.
    #[error("backend unavailable: {0}")]
    Backend(BackendError),
    /// The router is shutting down (503).
    #[error("the router is shutting down")]
    ShuttingDown,
    /// No job with this id is visible to the caller (unknown, expired, or another key's).
    #[error("no job `{id}`: unknown, expired, or created with another key")]
    JobNotFound {
        /// The id asked for.
        id: String,
    },
    /// The job id is not one this proxy hands out.
    #[error("malformed job id `{id}`: ids look like the `id` that `POST /queue/request` answered")]
    InvalidJobId {
        /// The id asked for (at most 200 characters of it).
        id: String,
    },
    /// A cancel of a job that had finished already.
    #[error("job `{id}` has finished already: there is nothing to cancel")]
    JobFinished {
        /// The job.
        id: String,
    },
    /// The job was cancelled by its creator (a finished job's `error`).
    #[error("the job was cancelled")]
    JobCancelled,
    /// Every run a job may start (`job_max_attempts`) was started and none ended (its runners stopped).
    #[error(
        "the job was started {attempts} times and its runner stopped each time (job_max_attempts)"
    )]
    JobAttemptsExhausted {
        /// Runs started.
        attempts: u32,
    },
    /// A bug or an impossible state (500).
    #[error("internal error: {0}")]
    Internal(String),
}

/// What an upstream failure was, as the decisions need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UpstreamErrorKind {
    /// 400/413/422: the request is malformed for this upstream.
    BadRequest,
    /// 401: the deployment's key is wrong.
    Authentication,
    /// 403.
    PermissionDenied,
    /// 404: the deployment's model or URL does not exist.
    NotFound,
    /// The prompt is longer than the model's context window.
    ContextWindowExceeded,
    /// The provider's content filter refused the request.
    ContentPolicyViolation,
    /// 429.
    RateLimited,
    /// No answer (or no first streamed chunk) within the timeout, or 408.
    Timeout,
    /// 503 (and 529-style overload).
    ServiceUnavailable,
    /// 500, 502 and other 5xx, 409.
    InternalServer,
    /// The connection failed or broke.
    Connection,
    /// The upstream answered 2xx with something that is not the expected JSON.
    InvalidResponse,
}

/// An upstream failure: which deployment, what kind, what the upstream said (scrubbed of keys).
#[derive(Clone, Debug)]
pub struct UpstreamError {
    /// What it was.
    pub kind: UpstreamErrorKind,
    /// The upstream HTTP status, when there was a response.
    pub status: Option<u16>,
    /// The upstream's message (or the transport error), without API keys.
    pub message: String,
    /// The deployment that failed.
    pub deployment_id: String,
    /// The upstream's `Retry-After` (or `retry-after-ms`).
    pub retry_after: Option<Duration>,
    /// The upstream's error `code`.
    pub code: Option<String>,
    /// The upstream's error `param`.
    pub param: Option<String>,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            UpstreamErrorKind::BadRequest => "rejected the request",
            UpstreamErrorKind::Authentication => "refused the credentials",
            UpstreamErrorKind::PermissionDenied => "denied permission",
            UpstreamErrorKind::NotFound => "does not know the model",
            UpstreamErrorKind::ContextWindowExceeded => {
                "found the prompt too long for its context window"
            }
            UpstreamErrorKind::ContentPolicyViolation => "refused the content",
            UpstreamErrorKind::RateLimited => "is rate limited",
            UpstreamErrorKind::Timeout => "timed out",
            UpstreamErrorKind::ServiceUnavailable => "is unavailable",
            UpstreamErrorKind::InternalServer => "failed",
            UpstreamErrorKind::Connection => "could not be reached",
            UpstreamErrorKind::InvalidResponse => "sent an invalid response",
        };
        write!(f, "deployment {} {what}", self.deployment_id)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Formats " (retry after N s)" when known.
struct RetryHint(Option<Duration>);

impl fmt::Display for RetryHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(d) => write!(f, "; retry after {:.1} s", d.as_secs_f64()),
            None => Ok(()),
        }
    }
}

impl RouterError {
    /// Builds an upstream error, scrubbing `secret` (the deployment's API key) from the message.
    pub(crate) fn upstream(
        kind: UpstreamErrorKind,
        deployment_id: &str,
        status: Option<u16>,
        message: impl Into<String>,
        secret: Option<&str>,
    ) -> Self {
        Self::Upstream(Box::new(UpstreamError {
            kind,
            status,
            message: redact(message.into(), secret),
            deployment_id: deployment_id.to_owned(),
            retry_after: None,
            code: None,
            param: None,
        }))
    }

    /// The upstream failure, if this is one.
    pub fn as_upstream(&self) -> Option<&UpstreamError> {
        match self {
            Self::Upstream(u) => Some(u),
            _ => None,
        }
    }

    /// The kind of upstream failure, if this is one.
    pub fn upstream_kind(&self) -> Option<UpstreamErrorKind> {
        self.as_upstream().map(|u| u.kind)
    }

    /// The kind of store failure, if this is one (a timeout or a broken connection may pass; a failing
    /// script or an undecodable reply will not).
    pub fn backend_kind(&self) -> Option<BackendErrorKind> {
        match self {
            Self::Backend(e) => Some(e.kind()),
            _ => None,
        }
    }

    /// HTTP status for the client.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::InvalidConfig { .. } | Self::Internal(_) => 500,
            Self::BadRequest { .. } | Self::PromptTooLong { .. } => 400,
            Self::OverrideNotAllowed { .. } => 403,
            Self::ModelNotFound { .. } | Self::JobNotFound { .. } => 404,
            Self::InvalidJobId { .. } => 400,
            Self::JobFinished { .. } => 409,
            Self::JobCancelled => 499,
            Self::JobAttemptsExhausted { .. } => 500,
            Self::NoDeploymentAvailable { .. } | Self::QueueFull { .. } => 429,
            Self::QueueTimeout { .. } => 408,
            Self::Backend(_) | Self::ShuttingDown => 503,
            Self::Upstream(u) => match u.kind {
                UpstreamErrorKind::BadRequest => u
                    .status
                    .filter(|s| matches!(s, 400 | 413 | 415 | 422))
                    .unwrap_or(400),
                UpstreamErrorKind::ContextWindowExceeded
                | UpstreamErrorKind::ContentPolicyViolation => 400,
                UpstreamErrorKind::Authentication => 401,
                UpstreamErrorKind::PermissionDenied => 403,
                UpstreamErrorKind::NotFound => 404,
                UpstreamErrorKind::RateLimited => 429,
                // LiteLLM's `Timeout` (also for an upstream 504).
                UpstreamErrorKind::Timeout => 408,
                UpstreamErrorKind::ServiceUnavailable => 503,
                // LiteLLM's `InternalServerError` (500) and `APIError`, which keeps the upstream's 5xx (502).
                UpstreamErrorKind::InternalServer => {
                    u.status.filter(|s| (500..600).contains(s)).unwrap_or(500)
                }
                // LiteLLM's `APIConnectionError` and `APIError` (500).
                UpstreamErrorKind::Connection | UpstreamErrorKind::InvalidResponse => 500,
            },
        }
    }

    /// Whether another attempt (on this or another deployment of the group) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.upstream_kind(),
            Some(
                UpstreamErrorKind::RateLimited
                    | UpstreamErrorKind::Timeout
                    | UpstreamErrorKind::ServiceUnavailable
                    | UpstreamErrorKind::InternalServer
                    | UpstreamErrorKind::Connection
                    | UpstreamErrorKind::InvalidResponse
            )
        )
    }

    /// Whether the failure counts against the deployment (allowed_fails, cooldown): LiteLLM's rule of 401, 404,
    /// 408, 429 and 5xx. Errors caused by the request's content do not.
    pub fn triggers_cooldown(&self) -> bool {
        matches!(
            self.upstream_kind(),
            Some(
                UpstreamErrorKind::Authentication
                    | UpstreamErrorKind::NotFound
                    | UpstreamErrorKind::RateLimited
                    | UpstreamErrorKind::Timeout
                    | UpstreamErrorKind::ServiceUnavailable
                    | UpstreamErrorKind::InternalServer
                    | UpstreamErrorKind::Connection
                    | UpstreamErrorKind::InvalidResponse
            )
        )
    }

    /// When the client (or the router) should try again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Upstream(u) => u.retry_after,
            Self::NoDeploymentAvailable { retry_after, .. }
            | Self::QueueFull { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// OpenAI error `type`.
    pub fn error_type(&self) -> &'static str {
        match self.status_code() {
            400 | 404 | 409 | 413 | 415 | 422 | 499 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            408 | 504 => "timeout_error",
            429 => "rate_limit_error",
            _ => "server_error",
        }
    }

    /// OpenAI error `code`.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Upstream(u) => u.code.as_deref().or(match u.kind {
                UpstreamErrorKind::ContextWindowExceeded => Some("context_length_exceeded"),
                UpstreamErrorKind::ContentPolicyViolation => Some("content_policy_violation"),
                UpstreamErrorKind::RateLimited => Some("rate_limit_exceeded"),
                UpstreamErrorKind::Timeout => Some("timeout"),
                _ => None,
            }),
            Self::ModelNotFound { .. } => Some("model_not_found"),
            Self::OverrideNotAllowed { .. } => Some("override_not_allowed"),
            Self::PromptTooLong { .. } => Some("context_length_exceeded"),
            Self::NoDeploymentAvailable { .. } => Some("no_deployment_available"),
            Self::QueueFull { .. } => Some("queue_full"),
            Self::QueueTimeout { .. } => Some("queue_timeout"),
            Self::ShuttingDown => Some("shutting_down"),
            Self::Backend(_) => Some("backend_unavailable"),
            Self::JobNotFound { .. } => Some("job_not_found"),
            Self::InvalidJobId { .. } => Some("invalid_job_id"),
            Self::JobFinished { .. } => Some("job_finished"),
            Self::JobCancelled => Some("cancelled"),
            Self::JobAttemptsExhausted { .. } => Some("job_attempts_exhausted"),
            _ => None,
        }
    }

    /// OpenAI error `param`.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::Upstream(u) => u.param.as_deref(),
            Self::BadRequest { param, .. } => param.as_deref(),
            Self::OverrideNotAllowed { param } => Some(param),
            Self::ModelNotFound { .. } => Some("model"),
            Self::PromptTooLong { .. } => Some("messages"),
            Self::JobNotFound { .. } | Self::InvalidJobId { .. } | Self::JobFinished { .. } => {
                Some("id")
            }
            _ => None,
        }
    }

    /// The OpenAI error body: `{"error": {"message", "type", "param", "code"}}` (what the proxy answers for
    /// this error; a finished job's `error`).
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.to_string(),
                "type": self.error_type(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }

    /// Whether the prompt is too long for the model (upstream context-window error or pre-call check): such
    /// requests go to `context_window_fallbacks`.
    pub fn is_context_window(&self) -> bool {
        matches!(self, Self::PromptTooLong { .. })
            || self.upstream_kind() == Some(UpstreamErrorKind::ContextWindowExceeded)
    }

    pub(crate) fn config(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidConfig {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A failed store call (queue, usage or admission), its kind kept.
    pub(crate) fn backend(err: impl Into<BackendError>) -> Self {
        Self::Backend(err.into())
    }
}

/// Replaces every occurrence of `secret` in `message` (keys of 4 characters or fewer are left alone: they would
/// match ordinary words).
pub(crate) fn redact(message: String, secret: Option<&str>) -> String {
    match secret {
        Some(s) if s.len() > 4 && message.contains(s) => message.replace(s, "***"),
        _ => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_follow_the_kind() {
        let e = RouterError::upstream(
            UpstreamErrorKind::RateLimited,
            "d1",
            Some(429),
            "slow down",
            None,
        );
        assert_eq!(e.status_code(), 429);
        assert!(e.is_retryable() && e.triggers_cooldown());
        let e = RouterError::upstream(
            UpstreamErrorKind::Authentication,
            "d1",
            Some(401),
            "bad key",
            None,
        );
        assert!(!e.is_retryable() && e.triggers_cooldown());
        let e = RouterError::upstream(
            UpstreamErrorKind::ContextWindowExceeded,
            "d1",
            Some(400),
            "",
            None,
        );
        assert!(!e.is_retryable() && !e.triggers_cooldown());
        assert_eq!(e.code(), Some("context_length_exceeded"));
        let e = RouterError::upstream(UpstreamErrorKind::Timeout, "d1", None, "", None);
        assert_eq!((e.status_code(), e.error_type()), (408, "timeout_error"));
        let status =
            |kind, status| RouterError::upstream(kind, "d1", status, "", None).status_code();
        assert_eq!(status(UpstreamErrorKind::InternalServer, Some(500)), 500);
        assert_eq!(status(UpstreamErrorKind::InternalServer, Some(502)), 502);
        assert_eq!(status(UpstreamErrorKind::InternalServer, Some(409)), 500);
        assert_eq!(status(UpstreamErrorKind::Connection, None), 500);
        assert_eq!(
            status(UpstreamErrorKind::ServiceUnavailable, Some(503)),
            503
        );
    }

    #[test]
    fn backend_failures_carry_their_kind() {
        let e = RouterError::backend(BackendError::timed_out(Duration::from_secs(1)));
        assert_eq!(e.backend_kind(), Some(BackendErrorKind::Timeout));
        assert_eq!(
            (e.status_code(), e.code()),
            (503, Some("backend_unavailable"))
        );
        assert!(!e.is_retryable() && !e.triggers_cooldown());
        let e = RouterError::backend(BackendError::reply("odd"));
        assert_eq!(e.backend_kind(), Some(BackendErrorKind::Reply));
        assert_eq!(RouterError::ShuttingDown.backend_kind(), None);
    }

    #[test]
    fn messages_never_show_the_key() {
        let e = RouterError::upstream(
            UpstreamErrorKind::Authentication,
            "d1",
            Some(401),
            "Incorrect API key provided: sk-abcdef123",
            Some("sk-abcdef123"),
        );
        assert!(!e.to_string().contains("sk-abcdef123"), "{e}");
    }
}
