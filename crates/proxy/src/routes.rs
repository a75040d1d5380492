//! The HTTP surface: [`app`] and its handlers (inference, models, health, metrics, fallbacks).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{middleware, Json};
use futures::StreamExt;
use router::{Endpoint, ResponseBody, ResponseMeta, RouterError};
use serde_json::{json, Value};

use crate::auth::{self, Caller};
use crate::connection::BodyReadTimeout;
use crate::error::ApiError;
use crate::jobs;
use crate::key_config;
use crate::key_routes;
use crate::metrics::RequestLabels;
use crate::request;
use crate::state::AppState;

/// Response header: the deployment that answered.
pub const HEADER_DEPLOYMENT_ID: &str = "x-llm-scheduler-deployment-id";
/// Response header: the model group that answered (a fallback group when fallbacks were used).
pub const HEADER_MODEL_GROUP: &str = "x-llm-scheduler-model-group";
/// Response header: upstream attempts made.
pub const HEADER_ATTEMPTS: &str = "x-llm-scheduler-attempts";
/// Response header: fallback groups tried, comma separated.
pub const HEADER_FALLBACKS: &str = "x-llm-scheduler-fallbacks";
/// Response header: milliseconds waited for capacity.
pub const HEADER_QUEUE_WAIT_MS: &str = "x-llm-scheduler-queue-wait-ms";
/// Response header: milliseconds to the response head minus the upstream latency.
pub const HEADER_OVERHEAD_MS: &str = "x-llm-scheduler-overhead-ms";
/// Response header: `true` when served from the response cache.
pub const HEADER_CACHE_HIT: &str = "x-llm-scheduler-cache-hit";

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// The master key or a virtual key (when a master key is set).
    Key,
    /// Anyone (probes, the API description, the operator's page, which logs in itself; `/metrics` checks
    /// its own setting).
    Open,
}

/// Every route of the proxy: its path, its handlers and who may call it. `/openapi.json` describes exactly
/// these paths (a test compares the two).
fn route_table() -> Vec<(&'static str, MethodRouter<AppState>, Access)> {
    use Access::{Key, Open};
    let queue_response = || get(jobs::read).delete(jobs::cancel);
    vec![
        ("/chat/completions", post(chat_completions), Key),
        ("/v1/chat/completions", post(chat_completions), Key),
        ("/completions", post(completions), Key),
        ("/v1/completions", post(completions), Key),
        ("/embeddings", post(embeddings), Key),
        ("/v1/embeddings", post(embeddings), Key),
        ("/v1/messages", post(crate::messages::messages), Key),
        ("/queue/chat/completions", post(queue_chat_completions), Key),
        (
            "/v1/queue/chat/completions",
            post(queue_chat_completions),
            Key,
        ),
        ("/queue/request", post(jobs::submit), Key),
        ("/v1/queue/request", post(jobs::submit), Key),
        ("/queue/response/{id}", queue_response(), Key),
        ("/v1/queue/response/{id}", queue_response(), Key),
        ("/models", get(models), Key),
        ("/v1/models", get(models), Key),
        ("/models/{model}", get(model), Key),
        ("/v1/models/{model}", get(model), Key),
        ("/model/info", get(model_info), Key),
        ("/v1/model/info", get(model_info), Key),
        ("/model_group/info", get(model_group_info), Key),
        ("/health", get(health), Key),
        ("/key/generate", post(key_routes::generate), Key),
        ("/key/info", get(key_routes::info), Key),
        ("/key/update", post(key_routes::update), Key),
        ("/key/delete", post(key_routes::delete), Key),
        ("/key/list", get(key_routes::list), Key),
        ("/queue/status", get(crate::status::queue_status), Key),
        ("/ui", get(crate::ui::index), Open),
        ("/ui/{asset}", get(crate::ui::asset), Open),
        ("/health/readiness", get(readiness), Open),
        ("/health/liveliness", get(liveliness), Open),
        ("/health/liveness", get(liveliness), Open),
        ("/metrics", get(metrics), Open),
        ("/openapi.json", get(openapi), Open),
    ]
}

