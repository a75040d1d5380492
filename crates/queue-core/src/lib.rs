//! The shared priority queue of waiting requests, one per model group.
//!
//! Many proxy replicas share one queue per model group in Redis (a sorted set scored
//! `priority * 2^32 + sequence`: strict priority, FIFO within a priority), changed only by atomic Lua
//! scripts. A single instance without Redis uses the in-memory twin with the same semantics. Waiting
//! entries are kept alive by their owner replica's lease, renewed with one call per (owner, group).
//!
//! # Layout
//! - `backend`: [`QueueBackend`] (what the request path reads: depths) and [`QueueOps`] (every operation
//!   on its own: the test-support surface, see below).
//! - `redis_queue`: [`RedisQueue`] (one Lua script per operation over the replica's kept connection) and
//!   its [`RedisQueueSettings`].
//! - `memory`: [`MemoryQueue`], a [`QueueState`] behind a mutex.
//! - `state`: [`QueueState`], the synchronous in-memory state admission's memory twin composes with usage
//!   state.
//! - [`lua`]: [`lua::QUEUE_FRAGMENT`], the Lua functions composite admission scripts are built from.
//! - `entry`: [`Priority`], [`Score`], [`Entry`] (the member encoding) and operation results.
//! - `error`: [`QueueError`] (store failures inside it are `store::BackendError`s).
//!
//! The connection, pool, key names and clock come from the `store` crate, shared with usage-tracker.
//!
//! # Scripts and who uses them
//! The request path changes the queue only through admission's composite step (`admit_v2.lua`, which
//! embeds [`lua::QUEUE_FRAGMENT`]). This crate's own scripts are the fragment followed by a short body in
//! `src/lua/`:
//!
//! | script | method | used by |
//! |---|---|---|
//! | `depth_by_priority_v1` | [`QueueBackend::depth_by_priority`] | the router (`/queue/status`, metrics) |
//! | `enqueue_v1` | [`QueueOps::enqueue`] | tests, `benches/queue.rs`, the proxy's `queue_fill` bench helper |
//! | `pop_head_if_v1` | [`QueueOps::pop_head_if`] | tests, `benches/queue.rs` |
//! | `renew_lease_v1`, `expire_owner_v1`, `depth_v1` | [`QueueOps::renew_lease`], [`QueueOps::expire_owner`], [`QueueOps::depth`] | tests, `queue_fill` |
//! | `cancel_v1`, `position_v1`, `peek_v1`, `reap_v1` | [`QueueOps::cancel`], [`QueueOps::position`], [`QueueOps::peek_head`], [`QueueOps::reap_expired`] | tests |
//!
//! [`QueueOps`] is kept for tests: each operation run on Redis exercises the fragment's functions, and the
//! same call on [`MemoryQueue`] runs [`QueueState`], so `tests/queue/equivalence.rs` (random operation
//! sequences on both) and the shared test bodies check the fragment against its twin one operation at a
//! time; `tests/queue/fragment.rs` calls the fragment's functions directly.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use queue_core::{EnqueueOptions, Entry, EntryMeta, MemoryQueue, Priority, QueueOps, Score};
//! use store::Clock;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let queue: Arc<dyn QueueOps> = Arc::new(MemoryQueue::new(Clock::new()));
//! let options = EnqueueOptions::default();
//! let later = Entry::new(uuid::Uuid::new_v4(), "replica-a", EntryMeta::default())?;
//! let urgent = Entry::new(uuid::Uuid::new_v4(), "replica-b", EntryMeta::default())?;
//! queue.enqueue("gpt-4o", Priority::new(5)?, &later, options).await?;
//! let queued = queue.enqueue("gpt-4o", Priority::new(0)?, &urgent, options).await?;
//! assert_eq!(queued.position, 0);
//! assert_eq!(queue.depth_by_priority("gpt-4o").await?, vec![(Priority::new(0)?, 1), (Priority::new(5)?, 1)]);
//! let popped = queue.pop_head_if("gpt-4o", Score::MAX).await?;
//! assert_eq!(popped.head.map(|q| q.entry), Some(urgent));
//! # Ok::<(), queue_core::QueueError>(())
//! # });
//! ```

mod backend;
mod entry;
mod error;
pub mod lua;
mod memory;
mod redis_queue;
mod state;

pub use backend::{QueueBackend, QueueOps};
pub use entry::{
    validate_owner, EnqueueOptions, Enqueued, Entry, EntryMeta, Grant, Popped, Priority, Queued,
    Score, JOB_OWNER,
};
pub use error::QueueError;
pub use memory::MemoryQueue;
pub use redis_queue::{RedisQueue, RedisQueueSettings};
pub use state::{QueueSnapshot, QueueState};
