//! Shared fixtures: backends, entries, bounded polling.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use queue_core::{
    EnqueueOptions, Entry, EntryMeta, MemoryQueue, QueueOps, RedisQueue, RedisQueueSettings,
};
use store::{Clock, Keyspace, RedisConfig};
use testkit::RedisServer;
use uuid::Uuid;

/// A fresh key prefix under the test's own, so queues sharing a server never see each other's keys.
pub(crate) fn unique_prefix(server: &RedisServer, name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}t{}-{name}:",
        server.prefix(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn memory() -> Arc<dyn QueueOps> {
    Arc::new(MemoryQueue::new(Clock::new()))
}

pub(crate) fn redis_config(server: &RedisServer, name: &str) -> RedisConfig {
    RedisConfig {
        url: server.url(),
        pool_size: 4,
        command_timeout: Duration::from_secs(2),
        key_prefix: unique_prefix(server, name),
        ..RedisConfig::default()
    }
}

pub(crate) fn redis(server: &RedisServer, name: &str) -> anyhow::Result<Arc<dyn QueueOps>> {
    Ok(Arc::new(RedisQueue::new(&redis_config(server, name))?))
}

/// A queue on an existing pool (of `server`) under a fresh prefix.
pub(crate) fn redis_on(
    server: &RedisServer,
    pool: &deadpool_redis::Pool,
    name: &str,
) -> anyhow::Result<RedisQueue> {
    let settings = RedisQueueSettings {
        keyspace: Keyspace::new(unique_prefix(server, name))?,
        command_timeout: Duration::from_secs(2),
    };
    Ok(RedisQueue::from_pool(pool.clone(), settings))
}

pub(crate) fn entry(owner: &str) -> Entry {
    entry_with(owner, EntryMeta::default())
}

pub(crate) fn entry_with(owner: &str, meta: EntryMeta) -> Entry {
    Entry::new(Uuid::new_v4(), owner, meta).unwrap()
}

/// Options for tests that do not exercise depth limits or lease expiry.
pub(crate) fn roomy() -> EnqueueOptions {
    EnqueueOptions {
        max_depth: 0,
        liveness: Duration::from_secs(3600),
    }
}

/// Polls `check` every `every` until it yields `Some`, failing after `within`.
pub(crate) async fn eventually<T, F, Fut>(within: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(every).await;
    }
}
