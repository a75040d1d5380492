//! The in-memory backend: a [`QueueState`] behind a mutex, for a single instance without Redis.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::entry::{
    millis, validate_owner, EnqueueOptions, Enqueued, Entry, Popped, Priority, Queued, Score,
};
use store::Clock;

use crate::{QueueBackend, QueueError, QueueOps, QueueState};

/// [`QueueBackend`] and [`QueueOps`] over a shared [`QueueState`]; clones share the same queues.
///
/// ```
/// use queue_core::{EnqueueOptions, Entry, EntryMeta, MemoryQueue, Priority, QueueOps, Score};
/// use store::Clock;
///
/// # tokio_test_block_on(async {
/// let queue = MemoryQueue::new(Clock::new());
/// let entry = Entry::new(uuid::Uuid::new_v4(), "replica-a", EntryMeta::default())?;
/// queue.enqueue("gpt-4o", Priority::new(1)?, &entry, EnqueueOptions::default()).await?;
/// let popped = queue.pop_head_if("gpt-4o", Score::MAX).await?;
/// assert_eq!(popped.head.map(|q| q.entry), Some(entry));
/// # Ok::<(), queue_core::QueueError>(())
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryQueue {
    state: Arc<Mutex<QueueState>>,
    clock: Clock,
}

impl MemoryQueue {
    /// A queue with its own empty state.
    pub fn new(clock: Clock) -> Self {
        Self::with_state(Arc::new(Mutex::new(QueueState::new())), clock)
    }

    /// A queue over `state`, which the caller may also lock directly to compose operations.
    pub fn with_state(state: Arc<Mutex<QueueState>>, clock: Clock) -> Self {
        Self { state, clock }
    }

    /// The shared state.
    pub fn state(&self) -> &Arc<Mutex<QueueState>> {
        &self.state
    }

    /// The clock this queue reads.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Every method leaves the state consistent before it can panic, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl QueueBackend for MemoryQueue {
    async fn depth_by_priority(&self, group: &str) -> Result<Vec<(Priority, u64)>, QueueError> {
        Ok(self.lock().depth_by_priority(group))
    }
}

#[async_trait]
impl QueueOps for MemoryQueue {
    async fn enqueue(
        &self,
        group: &str,
        priority: Priority,
        entry: &Entry,
        options: EnqueueOptions,
    ) -> Result<Enqueued, QueueError> {
        let now = self.clock.now_ms();
        let mut state = self.lock();
        let enqueued = state.enqueue(group, priority, entry, options.max_depth)?;
        state.touch_owner(
            group,
            entry.owner(),
            now.saturating_add(millis(options.liveness)),
        );
        Ok(enqueued)
    }

    async fn cancel(&self, group: &str, entry: &Entry) -> Result<bool, QueueError> {
        Ok(self.lock().remove(group, entry))
    }

    async fn position(&self, group: &str, entry: &Entry) -> Result<Option<u64>, QueueError> {
        Ok(self.lock().position(group, entry))
    }

    async fn peek_head(&self, group: &str, n: usize) -> Result<Vec<Queued>, QueueError> {
        let now = self.clock.now_ms();
        Ok(self.lock().peek(group, now, n))
    }

    async fn pop_head_if(&self, group: &str, max_score: Score) -> Result<Popped, QueueError> {
        let now = self.clock.now_ms();
        Ok(self.lock().pop_head_if(group, now, max_score))
    }

    async fn renew_lease(
        &self,
        group: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<(), QueueError> {
        validate_owner(owner)?;
        let expiry = self.clock.now_ms().saturating_add(millis(lease));
        self.lock().heartbeat(group, owner, expiry);
        Ok(())
    }

    async fn expire_owner(&self, group: &str, owner: &str) -> Result<(), QueueError> {
        validate_owner(owner)?;
        self.lock().expire_owner(group, owner);
        Ok(())
    }

    async fn reap_expired(&self, group: &str) -> Result<Vec<Queued>, QueueError> {
        let now = self.clock.now_ms();
        Ok(self.lock().reap(group, now))
    }

    async fn depth(&self, group: &str) -> Result<u64, QueueError> {
        Ok(self.lock().depth(group))
    }
}
