//! The queue operations every backend provides.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::entry::{EnqueueOptions, Enqueued, Entry, Popped, Priority, Queued, Score};
use crate::QueueError;

/// A priority queue of waiting requests per model group, shared by all replicas that use the same backend.
///
/// Every operation is atomic (one Lua script on Redis, one critical section in memory). An entry is
/// *alive* while its owner's lease has not expired and its deadline (if any) has not passed; dead entries
/// are never returned by [`peek_head`](Self::peek_head) or [`pop_head_if`](Self::pop_head_if) and are
/// removed when they reach the head or by [`reap_expired`](Self::reap_expired).
#[async_trait]
pub trait QueueBackend: fmt::Debug + Send + Sync + 'static {
    /// Adds `entry` to `group` at `priority` and extends its owner's lease to at least now +
    /// `options.owner_lease`. Fails with [`QueueError::QueueFull`] when `options.max_depth` entries wait.
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

    /// `(priority, count)` for each priority with queued entries, best priority first.
    async fn depth_by_priority(&self, group: &str) -> Result<Vec<(Priority, u64)>, QueueError>;
}
