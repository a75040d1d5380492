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
//! - `store`: the [`UsageStore`] trait.
//! - `redis_store`: [`RedisUsage`], scripts in `src/lua/*.lua`.
//! - `memory`: [`MemoryUsage`] over `state`'s [`UsageState`], the synchronous mirror of the scripts.
//! - [`lua`]: [`lua::USAGE_FRAGMENT`], the Lua functions the router composes into its admission scripts.
//! - `cooldown`: the LiteLLM cooldown policy, [`cooldown_decision`].
//! - `tokens`: token estimates ([`TokenEstimator`], [`TokenCounter`]).
//! - `settings`, `error`: [`UsageSettings`], [`UsageError`].
//!
//! ```no_run
//! use std::time::Duration;
//! use usage_tracker::{
//!     Candidate, DeploymentRef, Limits, MemoryUsage, Outcome, ReserveOutcome, ReserveRequest,
//!     UsageSettings, UsageStore,
//! };
//!
//! # async fn demo() -> Result<(), usage_tracker::UsageError> {
//! let store = MemoryUsage::new(&UsageSettings::default())?;
//! let candidates = [Candidate {
//!     deployment: DeploymentRef::new("gpt-4o", "a1"),
//!     limits: Limits { rpm: Some(60), tpm: Some(100_000), ..Limits::default() },
//! }];
//! let request = ReserveRequest::new(1_200, 1_000, Duration::from_secs(60));
//! match store.reserve(&candidates, &request).await? {
//!     ReserveOutcome::Reserved(reservation) => {
//!         // ... call the deployment, then settle with the usage it reported.
//!         let report = store.settle(&reservation, Some(1_150), Outcome::Success, None).await?;
//!         assert_eq!(report.failures_in_window, 0);
//!     }
//!     ReserveOutcome::Unavailable { retry_in } => println!("full; retry in {retry_in:?}"),
//! }
//! # Ok(()) }
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
pub use error::{BackendErrorKind, UsageError};
pub use memory::MemoryUsage;
pub use redis_store::RedisUsage;
pub use settings::UsageSettings;
pub use state::{UsageSnapshot, UsageState, WindowSnapshot};
pub use store::UsageStore;
pub use tokens::{
    count_prompt, preload_tokenizers, prompt_tokens, text_len, TokenCounter, TokenEstimate,
    TokenEstimator, BPE_BUDGET_BYTES, CHARS_PER_TOKEN, DEFAULT_COMPLETION_TOKENS, IMAGE_TOKENS,
    MAX_ESTIMATE, MAX_RUN_BYTES, REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE, TOKENS_PER_NAME,
};
pub use types::{
    Candidate, CandidateOrder, DeploymentRef, DeploymentStats, FailureKind, LatencySample, Limits,
    Outcome, Reservation, ReserveOutcome, ReserveRequest, SettleReport,
};