/// The proxy's HTTP app over `state`: OpenAI-compatible endpoints, health, metrics.
///
/// Testable in-process with `tower::ServiceExt::oneshot`.
pub fn app(state: AppState) -> axum::Router {
    let mut authenticated = axum::Router::new();
    let mut open = axum::Router::new();
    for (path, handlers, access) in route_table() {
        match access {
            Access::Key => authenticated = authenticated.route(path, handlers),
            Access::Open => open = open.route(path, handlers),
        }
    }
    let authenticated = authenticated.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_auth,
    ));
    let limit = state.max_request_size();
    authenticated
        .merge(open)
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// The OpenAPI document of [`route_table`], with this build's version.
const OPENAPI: &str = include_str!("openapi/openapi.json");

/// `GET /openapi.json`: the API description (OpenAPI 3.1), as LiteLLM's proxy serves FastAPI's.
async fn openapi() -> Response {
    static DOC: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| {
        let mut doc: Value = serde_json::from_str(OPENAPI).unwrap_or_else(|_| json!({}));
        if let Some(info) = doc.get_mut("info").and_then(Value::as_object_mut) {
            info.insert("version".to_owned(), json!(env!("CARGO_PKG_VERSION")));
        }
        Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
    });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        DOC.clone(),
    )
        .into_response()
}

async fn chat_completions(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    inference(state, Endpoint::ChatCompletions, false, caller, body).await
}

async fn queue_chat_completions(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    inference(state, Endpoint::ChatCompletions, true, caller, body).await
}

async fn completions(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    inference(state, Endpoint::Completions, false, caller, body).await
}

async fn embeddings(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    inference(state, Endpoint::Embeddings, false, caller, body).await
}

/// Counts one inference request in flight and, when dropped (after the JSON answer or at the end of a stream,
/// also when the client goes away), records its duration. A request dropped before any answer (the client
/// disconnected while it waited) is counted with status 499.
struct Tracker {
    state: AppState,
    endpoint: Endpoint,
    model_group: String,
    answered: bool,
    started: Instant,
}

impl Tracker {
    fn new(state: AppState, endpoint: Endpoint) -> Self {
        state.metrics().request_started();
        Self {
            state,
            endpoint,
            model_group: String::new(),
            answered: false,
            started: Instant::now(),
        }
    }

    fn count(&self, deployment: &str, status: u16) {
        self.state.metrics().answered(RequestLabels {
            endpoint: self.endpoint.name().to_owned(),
            model_group: self.model_group.clone(),
            deployment: deployment.to_owned(),
            status: status.to_string(),
        });
    }

    fn answered(&mut self, model_group: &str, deployment: &str, status: StatusCode) {
        self.model_group = model_group.to_owned();
        self.answered = true;
        self.count(deployment, status.as_u16());
    }

    /// Counts and logs `err`, and answers with it.
    fn refuse(mut self, err: ApiError) -> Response {
        let group = std::mem::take(&mut self.model_group);
        self.answered(&group, "", err.status());
        log_error(self.endpoint, &group, &err, self.started.elapsed());
        err.into_response()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.answered {
            self.count("", 499);
            tracing::info!(endpoint = self.endpoint.name(), model_group = %self.model_group,
                took_ms = millis(self.started.elapsed()), "client went away before the answer");
        }
        let metrics = self.state.metrics();
        metrics.request_finished();
        metrics.duration(
            self.endpoint.name(),
            &self.model_group,
            self.started.elapsed(),
        );
    }
}

