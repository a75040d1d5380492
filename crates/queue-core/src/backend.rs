//! What the request path reads from the queues ([`QueueBackend`]) and each operation on its own, for
//! tests and benches ([`QueueOps`]).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::entry::{EnqueueOptions, Enqueued, Entry, Popped, Priority, Queued, Score};
use crate::QueueError;

/// What the request path reads from the queues of every replica: the depth of each group by priority
/// (`/queue/status`, metrics). Changes go through admission's composite step only.
///
/// Implemented by [`crate::RedisQueue`] (`depth_by_priority_v1.lua`) and [`crate::MemoryQueue`]; the
/// router holds an `Arc<dyn QueueBackend>`. Every operation of the queue on its own is [`QueueOps`].
#[async_trait]
pub trait QueueBackend: fmt::Debug + Send + Sync + 'static {
    /// `(priority, count)` for each priority with queued entries, best priority first.
    async fn depth_by_priority(&self, group: &str) -> Result<Vec<(Priority, u64)>, QueueError>;
}

/// Each queue operation on its own, one atomic step apiece (one Lua script on Redis, one critical section
/// in memory): the **test-support surface** of the queue.
///
/// The request path never calls these: admission changes the queue only inside its composite step (this
/// crate's fragment inside `admit_v2.lua`, [`crate::QueueState`] inside the memory twin). They exist so the
/// fragment's functions are checked one by one against the memory twin (`tests/queue/equivalence.rs` and
/// the shared test bodies run on both backends), for the criterion bench (`benches/queue.rs`) and for the
/// bench helper that fills a queue (`crates/proxy/examples/queue_fill.rs`). Each Redis implementation is one
/// `src/lua/*_v1.lua` script (see the crate docs).
///
/// An entry is *alive* while its owner's lease has not expired and its deadline (if any) has not passed;
/// dead entries are never returned by [`peek_head`](Self::peek_head) or [`pop_head_if`](Self::pop_head_if)
/// and are removed when they reach the head or by [`reap_expired`](Self::reap_expired).
#[async_trait]
pub trait QueueOps: QueueBackend {
    /// Adds `entry` to `group` at `priority` and extends its owner's lease to at least now +
    /// `options.liveness`. Fails with [`QueueError::QueueFull`] when `options.max_depth` entries wait.
    async fn enqueue(
        &self,
        group: &str,
        priority: Priority,
        entry: &Entry,
        options: EnqueueOptions,
    ) -> Result<Enqueued, QueueError>;

    /// Removes `entry`; true if it was still queued.
    async fn cancel(&self, group: &str, entry: &Entry) -> Result<bool, QueueError>;

    /// 0-based rank of `entry` (entries ahead of it, dead ones not yet reaped included), `None` if not queued.
    async fn position(&self, group: &str, entry: &Entry) -> Result<Option<u64>, QueueError>;

    /// The first `n` live entries in queue order, without removing anything.
    async fn peek_head(&self, group: &str, n: usize) -> Result<Vec<Queued>, QueueError>;

    /// Pops the first live entry if its score is `<= max_score`; dead entries met at the head on the way
    /// are removed and reported in [`Popped::reaped`].
    async fn pop_head_if(&self, group: &str, max_score: Score) -> Result<Popped, QueueError>;

    /// Sets `owner`'s lease in `group` to now + `lease`, keeping all its entries there alive. One call per
    /// (owner, group), whatever the number of entries.
    async fn renew_lease(
        &self,
        group: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(), QueueError>;

    /// Ends `owner`'s lease in `group` at once (shutdown): its entries are dead from now on.
    async fn expire_owner(&self, group: &str, owner: &str) -> Result<(), QueueError>;

    /// Removes every dead entry of `group` and returns them in queue order.
    async fn reap_expired(&self, group: &str) -> Result<Vec<Queued>, QueueError>;

    /// Number of queued entries (dead ones not yet reaped included).
    async fn depth(&self, group: &str) -> Result<u64, QueueError>;
}
