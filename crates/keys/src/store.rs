//! [`KeyStore`]: where key records, their limits and their spend live (Redis or memory, the same semantics).

use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::KeyError;
use crate::record::{KeyId, KeyLimits, KeyRecord};

/// One request's claim on its key's limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// Unique per request (the parallel slot's name).
    pub request_id: String,
    /// Tokens reserved against `tpm_limit` until the request settles.
    pub estimated_tokens: u64,
    /// The key's limits.
    pub limits: KeyLimits,
    /// How long the parallel slot lives without renewal (a crashed replica's slots come back after it).
    pub lease_ms: u64,
}

/// The answer to a [`Reservation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reserve {
    /// Granted in the window starting at `window_ms`.
    Granted {
        /// Start of the rate window the request counts in.
        window_ms: u64,
    },
    /// Over `rpm_limit` (or `tpm_limit` when `tokens`) until the window rolls.
    RateLimited {
        /// Milliseconds until the next window.
        retry_after_ms: u64,
        /// The token limit refused it (else the request limit).
        tokens: bool,
    },
    /// Every parallel slot is taken: wait for one to free.
    Busy,
}

/// The end of a granted request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release {
    /// The reservation's request id.
    pub request_id: String,
    /// The reservation's window.
    pub window_ms: u64,
    /// The request never reached an upstream (the model group refused it): its rpm and tpm come back.
    pub give_back: bool,
    /// The tokens it reserved.
    pub estimated_tokens: u64,
    /// The tokens the upstream reported, when it did.
    pub actual_tokens: Option<u64>,
}

/// A key's usage in the current window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// Requests in flight (all replicas).
    pub in_flight: u64,
    /// Requests admitted in the current window.
    pub rpm_used: u64,
    /// Tokens reserved or settled in the current window.
    pub tpm_used: u64,
}

/// Key records and their limits. Every change is one atomic step on the key's own slot.
#[async_trait]
pub trait KeyStore: Send + Sync + Debug {
    /// Stores a new record (its `token` set); [`KeyError::Exists`] when the id is taken.
    async fn create(&self, record: &KeyRecord) -> Result<(), KeyError>;

    /// The record of `id` with its current spend, if it exists.
    async fn get(&self, id: &KeyId) -> Result<Option<KeyRecord>, KeyError>;

    /// Writes the named fields of `record` (the rest stay as stored); `false` when the key does not exist.
    async fn update(
        &self,
        id: &KeyId,
        record: &KeyRecord,
        fields: &[&str],
    ) -> Result<bool, KeyError>;

    /// Deletes the keys that exist; returns those.
    async fn delete(&self, ids: &[KeyId]) -> Result<Vec<KeyId>, KeyError>;

    /// Every key id, sorted.
    async fn list(&self) -> Result<Vec<KeyId>, KeyError>;

    /// Takes a place in the key's limits (one atomic step).
    async fn reserve(&self, id: &KeyId, reservation: &Reservation) -> Result<Reserve, KeyError>;

    /// Ends a granted request (one atomic step).
    async fn release(&self, id: &KeyId, release: &Release) -> Result<(), KeyError>;

    /// Keeps a running request's parallel slot for another `lease_ms`.
    async fn renew(&self, id: &KeyId, request_id: &str, lease_ms: u64) -> Result<(), KeyError>;

    /// Adds `usd` to the key's spend (a new budget period first when the last one ended).
    async fn add_spend(&self, id: &KeyId, usd: f64, now_ms: u64) -> Result<(), KeyError>;

    /// Usage in the current window.
    async fn usage(&self, id: &KeyId) -> Result<KeyUsage, KeyError>;
}

/// The stored fields [`KeyStore::update`] may name.
pub const UPDATABLE_FIELDS: &[&str] = &[
    "key_alias",
    "models",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "max_budget",
    "budget_duration_secs",
    "budget_reset_at_ms",
    "expires_at_ms",
    "metadata",
    "priority_floor",
    "default_priority",
    "config",
    "updated_at_ms",
];