/// One inference request, start to end. The router call is awaited here, never spawned: when the client
/// disconnects the server drops this future, which drops the router's and cancels a queued entry.
pub(crate) async fn inference(
    state: AppState,
    endpoint: Endpoint,
    force_queue: bool,
    caller: Option<Extension<Caller>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut tracker = Tracker::new(state.clone(), endpoint);
    let parsed = body
        .map_err(|rejection| body_error(&rejection, state.max_request_size()))
        .and_then(|body| request::parse(endpoint, &body, force_queue));
    let mut parsed = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return tracker.refuse(err),
    };
    // A request that did not pass the auth layer may not override anything.
    let caller = caller.map(|Extension(caller)| caller);
    parsed.router_request.overrides_allowed = caller.as_ref().is_some_and(|c| c.overrides_allowed);
    // Label metrics with the model only when it is a served group: clients choose the text.
    let model = &parsed.router_request.model;
    if state.serves(model) {
        tracker.model_group.clone_from(model);
    }
    // Answers name the model as the client asked for it, as LiteLLM's proxy does (since 1.81.7).
    let requested: std::sync::Arc<str> = model.as_str().into();
    // A virtual key's rules; its place in the key's limits is held until the answer is out.
    let mut permit = match &caller {
        // Boxed, as the key router below: only virtual keys reach them, and inline they would enlarge the
        // future of every request (allocated once, at its largest state, for as long as it waits).
        Some(caller) => match Box::pin(key_routes::admit(
            &state,
            caller,
            &mut parsed.router_request,
        ))
        .await
        {
            Ok(permit) => permit,
            Err(err) => return tracker.refuse(err),
        },
        None => None,
    };
    // A key's own deployments are served by its own router.
    let own_router = match caller.as_ref().and_then(|c| c.key.as_ref()) {
        Some(key)
            if key.config.is_some()
                && key_config::groups(key).contains(&parsed.router_request.model) =>
        {
            match Box::pin(state.key_routers().get(&state, key)).await {
                Ok(router) => Some(router),
                Err(err) => return tracker.refuse(err),
            }
        }
        _ => None,
    };
    let router = own_router.as_ref().unwrap_or(state.router());
    let response = match router.completion(parsed.router_request).await {
        Ok(response) => response,
        Err(err) => {
            // Refused before any upstream call (queue full, timeout in the queue, ...): the key's rpm and
            // tpm come back.
            if let (Some(permit), false) =
                (permit.as_mut(), matches!(err, RouterError::Upstream(_)))
            {
                permit.give_back();
            }
            return tracker.refuse(edge_error_counted(err, Some(&state)));
        }
    };

    let meta = response.meta;
    let elapsed = tracker.started.elapsed();
    let overhead = elapsed.saturating_sub(meta.upstream_latency);
    state.metrics().routed(
        &meta.model_group,
        &meta.deployment_id,
        meta.queue_wait,
        meta.upstream_latency,
        overhead.saturating_sub(meta.queue_wait),
    );
    tracker.answered(&meta.model_group, &meta.deployment_id, StatusCode::OK);
    // Per-request lines are debug: at info they cost a tenth of the throughput (formatting and the stdout
    // lock); /metrics counts every request.
    tracing::debug!(
        endpoint = endpoint.name(),
        model_group = %meta.model_group,
        deployment = %meta.deployment_id,
        status = 200,
        attempts = meta.attempts,
        queue_wait_ms = millis(meta.queue_wait),
        upstream_ms = millis(meta.upstream_latency),
        cache_hit = meta.cache_hit,
        "request answered"
    );
    let headers = meta_headers(&meta, overhead);

    match response.body {
        ResponseBody::Json(mut value) => {
            if let Some(caller) = &caller {
                let price = state.price(&meta.deployment_id).or_else(|| {
                    own_router.as_ref().and_then(|r| {
                        r.deployments()
                            .into_iter()
                            .find(|d| d.id == meta.deployment_id)
                            .map(|d| {
                                (
                                    d.input_cost_per_token.unwrap_or(0.0),
                                    d.output_cost_per_token.unwrap_or(0.0),
                                )
                            })
                    })
                });
                key_routes::settle(&state, caller, permit.as_mut(), price, &value);
            }
            drop(permit);
            name_requested_model(&mut value, &requested);
            (headers, Json(value)).into_response()
        }
        ResponseBody::Stream(stream) => {
            // The tracker and the key's place ride along with the stream: the request ends when the stream
            // does.
            let group = meta.model_group.clone();
            let events = stream.map(move |item| {
                let _tracker = &tracker;
                let _permit = &permit;
                Ok::<_, Infallible>(match item {
                    Ok(bytes) => chunk_naming_model(bytes, &requested),
                    Err(err) => {
                        let err = edge_error(err);
                        tracing::warn!(model_group = %group, error = %err, "stream broke");
                        Bytes::from(format!("data: {}\n\n", err.body()))
                    }
                })
            });
            let mut response = (headers, Body::from_stream(events)).into_response();
            let h = response.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            // Tells buffering reverse proxies (nginx) to pass chunks on at once.
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            response
        }
    }
}

/// Sets an answer's `model` to the name the client asked for (the group or alias, not the deployment's
/// upstream model): LiteLLM's proxy answers so, and clients compare it with what they sent.
fn name_requested_model(value: &mut Value, requested: &str) {
    if let Some(object) = value.as_object_mut() {
        if object.contains_key("model") {
            object.insert("model".to_owned(), Value::String(requested.to_owned()));
        }
    }
}

