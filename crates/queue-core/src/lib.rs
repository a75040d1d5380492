//! The shared priority queue of waiting requests, one per model group.
//!
//! Many proxy replicas share one queue per model group in Redis (a sorted set scored
//! `priority * 2^32 + sequence`: strict priority, FIFO within a priority), changed only by atomic Lua
//! scripts. A single instance without Redis uses the in-memory twin with the same semantics. Waiting
//! entries are kept alive by their owner replica's lease, renewed with one call per (owner, group).
//!
//! # Layout
//! - `backend`: the [`QueueBackend`] trait.
//! - `redis_queue`: [`RedisQueue`] (deadpool-redis pool, one Lua script per operation) and its config.
//! - `memory`: [`MemoryQueue`], a [`QueueState`] behind a mutex.
//! - `state`: [`QueueState`], the synchronous in-memory state the router composes with usage state.
//! - [`lua`]: [`lua::QUEUE_FRAGMENT`], the Lua functions composite admission scripts are built from.
//! - `entry`: [`Priority`], [`Score`], [`Entry`] (the member encoding) and operation results.
//! - `error`: [`QueueError`] (store failures inside it are `store::BackendError`s).
//!
//! The connection, pool, key names and clock come from the `store` crate, shared with usage-tracker.
//!
//! # Example
//! ```
//! use std::sync::Arc;
//! use queue_core::{EnqueueOptions, Entry, EntryMeta, MemoryQueue, Priority, QueueBackend, Score};
//!
//! use store::Clock;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let queue: Arc<dyn QueueBackend> = Arc::new(MemoryQueue::new(Clock::new()));
//! let options = EnqueueOptions::default();
//! let later = Entry::new(uuid::Uuid::new_v4(), "replica-a", EntryMeta::default())?;
//! let urgent = Entry::new(uuid::Uuid::new_v4(), "replica-b", EntryMeta::default())?;
//! queue.enqueue("gpt-4o", Priority::new(5)?, &later, options).await?;
//! let queued = queue.enqueue("gpt-4o", Priority::new(0)?, &urgent, options).await?;
//! assert_eq!(queued.position, 0);
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

pub use backend::QueueBackend;
pub use entry::{
    validate_owner, EnqueueOptions, Enqueued, Entry, EntryMeta, Grant, Popped, Priority, Queued,
    Score,
};
pub use error::QueueError;
pub use memory::MemoryQueue;
pub use redis_queue::{RedisQueue, RedisQueueSettings};
pub use state::{QueueSnapshot, QueueState};
