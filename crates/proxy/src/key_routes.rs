//! Virtual keys at the edge: the management routes (`/key/generate`, `/key/info`, `/key/update`,
//! `/key/delete`, `/key/list`) and a key's rules on an inference request ([`admit`]: models, priority,
//! budget, limits) and its settlement ([`settle`]: tokens and spend).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Query, State};
use axum::Json;
use keys::{KeyError, KeyId, KeyRecord, KeySpec, KeyUsage, Permit, Refusal};
use queue_core::Priority;
use router::RouterRequest;
use serde_json::{json, Value};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::key_config;
use crate::state::AppState;

/// Only the master key manages keys; a proxy without one has no key management.
fn require_master(state: &AppState, caller: &Caller) -> Result<(), ApiError> {
    if state.master_key().is_none() {
        return Err(ApiError::forbidden(
            "permission_error",
            "virtual keys need a master key: set general_settings.master_key",
            None,
        ));
    }
    if !caller.identity.is_master() {
        return Err(ApiError::forbidden(
            "permission_error",
            "only the master key may manage keys",
            None,
        ));
    }
    Ok(())
}

pub(crate) fn key_error(state: &AppState, err: KeyError) -> ApiError {
    if err.is_backend() {
        state.metrics().backend_errors().inc();
        ApiError::store_unavailable(err.to_string())
    } else {
        ApiError::bad_request(err.to_string(), err.param())
    }
}

fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(|r| {
        ApiError::bad_request(format!("could not read the body: {}", r.body_text()), None)
    })?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}"), None))
}

/// The record as `/key/info` shows it (never the secret).
fn record_json(record: &KeyRecord, usage: Option<KeyUsage>, now_ms: u64) -> Value {
    json!({
        "token": record.token,
        "key_name": record.key_name,
        "key_alias": record.key_alias,
        "spend": record.current_spend(now_ms),
        "max_budget": record.max_budget,
        "budget_duration": record.budget_duration_secs.map(|s| format!("{s}s")),
        "budget_reset_at": record.budget_reset_at_ms.map(keys::iso8601),
        "expires": record.expires_at_ms.map(keys::iso8601),
        "expired": record.is_expired(now_ms),
        "created_at": keys::iso8601(record.created_at_ms),
        "updated_at": keys::iso8601(record.updated_at_ms),
        "models": record.models,
        "rpm_limit": record.rpm_limit,
        "tpm_limit": record.tpm_limit,
        "max_parallel_requests": record.max_parallel_requests,
        "metadata": record.metadata,
        "priority_floor": record.priority_floor,
        "default_priority": record.default_priority,
        // The key's own deployments by group (their api_keys stay in the store, encrypted).
        "config_models": key_config::groups(record),
        "usage": usage.map(|u| json!({
            "in_flight": u.in_flight,
            "rpm_used": u.rpm_used,
            "tpm_used": u.tpm_used,
            "window_seconds": keys::WINDOW.as_secs(),
        })),
    })
}

/// Checks `models` (each a group the proxy or the key's config serves: a typo would lock the key out) and
/// prepares `config` for the store (see `key_config::prepare`).
async fn check_models(state: &AppState, spec: &mut KeySpec) -> Result<(), ApiError> {
    if let Some(Some(config)) = &spec.config {
        let prepared = key_config::prepare(state, config).await?;
        spec.config = Some(Some(prepared));
    }
    let own = match &spec.config {
        Some(Some(config)) => key_config::groups(&KeyRecord {
            config: Some(config.clone()),
            ..KeyRecord::default()
        }),
        _ => Vec::new(),
    };
    if let Some(models) = &spec.models {
        if let Some(unknown) = models
            .iter()
            .find(|m| *m != "*" && !state.serves(m) && !own.contains(m))
        {
            return Err(ApiError::bad_request(
                format!(
                    "`models` names `{unknown}`, which this proxy does not serve; known models: {}",
                    state.router().model_groups().join(", ")
                ),
                Some("models"),
            ));
        }
    }
    Ok(())
}

