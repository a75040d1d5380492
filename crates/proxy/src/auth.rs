//! The master key: parsing, the refusal of publicly known keys, the request check (constant time), and what
//! an authenticated caller may do ([`Caller`]).

use std::fmt;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// Master keys that appear in public docs and examples; a proxy using one is open to anybody who read them.
const PUBLICLY_KNOWN_KEYS: &[&str] = &[
    "sk-1234",
    "sk-12345",
    "sk-123456",
    "sk-1234567890",
    "sk-admin",
    "sk-master",
    "sk-master-key",
    "sk-test",
    "sk-secret",
    "sk-litellm",
    "changeme",
    "change-me",
    "password",
    "secret",
    "admin",
    "master",
    "test",
];

/// The proxy's master key (`general_settings.master_key`). `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct MasterKey(String);

impl MasterKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// Whether the key is empty or blank.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// Whether the key is one of the handful that documentation and examples use.
    pub fn is_publicly_known(&self) -> bool {
        let key = self.0.trim();
        PUBLICLY_KNOWN_KEYS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(key))
    }

    /// Whether `candidate` is this key; the comparison takes the same time wherever the first difference is.
    pub fn matches(&self, candidate: &str) -> bool {
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }

    /// A form safe to print: the first three and last four characters of long keys, else `***`.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

/// A printable form of a secret: `sk-…wxyz` for secrets of 12 characters or more, else `***`.
pub(crate) fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "***".to_owned();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

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

    #[test]
    fn known_keys_are_recognised_and_never_printed() {
        assert!(MasterKey::new("sk-1234").is_publicly_known());
        assert!(MasterKey::new("ChangeMe").is_publicly_known());
        assert!(!MasterKey::new("sk-local-dev-key").is_publicly_known());
        let key = MasterKey::new("sk-a-long-secret-value");
        assert_eq!(format!("{key:?}"), "MasterKey(***)");
        assert_eq!(key.masked(), "sk-…alue");
        assert_eq!(mask("short"), "***");
    }
}