/// One streamed event (`data: {...}\n\n`) with its `model` named as the client asked; other events (`[DONE]`)
/// and events without a `model` pass unchanged.
fn chunk_naming_model(bytes: Bytes, requested: &str) -> Bytes {
    let Some(data) = bytes
        .strip_prefix(b"data: ")
        .filter(|d| d.starts_with(b"{") && d.windows(7).any(|w| w == b"\"model\""))
    else {
        return bytes;
    };
    match serde_json::from_slice::<Value>(data.trim_ascii_end()) {
        Ok(mut value) => {
            name_requested_model(&mut value, requested);
            Bytes::from(format!("data: {value}\n\n"))
        }
        Err(_) => bytes,
    }
}

/// A router error as the edge answers it. An unknown model is the client's mistake: 400 naming the groups.
fn edge_error(err: RouterError) -> ApiError {
    edge_error_counted(err, None)
}

/// [`edge_error`], counting backend (Redis) failures.
pub(crate) fn edge_error_counted(err: RouterError, state: Option<&AppState>) -> ApiError {
    if let (RouterError::Backend(_), Some(state)) = (&err, state) {
        state.metrics().backend_errors().inc();
    }
    let unknown_model = matches!(err, RouterError::ModelNotFound { .. });
    let override_refused = matches!(err, RouterError::OverrideNotAllowed { .. });
    let api = ApiError::from(err);
    if unknown_model {
        api.with_status(StatusCode::BAD_REQUEST)
    } else if override_refused {
        api.with_note(
            " (the proxy's operator can allow request overrides with \
             `general_settings.allow_client_side_overrides: true`)",
        )
    } else {
        api
    }
}

/// The body could not be read: too large (413), not whole in time (408) or broken.
pub(crate) fn body_error(rejection: &BytesRejection, limit: usize) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::payload_too_large(limit)
    } else if let Some(timeout) = find_source::<BodyReadTimeout>(rejection) {
        ApiError::body_timeout(timeout.to_string())
    } else {
        ApiError::bad_request(
            format!("could not read the request body: {}", rejection.body_text()),
            None,
        )
    }
}

/// The first error of type `E` in `err`'s source chain.
fn find_source<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut next = Some(err);
    while let Some(err) = next {
        if let Some(found) = err.downcast_ref::<E>() {
            return Some(found);
        }
        next = err.source();
    }
    None
}