/// `POST /key/generate` (master key): a new key; the only answer that ever shows its secret.
pub(crate) async fn generate(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    require_master(&state, &caller)?;
    let body = json_body(body)?;
    let mut spec = KeySpec::parse(&body, false).map_err(|e| key_error(&state, e))?;
    check_models(&state, &mut spec).await?;
    let secret = spec.key.clone().unwrap_or_else(keys::generate_secret);
    if state.master_key().is_some_and(|m| m.matches(&secret)) {
        return Err(ApiError::bad_request(
            "`key` must not be the master key",
            Some("key"),
        ));
    }
    let id = KeyId::of_secret(&secret);
    let now = state.keys().now_ms();
    let mut record = KeyRecord {
        token: Some(id.clone()),
        key_name: keys::key_name(&secret),
        created_at_ms: now,
        ..KeyRecord::default()
    };
    spec.apply(&mut record, now)
        .map_err(|e| key_error(&state, e))?;
    state
        .keys()
        .store()
        .create(&record)
        .await
        .map_err(|e| key_error(&state, e))?;
    tracing::info!(key = %id, key_alias = ?record.key_alias, "key generated");
    let mut answer = record_json(&record, None, now);
    if let Value::Object(map) = &mut answer {
        map.insert("key".into(), Value::String(secret));
        map.insert("ignored_fields".into(), json!(spec.ignored_fields));
        map.remove("usage");
    }
    Ok(Json(answer))
}

/// `GET /key/info?key=...`: the master key about any key; a key about itself (with no `key`, or its own).
pub(crate) async fn info(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let asked = query.get("key").map(|k| KeyId::from_secret_or_id(k));
    let own = match &caller.identity {
        crate::auth::CallerIdentity::Key(id) => Some(id.clone()),
        crate::auth::CallerIdentity::Master => None,
    };
    let id = match (asked, own) {
        (Some(asked), Some(own)) if asked != own => {
            return Err(ApiError::forbidden(
                "permission_error",
                "a key may only ask about itself; the master key may ask about any",
                Some("key"),
            ))
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => {
            require_master(&state, &caller)?;
            return Err(ApiError::bad_request(
                "name the key: /key/info?key=<key or token>",
                Some("key"),
            ));
        }
    };
    if caller.identity.is_master() {
        require_master(&state, &caller)?;
    }
    let store = state.keys().store();
    let record = store
        .get(&id)
        .await
        .map_err(|e| key_error(&state, e))?
        .ok_or_else(|| key_not_found(&id))?;
    let usage = store.usage(&id).await.map_err(|e| key_error(&state, e))?;
    Ok(Json(json!({
        "key": id,
        "info": record_json(&record, Some(usage), state.keys().now_ms()),
    })))
}

fn key_not_found(id: &KeyId) -> ApiError {
    ApiError::not_found(format!("no key with token {id}"), Some("key"))
}

/// `POST /key/update` (master key): `{"key": <key or token>, <fields to change>}`; `null` clears a field.
pub(crate) async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    require_master(&state, &caller)?;
    let body = json_body(body)?;
    let Some(Value::String(key)) = body.get("key") else {
        return Err(ApiError::bad_request(
            "`key` must name the key to update (its secret or its token)",
            Some("key"),
        ));
    };
    let id = KeyId::from_secret_or_id(key);
    let mut spec = KeySpec::parse(&body, true).map_err(|e| key_error(&state, e))?;
    check_models(&state, &mut spec).await?;
    let store = state.keys().store();
    let mut record = store
        .get(&id)
        .await
        .map_err(|e| key_error(&state, e))?
        .ok_or_else(|| key_not_found(&id))?;
    let now = state.keys().now_ms();
    spec.apply(&mut record, now)
        .map_err(|e| key_error(&state, e))?;
    let fields = changed_fields(&spec);
    if !store
        .update(&id, &record, &fields)
        .await
        .map_err(|e| key_error(&state, e))?
    {
        return Err(key_not_found(&id));
    }
    state.keys().forget(&id);
    tracing::info!(key = %id, fields = ?fields, "key updated");
    let mut answer = record_json(&record, None, now);
    if let Value::Object(map) = &mut answer {
        map.insert("key".into(), json!(id));
        map.insert("ignored_fields".into(), json!(spec.ignored_fields));
        map.remove("usage");
    }
    Ok(Json(answer))
}

