//! Four replicas enqueue, cancel and pop concurrently on one group: no entry is popped twice or lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use queue_core::{MemoryQueue, Priority, QueueOps, RedisQueue, Score};
use store::Clock;
use testkit::RedisServer;
use uuid::Uuid;

use crate::common::{entry, redis_config, roomy};

const GROUP: &str = "concurrent";
const PER_REPLICA: usize = 2000;
const POP_BUDGET: usize = 1200;

async fn replicas_never_pop_twice_or_lose(replicas: Vec<Arc<dyn QueueOps>>) -> anyhow::Result<()> {
    let enqueuers_left = Arc::new(AtomicUsize::new(replicas.len()));
    let mut enqueuers = Vec::new();
    let mut poppers = Vec::new();
    for (r, queue) in replicas.iter().enumerate() {
        let owner = format!("replica-{r}");
        enqueuers.push(tokio::spawn({
            let queue = Arc::clone(queue);
            let left = Arc::clone(&enqueuers_left);
            async move {
                let mut enqueued = Vec::with_capacity(PER_REPLICA);
                let mut cancelled = Vec::new();
                for i in 0..PER_REPLICA {
                    let e = entry(&owner);
                    let priority = Priority::new((i % 3) as u32)?;
                    queue.enqueue(GROUP, priority, &e, roomy()).await?;
                    enqueued.push(e);
                    if i % 5 == 4 {
                        let victim = &enqueued[i - 2];
                        if queue.cancel(GROUP, victim).await? {
                            cancelled.push(victim.id());
                        }
                    }
                }
                left.fetch_sub(1, Ordering::SeqCst);
                anyhow::Ok((enqueued, cancelled))
            }
        }));
        poppers.push(tokio::spawn({
            let queue = Arc::clone(queue);
            let left = Arc::clone(&enqueuers_left);
            async move {
                let mut popped = Vec::new();
                while popped.len() < POP_BUDGET {
                    let done = left.load(Ordering::SeqCst) == 0;
                    match queue.pop_head_if(GROUP, Score::MAX).await?.head {
                        Some(head) => popped.push(head.entry.id()),
                        None if done => break,
                        None => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
                anyhow::Ok(popped)
            }
        }));
    }

    let mut all = HashSet::new();
    let mut cancelled = HashSet::new();
    for task in enqueuers {
        let (enqueued, gone) = task.await??;
        all.extend(enqueued.iter().map(|e| e.id()));
        for id in gone {
            assert!(cancelled.insert(id), "cancelled twice: {id}");
        }
    }
    let mut popped = HashSet::new();
    for task in poppers {
        for id in task.await?? {
            assert!(popped.insert(id), "popped twice: {id}");
        }
    }
    assert_eq!(all.len(), replicas.len() * PER_REPLICA);
    assert!(
        popped.is_disjoint(&cancelled),
        "an entry was both popped and cancelled"
    );

    let queue = &replicas[0];
    let remaining: HashSet<Uuid> = queue
        .peek_head(GROUP, all.len())
        .await?
        .into_iter()
        .map(|q| q.entry.id())
        .collect();
    let expected: HashSet<Uuid> = all
        .iter()
        .filter(|id| !popped.contains(id) && !cancelled.contains(id))
        .copied()
        .collect();
    assert_eq!(remaining, expected, "lost or resurrected entries");
    assert_eq!(queue.depth(GROUP).await?, expected.len() as u64);
    assert_eq!(popped.len() + cancelled.len() + expected.len(), all.len(),);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_memory() -> anyhow::Result<()> {
    let shared = MemoryQueue::new(Clock::new());
    let replicas = (0..4)
        .map(|_| Arc::new(shared.clone()) as Arc<dyn QueueOps>)
        .collect();
    replicas_never_pop_twice_or_lose(replicas).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_redis() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    let mut config = redis_config(&server, "concurrency");
    config.pool_size = 2;
    // Four independent pools, as four replicas, on the same keys.
    let mut replicas: Vec<Arc<dyn QueueOps>> = Vec::new();
    for _ in 0..4 {
        replicas.push(Arc::new(RedisQueue::new(&config)?));
    }
    replicas_never_pop_twice_or_lose(replicas).await
}
