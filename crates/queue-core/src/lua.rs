//! Lua sources: the queue fragment for composite scripts, and the queue's own scripts built from it.
//!
//! [`QUEUE_FRAGMENT`] only defines `local function`s named `q_*` (no top-level code, no `KEYS`/`ARGV`
//! access; every key is a parameter), so the router can concatenate it with other fragments and its own
//! body into one admission script. Composite scripts compute `now` once with [`NOW_MS`].
//!
//! | function | contract |
//! |---|---|
//! | `q_num(x)` | formats an integral number exactly (no exponent), for passing scores to Redis |
//! | `q_score(priority, seq)` | `priority * 2^32 + seq`, the twin of [`crate::Score::new`] |
//! | `q_decode(member)` | `{id=, owner=, est=, prompt=, deadline=}` (numbers as numbers), or nil if malformed |
//! | `q_owner_alive(k_owners, owner, now, cache)` | true while the owner's lease expiry >= now (`cache` optional); always for `~jobs` (`JOB_OWNER`) |
//! | `q_live(k_owners, e, now, cache)` | decoded entry well formed, deadline not passed, owner alive; a job's entry always |
//! | `q_enqueue(k_q, k_seq, member, priority, max_depth)` | `score, rank` (0-based), or `false, depth` when depth >= max_depth (0 = unbounded) |
//! | `q_better_waiting(k_q, priority)` | true if any entry with score < (priority+1)*2^32 exists |
//! | `q_head(k_q, k_owners, now, removed[, removed_scores])` | `member, score` of the first live entry, or nil; ZREMs dead head entries, appending their members to `removed` (and scores to `removed_scores`) |
//! | `q_remove(k_q, member)` | 1 if removed, else 0 |
//! | `q_heartbeat(k_owners, owner, expiry_ms)` | sets the owner's lease expiry |
//! | `q_touch_owner(k_owners, owner, expiry_ms)` | like `q_heartbeat`, never shortens (ZADD GT) |
//! | `q_record_grant(k_grants, member, payload)` | HSET the grant |
//! | `q_take_grants(k_grants, owner)` | flat `{member, payload, ...}` of the owner's grants, deleted from the hash |
//! | `q_take_grant(k_grants, member)` | payload (deleted) or false |
//! | `q_reap(k_q, k_owners, now, removed[, removed_scores])` | removes every dead entry (queue order), then expired owners |
//!
//! Keys are those of [`store::GroupKeys`]: `k_q` = `queue`, `k_seq` = `seq`, `k_owners` = `owners`,
//! `k_grants` = `grants`. Priorities and scores may be passed as numbers or numeric strings.

use std::sync::LazyLock;

use redis::Script;

/// The queue fragment (see the module docs for its functions).
pub const QUEUE_FRAGMENT: &str = include_str!("lua/fragment.lua");

/// The line composite scripts start with: `now` = Redis `TIME` in epoch milliseconds.
pub const NOW_MS: &str =
    "local t = redis.call('TIME'); local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// The queue's own scripts, each [`QUEUE_FRAGMENT`] + a body from `src/lua/`: `depth_by_priority` serves
/// [`crate::QueueBackend`], the others [`crate::QueueOps`] (see the crate docs for who uses which).
pub(crate) struct Scripts {
    pub(crate) enqueue: Script,
    pub(crate) cancel: Script,
    pub(crate) position: Script,
    pub(crate) peek: Script,
    pub(crate) pop_head_if: Script,
    pub(crate) renew_lease: Script,
    pub(crate) expire_owner: Script,
    pub(crate) reap: Script,
    pub(crate) depth: Script,
    pub(crate) depth_by_priority: Script,
}

fn compose(body: &str) -> Script {
    Script::new(&format!("{QUEUE_FRAGMENT}\n{body}"))
}

pub(crate) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: compose(include_str!("lua/enqueue_v1.lua")),
    cancel: compose(include_str!("lua/cancel_v1.lua")),
    position: compose(include_str!("lua/position_v1.lua")),
    peek: compose(include_str!("lua/peek_v1.lua")),
    pop_head_if: compose(include_str!("lua/pop_head_if_v1.lua")),
    renew_lease: compose(include_str!("lua/renew_lease_v1.lua")),
    expire_owner: compose(include_str!("lua/expire_owner_v1.lua")),
    reap: compose(include_str!("lua/reap_v1.lua")),
    depth: compose(include_str!("lua/depth_v1.lua")),
    depth_by_priority: compose(include_str!("lua/depth_by_priority_v1.lua")),
});