fn log_error(endpoint: Endpoint, group: &str, err: &ApiError, took: Duration) {
    let status = err.status().as_u16();
    if err.status().is_server_error() {
        tracing::warn!(endpoint = endpoint.name(), model_group = %group, status, took_ms = millis(took),
            error = %err.message(), "request failed");
    } else {
        tracing::info!(endpoint = endpoint.name(), model_group = %group, status, took_ms = millis(took),
            error = %err.message(), "request refused");
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn meta_headers(meta: &ResponseMeta, overhead: Duration) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(8);
    let mut put = |name: &'static str, value: Option<HeaderValue>| {
        // Names of groups and deployments are config text; one that is not a valid header value is left out.
        if let Some(value) = value {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    put(
        HEADER_DEPLOYMENT_ID,
        HeaderValue::from_str(&meta.deployment_id).ok(),
    );
    put(
        HEADER_MODEL_GROUP,
        HeaderValue::from_str(&meta.model_group).ok(),
    );
    put(HEADER_ATTEMPTS, Some(HeaderValue::from(meta.attempts)));
    put(
        HEADER_FALLBACKS,
        if meta.fallbacks.is_empty() {
            Some(HeaderValue::from_static(""))
        } else {
            HeaderValue::from_str(&meta.fallbacks.join(",")).ok()
        },
    );
    put(HEADER_QUEUE_WAIT_MS, Some(millis_header(meta.queue_wait)));
    put(HEADER_OVERHEAD_MS, Some(millis_header(overhead)));
    put(
        HEADER_CACHE_HIT,
        Some(HeaderValue::from_static(if meta.cache_hit {
            "true"
        } else {
            "false"
        })),
    );
    headers
}

/// `d` in milliseconds with three decimals (`1.234`), from integer microseconds: float formatting cost more
/// than the rest of the headers together.
fn millis_header(d: Duration) -> HeaderValue {
    use std::fmt::Write as _;
    let micros = d.as_micros();
    let mut text = String::with_capacity(24);
    let _ = write!(text, "{}.{:03}", micros / 1000, micros % 1000);
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("0.000"))
}

/// `GET /v1/models`: the model groups in OpenAI's list shape.
async fn models(State(state): State<AppState>, caller: Option<Extension<Caller>>) -> Json<Value> {
    let created = state.started_epoch_secs();
    let key = caller.and_then(|Extension(c)| c.key);
    let mut groups = state.router().model_groups();
    groups.retain(|id| key.as_ref().is_none_or(|k| k.allows_model(id)));
    if let Some(key) = &key {
        groups.extend(key_config::groups(key));
    }
    let data: Vec<Value> = groups
        .into_iter()
        .map(|id| model_object(&id, created))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// `GET /v1/models/{model}`.
async fn model(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let key = caller.and_then(|Extension(c)| c.key);
    let mut groups = state.router().model_groups();
    groups.retain(|g| key.as_ref().is_none_or(|k| k.allows_model(g)));
    if let Some(key) = &key {
        groups.extend(key_config::groups(key));
    }
    if groups.contains(&id) {
        Ok(Json(model_object(&id, state.started_epoch_secs())))
    } else {
        Err(ApiError::unknown_model(&id, &groups))
    }
}

/// `GET /model/info` (LiteLLM's shape: one entry per deployment, credentials left out).
async fn model_info(State(state): State<AppState>) -> Json<Value> {
    Json(crate::model_info::model_info(&state.router().deployments()))
}

/// `GET /model_group/info[?model_group=NAME]` (LiteLLM's `ModelGroupInfo` list).
async fn model_group_info(
    State(state): State<AppState>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    Json(crate::model_info::model_group_info(
        &state.router().deployments(),
        query.get("model_group").map(String::as_str),
    ))
}

fn model_object(id: &str, created: u64) -> Value {
    json!({ "id": id, "object": "model", "created": created, "owned_by": "llm-scheduler" })
}

/// `GET /health`: per-deployment state (cooldowns, in-flight, usage); authenticated.
async fn health(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let deployments = state
        .router()
        .health()
        .await
        .map_err(|e| edge_error_counted(e, Some(&state)))?;
    let cooling = deployments
        .iter()
        .filter(|d| d.cooldown_remaining.is_some())
        .count();
    let deployments: Vec<Value> = deployments
        .into_iter()
        .map(|d| {
            json!({
                "id": d.id,
                "model_group": d.group,
                "healthy": d.cooldown_remaining.is_none(),
                "cooldown_remaining_secs": d.cooldown_remaining.map(|r| r.as_secs_f64()),
                "in_flight": d.in_flight,
                "rpm_used": d.rpm_used,
                "rpm_limit": d.rpm_limit,
                "tpm_used": d.tpm_used,
                "tpm_limit": d.tpm_limit,
                "successes_in_window": d.successes_in_window,
                "failures_in_window": d.failures_in_window,
                "latency_ms_per_token": d.latency_ms_per_token,
                "ttft_ms": d.ttft_ms,
            })
        })
        .collect();
    // Entries not served (unsupported provider prefix), as the startup warning named them.
    let skipped: Vec<Value> = state
        .router()
        .skipped_deployments()
        .into_iter()
        .map(|s| json!({"entry": s.path, "model_group": s.model_name, "model": s.model, "reason": s.reason}))
        .collect();
    let mut body = json!({
        "backend": state.backend_name(),
        "healthy_count": deployments.len() - cooling,
        "unhealthy_count": cooling,
        "deployments": deployments,
        "skipped_deployments": skipped,
    });
    if let Some((checked_at, checks)) = state.health_checks() {
        // LiteLLM's names for its health check's endpoint lists.
        let endpoint = |c: &router::HealthCheck| {
            json!({"id": c.id, "model_name": c.group, "model": c.model, "api_base": c.api_base,
                   "error": c.error, "cooldown_secs": c.cooldown.map(|d| d.as_secs_f64())})
        };
        body["background_health_checks"] = json!({
            "checked_at": checked_at,
            "healthy_endpoints": checks.iter().filter(|c| c.healthy).map(endpoint).collect::<Vec<_>>(),
            "unhealthy_endpoints": checks.iter().filter(|c| !c.healthy).map(endpoint).collect::<Vec<_>>(),
        });
    }
    Ok(Json(body))
}

/// `GET /health/readiness`: the backend answers and the replica is not shutting down.
async fn readiness(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::unavailable("shutting down"));
    }
    state.router().ping_backend().await.map_err(|e| {
        state.metrics().backend_errors().inc();
        ApiError::store_unavailable(format!("backend not reachable: {e}"))
    })?;
    let (mode, from_memory) = state.router().redis_failure_mode();
    Ok(Json(json!({
        "status": "ready",
        "backend": state.backend_name(),
        "redis_failure_mode": mode.as_str(),
        "admission": if from_memory { "this replica's share of every limit, in memory (Redis does not answer)" } else { "shared" },
        "version": env!("CARGO_PKG_VERSION"),
    })))
}

