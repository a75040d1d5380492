//! Lua source of the usage scripts, for Redis and for the router's composite scripts.
//!
//! [`USAGE_FRAGMENT`] defines only `local function`s prefixed `u_` (no top-level code, no KEYS/ARGV
//! access; every key and `now` are parameters), so the router can concatenate it with queue-core's
//! fragment and its own body into one atomic script. Its header documents each function's contract.
//! This crate's own scripts are the fragment followed by a short body, so every test of
//! [`crate::RedisUsage`] exercises the fragment.

/// The usage fragment: `u_parse_candidates`, `u_window_start`, `u_try_reserve`, `u_release`,
/// `u_settle`, `u_renew`, `u_stats` (and private helpers `u_int`, `u_usage`, `u_in_flight`,
/// `u_extend_ttl`, `u_start_window`, `u_blocked_until`, `u_ewma`).
pub const USAGE_FRAGMENT: &str = include_str!("lua/fragment.lua");

/// `reserve_v1`: fragment + body calling `u_try_reserve` ([`crate::UsageOps::reserve`], tests only).
pub(crate) const RESERVE_SCRIPT: &str = concat!(
    include_str!("lua/fragment.lua"),
    include_str!("lua/reserve_v1.lua")
);

/// `settle_v1`: fragment + body calling `u_settle` ([`crate::UsageOps::settle`], tests only).
pub(crate) const SETTLE_SCRIPT: &str = concat!(
    include_str!("lua/fragment.lua"),
    include_str!("lua/settle_v1.lua")
);

/// `renew_v1`: fragment + body calling `u_renew` per lease ([`crate::UsageStore::renew`]).
pub(crate) const RENEW_SCRIPT: &str = concat!(
    include_str!("lua/fragment.lua"),
    include_str!("lua/renew_v1.lua")
);

/// `stats_v1`: fragment + body calling `u_stats` per deployment ([`crate::UsageStore::stats`]).
pub(crate) const STATS_SCRIPT: &str = concat!(
    include_str!("lua/fragment.lua"),
    include_str!("lua/stats_v1.lua")
);
