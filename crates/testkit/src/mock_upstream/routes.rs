//! The mock upstream's HTTP routes: OpenAI and Azure OpenAI paths answering by the scripted behaviour.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::{Path, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

use super::anthropic::{self, Message, MessagesRequest};
use super::behavior::Outcome;
use super::openai::{self, Completion, Endpoint, Inference};
use super::recorder::{epoch_ms, InFlightGuard, RecordedRequest};
use super::Shared;

/// Largest request body the mock reads.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// All routes, with in-flight tracking around every request.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    let mut router = Router::new();
    for prefix in ["/v1", ""] {
        router = router
            .route(
                &format!("{prefix}/chat/completions"),
                openai(Endpoint::Chat),
            )
            .route(
                &format!("{prefix}/completions"),
                openai(Endpoint::Completions),
            )
            .route(
                &format!("{prefix}/embeddings"),
                openai(Endpoint::Embeddings),
            )
            .route(&format!("{prefix}/models"), get(models));
    }
    router
        .route("/v1/messages", post(messages))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            azure(Endpoint::Chat),
        )
        .route(
            "/openai/deployments/{deployment}/completions",
            azure(Endpoint::Completions),
        )
        .route(
            "/openai/deployments/{deployment}/embeddings",
            azure(Endpoint::Embeddings),
        )
        .fallback(unknown_path)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            track_in_flight,
        ))
        // Added after the layer: reading the log is neither recorded nor counted in flight.
        .route(ADMIN_REQUESTS_PATH, get(admin_requests).delete(admin_clear))
        .with_state(shared)
}

/// Admin route of the mock (for processes that cannot call [`super::MockUpstream::requests`], such as
/// benchmarks against the `mock-upstream` binary): `GET` answers the counters and the recorded requests as
/// JSON, `DELETE` clears the log and the arrival count and restarts peak in-flight tracking.
const ADMIN_REQUESTS_PATH: &str = "/__mock/requests";

/// `GET /__mock/requests`: `{"count", "in_flight", "peak_in_flight", "recording", "requests": [{"epoch_ms",
/// "method", "path", "body"}, ...]}`, requests in arrival order.
async fn admin_requests(State(shared): State<Arc<Shared>>) -> Response {
    let requests: Vec<Value> = shared
        .recorder
        .requests()
        .into_iter()
        .map(|r| {
            serde_json::json!({
                "epoch_ms": r.epoch_ms,
                "method": r.method,
                "path": r.path,
                "body": r.body,
            })
        })
        .collect();
    Json(serde_json::json!({
        "count": shared.recorder.count(),
        "in_flight": shared.in_flight.current(),
        "peak_in_flight": shared.in_flight.peak(),
        "recording": shared.recorder.is_enabled(),
        "requests": requests,
    }))
    .into_response()
}

/// `DELETE /__mock/requests`.
async fn admin_clear(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.recorder.clear();
    shared.in_flight.reset_peak();
    StatusCode::NO_CONTENT
}

fn openai(endpoint: Endpoint) -> MethodRouter<Arc<Shared>> {
    post(move |State(shared): State<Arc<Shared>>, request: Request| {
        inference(shared, request, endpoint, None)
    })
}

fn azure(endpoint: Endpoint) -> MethodRouter<Arc<Shared>> {
    post(
        move |State(shared): State<Arc<Shared>>,
              Path(deployment): Path<String>,
              request: Request| { inference(shared, request, endpoint, Some(deployment)) },
    )
}

/// Counts the request in flight from arrival until its response body ends or is dropped.
async fn track_in_flight(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let guard = shared.in_flight.enter();
    let response = next.run(request).await;
    response.map(|body| {
        Body::new(GuardedBody {
            body,
            _guard: guard,
        })
    })
}