/// The stored fields a spec changes.
fn changed_fields(spec: &KeySpec) -> Vec<&'static str> {
    let mut fields = vec!["updated_at_ms"];
    let mut add = |set: bool, names: &[&'static str]| {
        if set {
            fields.extend_from_slice(names);
        }
    };
    add(spec.duration_secs.is_some(), &["expires_at_ms"]);
    add(spec.key_alias.is_some(), &["key_alias"]);
    add(spec.models.is_some(), &["models"]);
    add(spec.rpm_limit.is_some(), &["rpm_limit"]);
    add(spec.tpm_limit.is_some(), &["tpm_limit"]);
    add(
        spec.max_parallel_requests.is_some(),
        &["max_parallel_requests"],
    );
    add(spec.max_budget.is_some(), &["max_budget"]);
    add(
        spec.budget_duration_secs.is_some(),
        &["budget_duration_secs", "budget_reset_at_ms"],
    );
    add(spec.metadata.is_some(), &["metadata"]);
    add(spec.priority_floor.is_some(), &["priority_floor"]);
    add(spec.default_priority.is_some(), &["default_priority"]);
    add(spec.config.is_some(), &["config"]);
    fields
}

/// `POST /key/delete` (master key): `{"keys": [<key or token>, ...]}`; answers the tokens deleted.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    require_master(&state, &caller)?;
    let body = json_body(body)?;
    let ids: Vec<KeyId> = match body.get("keys") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|k| match k {
                Value::String(k) if !k.trim().is_empty() => Ok(KeyId::from_secret_or_id(k)),
                _ => Err(()),
            })
            .collect::<Result<_, _>>()
            .map_err(|()| {
                ApiError::bad_request("`keys` must be a list of keys or tokens", Some("keys"))
            })?,
        _ => {
            return Err(ApiError::bad_request(
                "`keys` must be a non-empty list of keys or tokens",
                Some("keys"),
            ))
        }
    };
    let deleted = state
        .keys()
        .store()
        .delete(&ids)
        .await
        .map_err(|e| key_error(&state, e))?;
    for id in &ids {
        state.keys().forget(id);
    }
    tracing::info!(deleted = deleted.len(), "keys deleted");
    Ok(Json(json!({ "deleted_keys": deleted })))
}

/// `GET /key/list` (master key): tokens (`return_full_object=true`: records), paged by `page` and `size`.
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    require_master(&state, &caller)?;
    let number = |name: &'static str, default: usize, max: usize| match query.get(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    format!("`{name}` must be an integer from 1 to {max}"),
                    Some(name),
                )
            }),
    };
    let page = number("page", 1, usize::MAX)?;
    let size = number("size", 100, 1000)?;
    let full = query
        .get("return_full_object")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let store = state.keys().store();
    let ids = store.list().await.map_err(|e| key_error(&state, e))?;
    let total = ids.len();
    let chosen: Vec<KeyId> = ids
        .into_iter()
        .skip((page - 1).saturating_mul(size))
        .take(size)
        .collect();
    let keys: Vec<Value> = if full {
        let now = state.keys().now_ms();
        let mut out = Vec::with_capacity(chosen.len());
        for id in &chosen {
            if let Some(record) = store.get(id).await.map_err(|e| key_error(&state, e))? {
                out.push(record_json(&record, None, now));
            }
        }
        out
    } else {
        chosen.iter().map(|id| json!(id)).collect()
    };
    Ok(Json(json!({
        "keys": keys,
        "total_count": total,
        "current_page": page,
        "total_pages": total.div_ceil(size),
    })))
}

