//! The request check against the master key: where clients present it, the middleware that refuses them, and
//! what an authenticated caller may do ([`Caller`]).

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;

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

/// What an authenticated caller may do beyond calling models, put in the request's extensions by
/// [`require_master_key`]. Today every caller holds the master key (or the proxy is open), so this comes from
/// the proxy-wide settings; a caller's own key is where per-key permissions will come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Caller {
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

/// Middleware for the routes that need the master key; marks the request with its [`Caller`].
pub(crate) async fn require_master_key(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(state.master_key(), request.headers())?;
    request.extensions_mut().insert(Caller {
        overrides_allowed: state.allow_client_side_overrides(),
    });
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
