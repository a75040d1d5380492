//! The durable jobs API: `POST /queue/request`, `GET` and `DELETE /queue/response/{id}` (also under `/v1`).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use router::{Endpoint, JobOutcome, JobPhase, JobReport, RouterError};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::auth::{self, Caller};
use crate::error::ApiError;
use crate::request;
use crate::state::AppState;

/// Longest long poll (`GET /queue/response/{id}?wait=SECONDS`).
pub(crate) const MAX_WAIT_SECS: f64 = 30.0;

/// `POST /queue/request`: the body of a `/chat/completions` request (or, with `"endpoint": "completions"` or
/// `"embeddings"`, of that endpoint), checked like the synchronous route; answers the job's id at once.
pub(crate) async fn submit(
    State(state): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match submit_inner(&state, caller, &headers, body).await {
        Ok(answer) => Json(answer).into_response(),
        Err(err) => err.into_response(),
    }
}

async fn submit_inner(
    state: &AppState,
    caller: Option<Extension<Caller>>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, ApiError> {
    let body =
        body.map_err(|rejection| crate::routes::body_error(&rejection, state.max_request_size()))?;
    let (endpoint, body) = split_endpoint(&body)?;
    let mut parsed = request::parse(endpoint, &body, false)?;
    parsed.router_request.overrides_allowed =
        caller.is_some_and(|Extension(caller)| caller.overrides_allowed);
    let job_caller = auth::job_caller(state.master_key(), headers);
    let ticket = state
        .router()
        .submit_job(parsed.router_request, &job_caller)
        .await
        .map_err(|e| crate::routes::edge_error_counted(e, Some(state)))?;
    Ok(json!({
        "id": ticket.id,
        "url": format!("/queue/response/{}", ticket.id),
        "eta": ticket.eta,
        "status": "queued",
        "position": ticket.position,
    }))
}

/// Takes the optional `endpoint` field (`chat/completions`, `completions`, `embeddings`; a leading `/` or
/// `/v1/` accepted) out of the body.
fn split_endpoint(body: &[u8]) -> Result<(Endpoint, Vec<u8>), ApiError> {
    let Ok(Value::Object(mut map)) = serde_json::from_slice::<Value>(body) else {
        // Not a JSON object: the synchronous route's parser names the problem.
        return Ok((Endpoint::ChatCompletions, body.to_vec()));
    };
    let endpoint = match map.remove("endpoint") {
        None | Some(Value::Null) => return Ok((Endpoint::ChatCompletions, body.to_vec())),
        Some(Value::String(e)) => {
            let name = e.trim().trim_start_matches('/');
            let name = name.strip_prefix("v1/").unwrap_or(name);
            match name {
                "chat/completions" | "chat_completions" => Endpoint::ChatCompletions,
                "completions" => Endpoint::Completions,
                "embeddings" => Endpoint::Embeddings,
                _ => return Err(bad_endpoint()),
            }
        }
        Some(_) => return Err(bad_endpoint()),
    };
    let body = serde_json::to_vec(&Value::Object(map))
        .map_err(|e| ApiError::internal(format!("re-encoding the body: {e}")))?;
    Ok((endpoint, body))
}

fn bad_endpoint() -> ApiError {
    ApiError::bad_request(
        "`endpoint` must be one of \"chat/completions\", \"completions\", \"embeddings\"",
        Some("endpoint"),
    )
}

/// `?wait=SECONDS`.
#[derive(Debug, Deserialize)]
pub(crate) struct WaitQuery {
    wait: Option<String>,
}

/// `GET /queue/response/{id}`: `queued` (with `position`, `eta`), `running`, or `finished` with `result` (the
/// synchronous route's body) or `error` (its OpenAI error and `status_code`). `?wait=SECONDS` (at most 30)
/// answers as soon as the job finishes.
pub(crate) async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<WaitQuery>,
    headers: HeaderMap,
) -> Response {
    let wait = match query.wait {
        None => Duration::ZERO,
        Some(w) => match w.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s.min(MAX_WAIT_SECS)),
            _ => {
                return ApiError::bad_request(
                    format!("`wait` must be a number of seconds from 0 to {MAX_WAIT_SECS}"),
                    Some("wait"),
                )
                .into_response()
            }
        },
    };
    let caller = auth::job_caller(state.master_key(), &headers);
    match state.router().job(&id, &caller, wait).await {
        Ok(report) => Json(report_json(&report)).into_response(),
        Err(e) => job_error(&state, e).into_response(),
    }
}

/// `DELETE /queue/response/{id}`: cancels a queued job (a running one's result is discarded); answers the
/// job, finished with a `cancelled` error. A finished job: 409.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let caller = auth::job_caller(state.master_key(), &headers);
    match state.router().cancel_job(&id, &caller).await {
        Ok(report) => Json(report_json(&report)).into_response(),
        Err(e) => job_error(&state, e).into_response(),
    }
}

fn job_error(state: &AppState, e: RouterError) -> ApiError {
    crate::routes::edge_error_counted(e, Some(state))
}

/// A job as the API answers it.
fn report_json(report: &JobReport) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(report.id));
    out.insert("object".into(), json!("queue.job"));
    out.insert("model".into(), json!(report.model));
    out.insert("created_at".into(), json!(report.created_ms / 1000));
    out.insert("attempts".into(), json!(report.attempts));
    if let Some(t) = report.started_ms {
        out.insert("started_at".into(), json!(t / 1000));
    }
    if let Some(t) = report.finished_ms {
        out.insert("finished_at".into(), json!(t / 1000));
    }
    match &report.phase {
        JobPhase::Queued { position } => {
            out.insert("status".into(), json!("queued"));
            out.insert("position".into(), json!(position));
            out.insert("eta".into(), json!(report.eta.unwrap_or(0.0)));
        }
        JobPhase::Running => {
            out.insert("status".into(), json!("running"));
        }
        JobPhase::Finished(JobOutcome::Result(result)) => {
            out.insert("status".into(), json!("finished"));
            out.insert("status_code".into(), json!(200));
            out.insert("result".into(), result.clone());
        }
        JobPhase::Finished(JobOutcome::Error { status, body }) => {
            out.insert("status".into(), json!("finished"));
            out.insert("status_code".into(), json!(status));
            out.insert(
                "error".into(),
                body.get("error").cloned().unwrap_or_else(|| body.clone()),
            );
        }
    }
    Value::Object(out)
}