/// `GET /health/liveliness`: the process answers.
async fn liveliness() -> Json<Value> {
    Json(json!("I'm alive!"))
}

/// `GET /metrics`: Prometheus (OpenMetrics) text.
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if state.metrics_require_auth() {
        auth::check(state.master_key(), &headers)?;
    }
    let router_registry =
        crate::metrics::router_registry(state.router(), state.metrics().backend_errors()).await;
    let text = state
        .metrics()
        .encode(&router_registry)
        .map_err(|e| ApiError::internal(format!("cannot encode metrics: {e}")))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::unknown_route(request.method().as_str(), request.uri().path())
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::method_not_allowed(request.method().as_str(), request.uri().path())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `/openapi.json` lists exactly the routes the app serves, and marks as open exactly the open ones.
    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "{}",
            doc["openapi"]
        );
        let documented: BTreeSet<&str> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .map(String::as_str)
            .collect();
        let table = route_table();
        let served: BTreeSet<&str> = table.iter().map(|(p, _, _)| *p).collect();
        assert_eq!(documented, served);
        for (path, _, access) in &table {
            for (method, op) in doc["paths"][*path].as_object().expect("operations") {
                let needs_key = op.get("security").is_some();
                assert_eq!(
                    needs_key,
                    *access == Access::Key,
                    "{method} {path}: security in the document"
                );
            }
        }
    }

    #[test]
    fn answers_name_the_requested_model() {
        let chunk = Bytes::from("data: {\"id\":\"c\",\"model\":\"gpt-4o-2024-08-06\"}\n\n");
        let out = chunk_naming_model(chunk, "chat");
        assert_eq!(&out[..], b"data: {\"id\":\"c\",\"model\":\"chat\"}\n\n");
        let done = Bytes::from_static(b"data: [DONE]\n\n");
        assert_eq!(chunk_naming_model(done.clone(), "chat"), done);
        let mut value = json!({"object": "list", "data": []});
        name_requested_model(&mut value, "chat");
        assert!(value.get("model").is_none(), "{value}");
    }

    /// What a waiting request costs is mostly the size of its future (one allocation that lives as long as
    /// the request): the parts a request rarely reaches (the upstream call and what follows) are boxed, so
    /// waiting in the queue stays small. Prints the sizes (`--nocapture`).
    #[tokio::test]
    async fn the_request_future_is_small_while_it_waits() {
        let config = crate::config::Config::from_yaml_str(
            "model_list:\n  - model_name: g\n    litellm_params: { model: openai/g, mock_response: hi }\n",
        )
        .expect("config");
        let router = router::Router::new(config.router.clone(), router::Backend::Memory)
            .await
            .expect("router");
        let state = AppState::new(router.clone(), &config);
        let request = crate::request::parse(
            Endpoint::ChatCompletions,
            br#"{"model":"g","messages":[{"role":"user","content":"hi"}]}"#,
            false,
        )
        .expect("request");
        let completion = router.completion(request.router_request);
        let handler = inference(
            state,
            Endpoint::ChatCompletions,
            false,
            None,
            Ok(Bytes::from_static(b"{}")),
        );
        let (completion, handler) = (size_of_val(&completion), size_of_val(&handler));
        println!("router completion future: {completion} B; inference handler future: {handler} B");
        // About 3.9 KB in a debug build, 3.2 KB of it the router's.
        assert!(handler <= 8192, "the handler future is {handler} B");
    }

    #[test]
    fn millis_headers_have_three_decimals() {
        let text = |us| millis_header(Duration::from_micros(us));
        assert_eq!(text(0), "0.000");
        assert_eq!(text(5), "0.005");
        assert_eq!(text(1_234), "1.234");
        assert_eq!(text(61_000_007), "61000.007");
        assert_eq!(
            millis_header(Duration::from_nanos(999)),
            "0.000",
            "whole microseconds"
        );
    }
}
