//! Owner leases: entries of an owner that stops renewing disappear after the lease; a renewing owner's stay.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use queue_core::{EnqueueOptions, Priority, QueueOps};
use testkit::RedisServer;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::common::{entry, memory, redis};

const GROUP: &str = "leases";

/// Reaps `GROUP` until `n` entries were removed (bounded polling).
async fn reap_until(queue: &dyn QueueOps, n: usize) -> anyhow::Result<Vec<queue_core::Queued>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reaped = Vec::new();
    while reaped.len() < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} entries expired",
            reaped.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        reaped.extend(queue.reap_expired(GROUP).await?);
    }
    Ok(reaped)
}

async fn abandoned_entries_expire_renewed_ones_stay(
    queue: Arc<dyn QueueOps>,
) -> anyhow::Result<()> {
    let renewed_lease = Duration::from_millis(600);
    let abandoned_lease = Duration::from_millis(200);
    let priority = Priority::new(2)?;
    let mut kept = Vec::new();
    let mut abandoned = Vec::new();
    for i in 0..10 {
        if i % 2 == 0 {
            let e = entry("replica-renewing");
            let options = EnqueueOptions {
                max_depth: 0,
                liveness: renewed_lease,
            };
            queue.enqueue(GROUP, priority, &e, options).await?;
            kept.push(e);
        } else {
            let e = entry("replica-crashed");
            let options = EnqueueOptions {
                max_depth: 0,
                liveness: abandoned_lease,
            };
            queue.enqueue(GROUP, priority, &e, options).await?;
            abandoned.push(e);
        }
    }

    // One renewal per (owner, group) for all its entries, well within the lease.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let renewer = tokio::spawn({
        let queue = Arc::clone(&queue);
        async move {
            loop {
                queue
                    .renew_lease(GROUP, "replica-renewing", renewed_lease)
                    .await?;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    _ = stop_rx.changed() => return anyhow::Ok(()),
                }
            }
        }
    });

    let started = Instant::now();
    let reaped = reap_until(&*queue, 5).await?;
    assert!(
        started.elapsed() >= abandoned_lease - Duration::from_millis(50),
        "reaped too early"
    );
    let reaped_ids: HashSet<_> = reaped.iter().map(|q| q.entry.id()).collect();
    let abandoned_ids: HashSet<_> = abandoned.iter().map(|e| e.id()).collect();
    assert_eq!(reaped_ids, abandoned_ids);

    // Watch for longer than the renewed lease: the renewing owner's entries stay.
    let watch_until = Instant::now() + renewed_lease + Duration::from_millis(200);
    while Instant::now() < watch_until {
        assert!(queue.reap_expired(GROUP).await?.is_empty());
        let live: Vec<_> = queue
            .peek_head(GROUP, 100)
            .await?
            .into_iter()
            .map(|q| q.entry)
            .collect();
        assert_eq!(live, kept);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Once the owner stops renewing, its entries go too: they are skipped at the head and reaped.
    stop_tx.send(true)?;
    renewer.await??;
    let expired: HashSet<_> = reap_until(&*queue, 5)
        .await?
        .iter()
        .map(|q| q.entry.id())
        .collect();
    assert_eq!(expired, kept.iter().map(|e| e.id()).collect());
    assert_eq!(queue.depth(GROUP).await?, 0);
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn leases_memory() -> anyhow::Result<()> {
    abandoned_entries_expire_renewed_ones_stay(memory()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_redis() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    abandoned_entries_expire_renewed_ones_stay(redis(&server, "leases")?).await
}

/// `expire_owner` ends a lease at once, e.g. on shutdown.
async fn expire_owner_kills_entries_at_once(queue: Arc<dyn QueueOps>) -> anyhow::Result<()> {
    let group = "expire";
    let options = EnqueueOptions {
        max_depth: 0,
        liveness: Duration::from_secs(3600),
    };
    let gone = entry("replica-leaving");
    let stays = entry("replica-staying");
    queue
        .enqueue(group, Priority::new(0)?, &gone, options)
        .await?;
    queue
        .enqueue(group, Priority::new(1)?, &stays, options)
        .await?;
    queue.expire_owner(group, "replica-leaving").await?;
    let popped = queue.pop_head_if(group, queue_core::Score::MAX).await?;
    assert_eq!(
        popped
            .reaped
            .into_iter()
            .map(|q| q.entry)
            .collect::<Vec<_>>(),
        vec![gone]
    );
    assert_eq!(popped.head.map(|q| q.entry), Some(stays));
    Ok(())
}

#[tokio::test]
async fn expire_owner_memory() -> anyhow::Result<()> {
    expire_owner_kills_entries_at_once(memory()).await
}

#[tokio::test]
async fn expire_owner_redis() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    expire_owner_kills_entries_at_once(redis(&server, "expire")?).await
}
