//! The request check: where clients present their key, the middleware that accepts the master key or a live
//! virtual key and refuses the rest, and who the caller is ([`Caller`], [`CallerIdentity`]).

use std::fmt;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;

use keys::{KeyId, KeyRecord};

use crate::error::ApiError;
use crate::master_key::MasterKey;
use crate::state::AppState;

/// The key a client presented: `Authorization: Bearer <key>`, `x-api-key` or Azure's `api-key`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        let key = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => value,
        };
        if !key.is_empty() {
            return Some(key);
        }
    }
    ["x-api-key", "api-key"].iter().find_map(|name| {
        headers
            .get(*name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
    })
}

/// Checks the request's key against `master_key`; no master key configured means the proxy is open.
pub(crate) fn check(master_key: Option<&MasterKey>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(master_key) = master_key else {
        return Ok(());
    };
    match presented_key(headers) {
        None => Err(ApiError::unauthorized(
            "missing API key: send it as `Authorization: Bearer <key>` (or in the `x-api-key` header)",
        )),
        Some(key) if master_key.matches(key) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("invalid API key")),
    }
}

/// Who is calling: the master key (or anybody, on a proxy without one) or a virtual key, named by its id
/// (the SHA-256 of its secret, never the secret). Owners of durable jobs and per-key views compare these.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CallerIdentity {
    /// The master key, or any caller when no master key is configured.
    Master,
    /// A virtual key.
    Key(KeyId),
}

impl CallerIdentity {
    /// Whether the caller may manage keys and see everybody's work.
    pub fn is_master(&self) -> bool {
        matches!(self, Self::Master)
    }
}

impl fmt::Display for CallerIdentity {
    /// `master` or `key:<id>`: a stable text form to store beside what the caller owns.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Master => f.write_str("master"),
            Self::Key(id) => write!(f, "key:{id}"),
        }
    }
}

/// An authenticated caller, put in the request's extensions by [`require_auth`].
#[derive(Clone, Debug)]
pub struct Caller {
    /// Who it is.
    pub identity: CallerIdentity,
    /// The virtual key's record (as read at most `keys::CACHE_TTL` ago), for a key caller.
    pub key: Option<Arc<KeyRecord>>,
    /// May override routing from the body ([`router::OVERRIDE_FIELDS`]):
    /// `general_settings.allow_client_side_overrides`.
    pub(crate) overrides_allowed: bool,
}

/// Who owns and may see a durable job: the SHA-256 (hex) of the key the request presented, never the key
/// (`anonymous` without one); the master key sees every job. Built on the presented key so that virtual keys
/// plug in: a job belongs to the key that created it.
pub(crate) fn job_caller(master_key: Option<&MasterKey>, headers: &HeaderMap) -> router::JobCaller {
    let key = presented_key(headers);
    let identity = key.map_or_else(
        || "anonymous".to_owned(),
        |key| {
            let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
            digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
        },
    );
    let admin = match (master_key, key) {
        (Some(master), Some(key)) => master.matches(key),
        _ => false,
    };
    router::JobCaller { identity, admin }
}

impl Caller {
    fn master(overrides_allowed: bool) -> Self {
        Self {
            identity: CallerIdentity::Master,
            key: None,
            overrides_allowed,
        }
    }
}

/// Who presented `headers`: the master key, a live virtual key, or a 401 (missing, wrong, expired or
/// deleted key); 503 when the key store does not answer. A proxy without a master key is open: every caller
/// counts as the master.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Caller, ApiError> {
    let overrides = state.allow_client_side_overrides();
    let Some(master_key) = state.master_key() else {
        return Ok(Caller::master(overrides));
    };
    let Some(presented) = presented_key(headers) else {
        return Err(ApiError::unauthorized(
            "missing API key: send it as `Authorization: Bearer <key>` (or in the `x-api-key` header)",
        ));
    };
    if master_key.matches(presented) {
        return Ok(Caller::master(overrides));
    }
    let record = state.keys().lookup(presented).await.map_err(|e| {
        state.metrics().backend_errors().inc();
        ApiError::store_unavailable(format!("cannot check the API key: {e}"))
    })?;
    let Some(record) = record else {
        return Err(ApiError::unauthorized("invalid API key"));
    };
    if record.is_expired(state.keys().now_ms()) {
        return Err(ApiError::expired_key());
    }
    let Some(id) = record.token.clone() else {
        return Err(ApiError::unauthorized("invalid API key"));
    };
    Ok(Caller {
        identity: CallerIdentity::Key(id),
        key: Some(record),
        overrides_allowed: overrides,
    })
}

/// Middleware of the authenticated routes: the master key or a live virtual key; marks the request with its
/// [`Caller`].
pub(crate) async fn require_auth(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, request.headers()).await?;
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn the_key_is_accepted_in_every_usual_header() {
        let key = MasterKey::new("sk-right-key-0001");
        for h in [
            headers("authorization", "Bearer sk-right-key-0001"),
            headers("authorization", "bearer  sk-right-key-0001 "),
            headers("x-api-key", "sk-right-key-0001"),
            headers("api-key", "sk-right-key-0001"),
        ] {
            assert!(check(Some(&key), &h).is_ok(), "{h:?}");
        }
    }

    #[test]
    fn wrong_or_missing_keys_are_refused() {
        let key = MasterKey::new("sk-right-key-0001");
        for h in [
            HeaderMap::new(),
            headers("authorization", "Bearer sk-right-key-0002"),
            headers("authorization", "Bearer sk-right-key-000"),
            headers("authorization", "Bearer "),
            headers("x-api-key", "nope"),
        ] {
            let err = check(Some(&key), &h).unwrap_err();
            assert_eq!(err.status().as_u16(), 401, "{h:?}");
        }
        assert!(check(None, &HeaderMap::new()).is_ok());
    }
}
