//! `ApiError`: every failure the HTTP edge answers, in OpenAI's error shape with an honest status.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use router::RouterError;
use serde_json::json;

/// `Retry-After` of a 503 caused by the store (Redis) not answering: a restarted or failed-over Redis answers
/// again within seconds, and the pool reconnects on the next call.
pub(crate) const STORE_RETRY_AFTER: Duration = Duration::from_secs(1);

/// An error answered to a client as `{"error": {"message", "type", "param", "code"}}`.
///
/// Built from the proxy's own checks (bad input, auth, routing) or from a [`RouterError`], whose
/// `status_code()`, `error_type()`, `code()`, `param()` and `retry_after()` it keeps.
#[derive(Clone, Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    error_type: &'static str,
    param: Option<String>,
    code: Option<String>,
    retry_after: Option<Duration>,
    /// Answer with `Connection: close` (the rest of the request cannot be trusted to follow).
    close: bool,
}

impl ApiError {
    fn new(status: StatusCode, error_type: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            error_type,
            param: None,
            code: None,
            retry_after: None,
            close: false,
        }
    }

    /// 400: the request is malformed; `param` names the offending field.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut err = Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message);
        err.param = param.map(str::to_owned);
        err
    }

    /// 401: missing or wrong key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    /// 401: the virtual key expired (LiteLLM's `expired_key`).
    pub fn expired_key() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "expired_key",
            "the API key has expired",
        )
        .with_code("expired_key")
    }

    /// 403: the caller may not do this; `error_type` is LiteLLM's name for the rule where it has one
    /// (`key_model_access_denied`), `param` the field that asked for it.
    pub fn forbidden(
        error_type: &'static str,
        message: impl Into<String>,
        param: Option<&str>,
    ) -> Self {
        let mut err = Self::new(StatusCode::FORBIDDEN, error_type, message);
        err.param = param.map(str::to_owned);
        err
    }

    /// 429 at once: the virtual key is over its rpm/tpm limit until `retry_after`.
    pub fn key_rate_limited(message: impl Into<String>, retry_after: Duration) -> Self {
        let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
            .with_code("rate_limit_exceeded");
        err.retry_after = Some(retry_after);
        err
    }

    /// 429: the virtual key's spend reached its `max_budget` (LiteLLM's `budget_exceeded`).
    pub fn budget_exceeded(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "budget_exceeded", message)
            .with_code("budget_exceeded")
    }

    /// 408: the request's timeout passed while waiting (for its key's parallel slot).
    pub(crate) fn wait_timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "timeout_error", message).with_code("timeout")
    }

    /// 404: the thing named by `param` does not exist.
    pub fn not_found(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut err =
            Self::new(StatusCode::NOT_FOUND, "not_found_error", message).with_code("not_found");
        err.param = param.map(str::to_owned);
        err
    }

    /// 404 for a path this server does not have.
    pub fn unknown_route(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("unknown route: {method} {path}"),
        )
        .with_code("not_found")
    }

    /// 404 for a model this server does not serve, naming the ones it does.
    pub fn unknown_model(model: &str, groups: &[String]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "model `{model}` is not served here; known models: {}",
                groups.join(", ")
            ),
        )
        .with_code("model_not_found")
        .with_param("model")
    }

    /// 405 for a known path called with the wrong method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("method {method} is not allowed on {path}"),
        )
        .with_code("method_not_allowed")
    }

    /// 413: the body is larger than `general_settings.max_request_size_mb`.
    pub fn payload_too_large(limit_bytes: usize) -> Self {
        #[allow(clippy::cast_precision_loss)]
        let mib = limit_bytes as f64 / (1024.0 * 1024.0);
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("request body is larger than the limit of {mib} MiB (general_settings.max_request_size_mb)"),
        )
        .with_code("request_too_large")
    }

    /// 503 with a message (e.g. the replica is shutting down).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }

    /// 503 because the store (Redis) does not answer, with `Retry-After`.
    pub fn store_unavailable(message: impl Into<String>) -> Self {
        let mut err = Self::unavailable(message).with_code("backend_unavailable");
        err.retry_after = Some(STORE_RETRY_AFTER);
        err
    }

    /// 408: the request body did not arrive in time; the connection is closed after the answer.
    pub(crate) fn body_timeout(message: impl Into<String>) -> Self {
        let mut err = Self::new(StatusCode::REQUEST_TIMEOUT, "timeout_error", message)
            .with_code("request_timeout");
        err.close = true;
        err
    }

    /// 500: something this server got wrong.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The same error naming the offending request field.
    #[must_use]
    pub(crate) fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    /// The same error with a sentence added to its message.
    #[must_use]
    pub(crate) fn with_note(mut self, note: &str) -> Self {
        self.message.push_str(note);
        self
    }

    /// The same error with an OpenAI `code`.
    #[must_use]
    pub fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    /// The same error answered with another status (the edge's own rule for a router error).
    #[must_use]
    pub(crate) fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message shown to the client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The OpenAI error `type`.
    pub fn error_type(&self) -> &'static str {
        self.error_type
    }

    /// The offending request field, when known.
    pub fn param(&self) -> Option<&str> {
        self.param.as_deref()
    }

    /// The JSON body (also used for errors inside an event stream).
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl From<RouterError> for ApiError {
    fn from(err: RouterError) -> Self {
        let status =
            StatusCode::from_u16(err.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            status,
            message: err.to_string(),
            error_type: err.error_type(),
            param: err.param().map(str::to_owned),
            code: err.code().map(str::to_owned),
            retry_after: err.retry_after().or_else(|| {
                if status == StatusCode::TOO_MANY_REQUESTS {
                    // A 429 without a hint still tells clients to back off a little rather than hammer.
                    Some(Duration::from_secs(1))
                } else if matches!(err, RouterError::Backend(_)) {
                    Some(STORE_RETRY_AFTER)
                } else {
                    None
                }
            }),
            close: false,
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: "0" would invite an immediate retry.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if self.close {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::{BackendError, BackendErrorKind};

    #[test]
    fn router_errors_keep_status_type_and_retry_after() {
        let err = ApiError::from(RouterError::QueueFull {
            group: "g".into(),
            retry_after: Some(Duration::from_millis(1500)),
        });
        assert_eq!(err.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(err.error_type(), "rate_limit_error");
        let response = err.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    #[test]
    fn store_outages_tell_clients_when_to_retry() {
        let refused = BackendError::new(BackendErrorKind::Connection, "connection refused");
        let response = ApiError::from(RouterError::Backend(refused)).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = ApiError::store_unavailable("not reachable").into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        // Other 503s (shutting down) name no time: this replica will not come back.
        let response = ApiError::from(RouterError::ShuttingDown).into_response();
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }

    #[test]
    fn a_body_timeout_closes_the_connection() {
        let response = ApiError::body_timeout("too slow").into_response();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn the_body_has_the_openai_shape() {
        let body = ApiError::bad_request("bad `priority`", Some("priority")).body();
        assert_eq!(body["error"]["param"], "priority");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"]["code"].is_null());
        assert_eq!(body["error"]["message"], "bad `priority`");
    }
}