/// A key's rules on an inference request, checked before the router sees it: the model may be called, the
/// priority is not more urgent than the floor (the key's default applies when the body names none), the
/// budget is not spent, and the key's limits have room (a key at its parallel limit waits here, bounded by
/// the request's timeout). Returns the place in the key's limits, held until the request ends.
pub(crate) async fn admit(
    state: &AppState,
    caller: &Caller,
    request: &mut RouterRequest,
) -> Result<Option<Permit>, ApiError> {
    let Some(key) = caller.key.as_ref() else {
        return Ok(None);
    };
    if !key.allows_model(&request.model) && !key_config::groups(key).contains(&request.model) {
        return Err(ApiError::forbidden(
            "key_model_access_denied",
            format!(
                "API Key not allowed to access model. This key can only access models={:?}. Tried to access {}",
                key.models, request.model
            ),
            Some("model"),
        ));
    }
    let floor = key.priority_floor;
    match (request.priority, floor) {
        (Some(asked), Some(floor)) if asked.get() < floor => {
            return Err(ApiError::forbidden(
                "permission_error",
                format!(
                    "priority {} is more urgent than this key's priority_floor {floor} (lower is more urgent)",
                    asked.get()
                ),
                Some("priority"),
            )
            .with_code("priority_not_allowed"));
        }
        (Some(_), _) => {}
        (None, _) => {
            let chosen = key
                .default_priority
                .or_else(|| floor.map(|floor| state.default_priority().max(floor)));
            if let Some(p) = chosen {
                request.priority = Some(Priority::new(p).unwrap_or(Priority::MAX));
            }
        }
    }
    let now = state.keys().now_ms();
    if key.over_budget(now) {
        return Err(ApiError::budget_exceeded(format!(
            "Budget has been exceeded! Key={} Current cost: {}, Max budget: {}",
            key.key_alias.as_deref().unwrap_or(&key.key_name),
            key.current_spend(now),
            key.max_budget.unwrap_or_default()
        )));
    }
    let limits = key.limits();
    if !limits.any() {
        return Ok(None);
    }
    let Some(id) = key.token.as_ref() else {
        return Ok(None);
    };
    let wait = request.timeout.unwrap_or_else(|| state.default_timeout());
    let deadline = tokio::time::Instant::now() + wait;
    match state
        .keys()
        .acquire(id, limits, estimate_tokens(request), deadline)
        .await
    {
        Ok(permit) => {
            // Time spent waiting for the key's slot counts against the request's own timeout.
            if request.timeout.is_some() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                request.timeout = Some(left.max(std::time::Duration::from_millis(1)));
            }
            Ok(Some(permit))
        }
        Err(Refusal::RateLimited {
            retry_after,
            tokens,
        }) => Err(ApiError::key_rate_limited(
            format!(
                "this key is over its {} ({}) in the current minute",
                if tokens { "tpm_limit" } else { "rpm_limit" },
                if tokens { key.tpm_limit } else { key.rpm_limit }.unwrap_or_default()
            ),
            retry_after,
        )),
        Err(Refusal::TimedOut) => Err(ApiError::wait_timeout(format!(
            "the request's timeout ({:.3} s) passed while this key's max_parallel_requests ({}) were all in flight",
            wait.as_secs_f64(),
            key.max_parallel_requests.unwrap_or_default()
        ))),
        Err(Refusal::Store(e)) => Err(key_error(state, e)),
        Err(other) => Err(ApiError::internal(other.to_string())),
    }
}

/// Tokens a request reserves against its key's `tpm_limit` until it settles: its text at four characters
/// a token plus `max_tokens` (or `max_completion_tokens`).
fn estimate_tokens(request: &RouterRequest) -> u64 {
    let text: usize = ["messages", "prompt", "input"]
        .iter()
        .filter_map(|f| request.body.get(*f))
        .map(|v| v.to_string().len())
        .sum();
    let out = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|f| request.body.get(*f).and_then(Value::as_u64))
        .unwrap_or(0);
    (text as u64).div_ceil(4) + out
}