/// A response body that keeps its request counted in flight while the body is alive.
struct GuardedBody {
    body: Body,
    _guard: InFlightGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves one chat, completions or embeddings request; `deployment` is set for the Azure form.
async fn inference(
    shared: Arc<Shared>,
    request: Request,
    endpoint: Endpoint,
    deployment: Option<String>,
) -> Response {
    let (parts, body) = match read_and_record(&shared, request).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    if deployment.is_some() && !parts.headers.contains_key("api-key") {
        return error(
            StatusCode::UNAUTHORIZED,
            openai::error_body(
                "Access denied due to missing subscription key. Make sure to include the subscription key \
                 in the api-key header when making API calls.",
                "invalid_request_error",
                None,
                Some("401"),
            ),
        );
    }

    let (behavior, server_reply) = shared.next_behavior();
    if !behavior.latency.is_zero() {
        tokio::time::sleep(behavior.latency).await;
    }
    if let Some(response) = failure_response(&behavior.outcome, endpoint, &body) {
        return response;
    }
    let drop_after = match behavior.outcome {
        Outcome::Hang => return std::future::pending().await,
        Outcome::DropMidStream { after_chunks } => Some(after_chunks),
        _ => None,
    };

    let request = match Inference::parse(endpoint, &body, deployment.as_deref()) {
        Ok(request) => request,
        Err(error_body) => return error(StatusCode::BAD_REQUEST, error_body),
    };
    let reply = behavior.reply.as_deref().unwrap_or(&server_reply);
    let created = epoch_ms() / 1000;
    if endpoint == Endpoint::Embeddings {
        return json_body(openai::embeddings_json(&request), drop_after);
    }
    let completion = Completion::new(shared.next_id(endpoint), created, &request, reply);
    if request.stream {
        let events = completion.to_events(endpoint, request.include_usage);
        let body = Body::from_stream(chunked(events, behavior.token_latency, drop_after));
        return (
            [
                (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
                (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            body,
        )
            .into_response();
    }
    let generation = behavior
        .token_latency
        .saturating_mul(u32::try_from(completion.tokens()).unwrap_or(u32::MAX));
    if !generation.is_zero() {
        tokio::time::sleep(generation).await;
    }
    json_body(completion.to_json(endpoint), drop_after)
}

/// `POST /v1/messages`: Anthropic's Messages API. Requires `x-api-key` and `anthropic-version` (checked before
/// any behaviour is used); scripted failures answer in Anthropic's error shape.
async fn messages(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = match read_and_record(&shared, request).await {
        Ok(read) => read,
        Err(response) => return response,
    };
    if !parts.headers.contains_key("x-api-key") {
        return error(
            StatusCode::UNAUTHORIZED,
            anthropic::error_body("authentication_error", "x-api-key header is required"),
        );
    }
    if !parts.headers.contains_key("anthropic-version") {
        return error(
            StatusCode::BAD_REQUEST,
            anthropic::error_body(
                "invalid_request_error",
                "anthropic-version: header is required",
            ),
        );
    }
    let (behavior, server_reply) = shared.next_behavior();
    if !behavior.latency.is_zero() {
        tokio::time::sleep(behavior.latency).await;
    }
    if let Some(response) = anthropic_failure(&behavior.outcome, &body) {
        return response;
    }
    let drop_after = match behavior.outcome {
        Outcome::Hang => return std::future::pending().await,
        Outcome::DropMidStream { after_chunks } => Some(after_chunks),
        _ => None,
    };
    let request = match MessagesRequest::parse(&body) {
        Ok(request) => request,
        Err(error_body) => return error(StatusCode::BAD_REQUEST, error_body),
    };
    let reply = behavior.reply.as_deref().unwrap_or(&server_reply);
    let n = shared
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let message = Message::new(n, &request, reply);
    if request.stream {
        let body = Body::from_stream(chunked(
            message.to_events(),
            behavior.token_latency,
            drop_after,
        ));
        return (
            [
                (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
                (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            ],
            body,
        )
            .into_response();
    }
    let generation = behavior
        .token_latency
        .saturating_mul(u32::try_from(message.tokens()).unwrap_or(u32::MAX));
    if !generation.is_zero() {
        tokio::time::sleep(generation).await;
    }
    json_body(message.to_json(), drop_after)
}

/// A scripted failure in Anthropic's shape: 400 "prompt is too long", 401, 404, 429 `rate_limit_error`, 500
/// `api_error`, and 529 `overloaded_error` for [`Outcome::ServiceUnavailable`].
fn anthropic_failure(outcome: &Outcome, body: &Value) -> Option<Response> {
    let with = |status: u16, kind: &str, message: &str| {
        error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            anthropic::error_body(kind, message),
        )
    };
    let response = match outcome {
        Outcome::ContextLengthExceeded => {
            let tokens = MessagesRequest::parse(body).map_or(1, |r| r.prompt_tokens());
            error(
                StatusCode::BAD_REQUEST,
                anthropic::prompt_too_long(tokens.max(200_001)),
            )
        }
        Outcome::Unauthorized => with(401, "authentication_error", "invalid x-api-key"),
        Outcome::NotFound => {
            let model = body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default();
            with(404, "not_found_error", &format!("model: {model}"))
        }
        Outcome::RateLimited { retry_after_secs } => {
            let mut response = with(
                429,
                "rate_limit_error",
                "Number of request tokens has exceeded your per-minute rate limit",
            );
            if let Some(seconds) = retry_after_secs {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(*seconds));
            }
            response
        }
        Outcome::InternalError => with(500, "api_error", "Internal server error"),
        Outcome::ServiceUnavailable => with(529, "overloaded_error", "Overloaded"),
        Outcome::Status {
            status,
            headers,
            body,
        } => custom(*status, headers, body),
        Outcome::Success | Outcome::Hang | Outcome::DropMidStream { .. } => return None,
    };
    Some(response)
}

/// `GET /v1/models`.
async fn models(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    match read_and_record(&shared, request).await {
        Ok(_) => Json(openai::models_json(epoch_ms() / 1000)).into_response(),
        Err(response) => response,
    }
}

/// Any other path: OpenAI's 404 for an unknown URL.
async fn unknown_path(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let line = format!("{} {}", request.method(), request.uri().path());
    match read_and_record(&shared, request).await {
        Ok(_) => error(
            StatusCode::NOT_FOUND,
            openai::invalid_request(&format!("Invalid URL ({line})"), None),
        ),
        Err(response) => response,
    }
}

/// Reads the body, parses it as JSON and records the request.
async fn read_and_record(shared: &Shared, request: Request) -> Result<(Parts, Value), Response> {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
        error(
            StatusCode::BAD_REQUEST,
            openai::invalid_request("Could not read the request body.", None),
        )
    })?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    shared.recorder.arrive(|| record(at, &parts, &body));
    Ok((parts, body))
}

fn record(at: Instant, parts: &Parts, body: &Value) -> RecordedRequest {
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    RecordedRequest {
        at,
        epoch_ms: epoch_ms(),
        method: parts.method.as_str().to_owned(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |p| p.as_str().to_owned()),
        headers,
        body: body.clone(),
    }
}

/// The response of a scripted failure; `None` for the outcomes that are not an error status.
fn failure_response(outcome: &Outcome, endpoint: Endpoint, body: &Value) -> Option<Response> {
    let rate_limited = |retry_after: Option<u64>| {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            openai::error_body(
                "Rate limit reached for requests. Please try again later.",
                "requests",
                None,
                Some("rate_limit_exceeded"),
            ),
        );
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    };
    let response = match outcome {
        Outcome::ContextLengthExceeded => {
            let prompt_tokens = Inference::parse(endpoint, body, Some(openai::MODEL_ID))
                .map_or(1, |request| request.prompt_tokens);
            error(
                StatusCode::BAD_REQUEST,
                openai::context_length_exceeded(prompt_tokens),
            )
        }
        Outcome::Unauthorized => error(
            StatusCode::UNAUTHORIZED,
            openai::error_body(
                "Incorrect API key provided.",
                "invalid_request_error",
                None,
                Some("invalid_api_key"),
            ),
        ),
        Outcome::NotFound => {
            let model = body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default();
            error(
                StatusCode::NOT_FOUND,
                openai::error_body(
                    &format!("The model `{model}` does not exist or you do not have access to it."),
                    "invalid_request_error",
                    None,
                    Some("model_not_found"),
                ),
            )
        }
        Outcome::RateLimited { retry_after_secs } => rate_limited(*retry_after_secs),
        Outcome::InternalError => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            openai::error_body(
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
                None,
            ),
        ),
        Outcome::ServiceUnavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            openai::error_body(
                "The engine is currently overloaded, please try again later.",
                "server_error",
                None,
                None,
            ),
        ),
        Outcome::Status {
            status,
            headers,
            body,
        } => custom(*status, headers, body),
        Outcome::Success | Outcome::Hang | Outcome::DropMidStream { .. } => return None,
    };
    Some(response)
}

