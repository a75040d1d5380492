//! Per-deployment usage: RPM/TPM windows, in-flight leases, cooldowns and health statistics.
//!
//! Many proxy replicas share one Redis; the limits of each deployment (requests and tokens per fixed
//! window, requests in flight) hold exactly across all of them, because every check-and-reserve is one Lua
//! script timed by Redis `TIME`. A single instance runs on the in-memory store with the same semantics.
//!
//! Layout:
//! - `types`: [`DeploymentRef`], [`Limits`], [`Candidate`], [`ReserveRequest`], [`Reservation`],
//!   [`ReserveOutcome`], [`Outcome`], [`FailureKind`], [`LatencySample`], [`SettleReport`],
//!   [`DeploymentStats`].
//! - `store`: [`UsageStore`] (what the request path needs besides the admission step: renew, cooldown,
//!   stats) and [`UsageOps`] (reserve, settle, cooled_down one call at a time: the test-support surface).
//! - `redis_store`: [`RedisUsage`], scripts in `src/lua/*.lua`.
//! - `memory`: [`MemoryUsage`] over `state`'s [`UsageState`], the synchronous mirror of the scripts.
//! - [`lua`]: [`lua::USAGE_FRAGMENT`], the Lua functions the router composes into its admission scripts.
//! - `cooldown`: the LiteLLM cooldown policy, [`cooldown_decision`].
//! - `tokens`: token estimates ([`TokenEstimator`], [`TokenCounter`]).
//! - `settings`, `error`: [`UsageSettings`], [`UsageError`] (store failures inside it are
//!   `store::BackendError`s).
//!
//! The connection, pool, key names and clock come from the `store` crate, shared with queue-core.
//!
//! # Scripts and who uses them
//! The request path reserves and settles capacity only through admission's composite step (`admit_v2.lua`,
//! which embeds [`lua::USAGE_FRAGMENT`]; [`UsageState`] in the memory twin). This crate's own scripts are
//! the fragment followed by a short body in `src/lua/`:
//!
//! | script | method | used by |
//! |---|---|---|
//! | `renew_v1` | [`UsageStore::renew`] | the router's lease renewer of requests in flight |
//! | `stats_v1` | [`UsageStore::stats`] | the router (health, latency-based routing) |
//! | (SET/DEL, no script) | [`UsageStore::cooldown`] | the router, after a failure |
//! | `reserve_v1` | [`UsageOps::reserve`] | tests |
//! | `settle_v1` | [`UsageOps::settle`] | tests |
//! | (PTTL pipeline) | [`UsageOps::cooled_down`] | tests |
//!
//! [`UsageOps`] is kept for tests: the shared bodies of `tests/usage.rs` run each call on Redis (the
//! fragment) and in memory ([`UsageState`]), so the exactness of rpm/tpm/parallel limits is checked on both
//! twins call by call; `tests/redis.rs` composes the fragment into a foreign script directly.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use usage_tracker::{DeploymentRef, MemoryUsage, UsageSettings, UsageStore};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let store: Arc<dyn UsageStore> = Arc::new(MemoryUsage::new(&UsageSettings::default())?);
//! let a1 = DeploymentRef::new("gpt-4o", "a1");
//! // After a failure the router's cooldown policy puts the deployment aside; every replica sees it.
//! store.cooldown(&a1, Duration::from_secs(5), "RateLimited").await?;
//! let stats = store.stats("gpt-4o", &[Arc::clone(&a1.id)]).await?;
//! assert!(stats[0].cooldown_remaining.is_some());
//! assert_eq!(stats[0].in_flight, 0);
//! # Ok::<(), usage_tracker::UsageError>(())
//! # }).unwrap();
//! ```

mod cooldown;
mod error;
pub mod lua;
mod memory;
mod redis_store;
mod settings;
mod state;
mod store;
mod tokens;
mod types;

pub use cooldown::{
    cooldown_decision, AllowedFailsPolicy, CooldownPolicy, FailureContext, FAILURE_RATE_THRESHOLD,
    MIN_REQUESTS_FOR_FAILURE_RATE,
};
pub use error::UsageError;
pub use memory::MemoryUsage;
pub use redis_store::RedisUsage;
pub use settings::UsageSettings;
pub use state::{RollingSnapshot, UsageSnapshot, UsageState, WindowSnapshot};
pub use store::{UsageOps, UsageStore};
pub use tokens::{
    count_prompt, preload_tokenizers, prompt_tokens, text_len, TokenCounter, TokenEstimate,
    TokenEstimator, BPE_BUDGET_BYTES, CHARS_PER_TOKEN, DEFAULT_COMPLETION_TOKENS, IMAGE_TOKENS,
    MAX_ESTIMATE, MAX_RUN_BYTES, REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE, TOKENS_PER_NAME,
};
pub use types::{
    Candidate, CandidateOrder, DeploymentRef, DeploymentStats, FailureKind, LatencySample, Limits,
    Outcome, Reservation, ReserveOutcome, ReserveRequest, SettleReport,
};