/// Settles an answered request of a key: the tokens the upstream reported against its reservation, and its
/// cost (the deployment's prices times the reported usage) added to the key's spend in the background.
pub(crate) fn settle(
    state: &AppState,
    caller: &Caller,
    permit: Option<&mut Permit>,
    price: Option<(f64, f64)>,
    body: &Value,
) {
    let Some(key) = caller.key.as_ref() else {
        return;
    };
    let usage = body.get("usage");
    let count = |field: &str| usage.and_then(|u| u.get(field)).and_then(Value::as_u64);
    let prompt = count("prompt_tokens").unwrap_or(0);
    let completion = count("completion_tokens").unwrap_or(0);
    if let (Some(permit), Some(total)) = (permit, count("total_tokens")) {
        permit.settle(total);
    }
    let Some((input, output)) = price else {
        return;
    };
    #[allow(clippy::cast_precision_loss)]
    let usd = prompt as f64 * input + completion as f64 * output;
    if usd <= 0.0 {
        return;
    }
    let Some(id) = key.token.clone() else {
        return;
    };
    let alias = key
        .key_alias
        .clone()
        .unwrap_or_else(|| key.key_name.clone());
    state.metrics().key_spent(&alias, usd);
    let keys = state.keys().clone();
    let state = state.clone();
    tokio::spawn(async move {
        let now = keys.now_ms();
        if let Err(error) = keys.store().add_spend(&id, usd, now).await {
            state.metrics().backend_errors().inc();
            tracing::warn!(key = %id, %error, usd, "could not add a request's cost to its key's spend");
        }
        // This replica sees the new spend at its next request.
        keys.forget(&id);
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keys::{KeyId, KeyRecord};
    use router::{Backend, Endpoint, Router, RouterRequest};
    use serde_json::json;

    use super::*;
    use crate::auth::CallerIdentity;
    use crate::config::Config;

    async fn state() -> AppState {
        let config = Config::from_yaml_str(
            "model_list:\n  - model_name: g\n    litellm_params: { model: openai/g, mock_response: hi }\n\
             router_settings: { default_priority: 128 }\ngeneral_settings: { master_key: sk-unit-test-master-1 }\n",
        )
        .unwrap();
        let router = Router::new(config.router.clone(), Backend::Memory)
            .await
            .unwrap();
        AppState::new(router, &config)
    }

    fn caller(floor: Option<u32>, default: Option<u32>) -> Caller {
        let id = KeyId::of_secret("sk-unit-test-key-000");
        Caller {
            identity: CallerIdentity::Key(id.clone()),
            key: Some(Arc::new(KeyRecord {
                token: Some(id),
                priority_floor: floor,
                default_priority: default,
                ..KeyRecord::default()
            })),
            overrides_allowed: false,
        }
    }

    async fn priority_after(caller: &Caller, asked: Option<u32>) -> Result<Option<u32>, ApiError> {
        let state = state().await;
        let mut body = json!({"model": "g", "messages": [{"role": "user", "content": "hi"}]});
        if let Some(p) = asked {
            body["priority"] = json!(p);
        }
        let mut request = RouterRequest::from_json(Endpoint::ChatCompletions, body).unwrap();
        request.priority = asked.map(|p| Priority::new(p).unwrap());
        admit(&state, caller, &mut request).await?;
        Ok(request.priority.map(Priority::get))
    }

    #[tokio::test]
    async fn a_request_without_priority_gets_the_keys_default_or_the_floor() {
        assert_eq!(
            priority_after(&caller(None, Some(200)), None)
                .await
                .unwrap(),
            Some(200)
        );
        assert_eq!(
            priority_after(&caller(Some(50), None), None).await.unwrap(),
            Some(128)
        );
        assert_eq!(
            priority_after(&caller(Some(300), None), None)
                .await
                .unwrap(),
            Some(300)
        );
        assert_eq!(
            priority_after(&caller(None, None), None).await.unwrap(),
            None
        );
        assert_eq!(
            priority_after(&caller(Some(50), Some(60)), Some(50))
                .await
                .unwrap(),
            Some(50)
        );
        let err = priority_after(&caller(Some(50), None), Some(0))
            .await
            .unwrap_err();
        assert_eq!(
            (err.status().as_u16(), err.param()),
            (403, Some("priority"))
        );
    }

    #[test]
    fn token_estimates_count_text_and_max_tokens() {
        let body = json!({"model": "g", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 100});
        let request = RouterRequest::from_json(Endpoint::ChatCompletions, body).unwrap();
        let est = estimate_tokens(&request);
        assert!((110..130).contains(&est), "{est}");
    }
}