/// A scripted status with its own headers and body; invalid statuses or headers answer 500 saying why.
fn custom(status: u16, headers: &[(String, String)], body: &str) -> Response {
    let Ok(status) = StatusCode::from_u16(status) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("invalid scripted status {status}"),
        )
            .into_response();
    };
    let mut response = (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.to_owned(),
    )
        .into_response();
    for (name, value) in headers {
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("invalid scripted header {name}: {value}"),
                )
                    .into_response()
            }
        }
    }
    response
}

fn error(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// A JSON response; with `drop_after`, sent as two halves and broken after that many of them.
fn json_body(value: Value, drop_after: Option<usize>) -> Response {
    let Some(after_chunks) = drop_after else {
        return Json(value).into_response();
    };
    let mut first = Bytes::from(value.to_string());
    let second = first.split_off(first.len() / 2);
    (
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        Body::from_stream(chunked(
            vec![first, second],
            Duration::ZERO,
            Some(after_chunks),
        )),
    )
        .into_response()
}

/// Body chunks spaced `gap` apart; with `cut`, the stream fails after that many chunks.
fn chunked(
    chunks: Vec<Bytes>,
    gap: Duration,
    cut: Option<usize>,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    struct Pacer {
        chunks: std::vec::IntoIter<Bytes>,
        sent: usize,
        gap: Duration,
        cut: Option<usize>,
    }
    let pacer = Pacer {
        chunks: chunks.into_iter(),
        sent: 0,
        gap,
        cut,
    };
    futures::stream::unfold(Some(pacer), |pacer| async move {
        let mut pacer = pacer?;
        if pacer.cut == Some(pacer.sent) {
            // Let the connection flush what was sent before the error tears it down.
            tokio::task::yield_now().await;
            let broken =
                io::Error::new(io::ErrorKind::ConnectionAborted, "scripted connection drop");
            return Some((Err(broken), None));
        }
        let chunk = pacer.chunks.next()?;
        if pacer.sent > 0 && !pacer.gap.is_zero() {
            tokio::time::sleep(pacer.gap).await;
        }
        pacer.sent += 1;
        Some((Ok(chunk), Some(pacer)))
    })
}
