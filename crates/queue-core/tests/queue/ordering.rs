//! Order of service and the basic contract of each operation.

use std::time::Duration;

use queue_core::{EnqueueOptions, EntryMeta, Priority, QueueError, QueueOps, Score};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use testkit::RedisServer;

use crate::common::{entry, entry_with, memory, redis, roomy};

/// 1,000 entries with random priorities pop in (priority, arrival) order.
async fn pops_in_priority_then_arrival_order(queue: &dyn QueueOps) -> anyhow::Result<()> {
    let group = "ordering";
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut expected = Vec::new();
    for arrival in 0..1000_u32 {
        let priority = match rng.random_range(0..12) {
            0 => Priority::MAX,
            p => Priority::new(p - 1)?,
        };
        let e = entry(if arrival % 2 == 0 {
            "replica-a"
        } else {
            "replica-b"
        });
        queue.enqueue(group, priority, &e, roomy()).await?;
        expected.push((priority, arrival, e));
    }
    expected.sort_by_key(|(priority, arrival, _)| (*priority, *arrival));

    let mut by_priority: Vec<(Priority, u64)> = Vec::new();
    for (priority, _, _) in &expected {
        match by_priority.last_mut() {
            Some((p, count)) if p == priority => *count += 1,
            _ => by_priority.push((*priority, 1)),
        }
    }
    assert_eq!(queue.depth_by_priority(group).await?, by_priority);
    assert_eq!(queue.depth(group).await?, 1000);

    let mut popped = Vec::new();
    while let Some(head) = queue.pop_head_if(group, Score::MAX).await?.head {
        popped.push(head);
    }
    assert_eq!(popped.len(), expected.len());
    for (got, (priority, _, want)) in popped.iter().zip(&expected) {
        assert_eq!(&got.entry, want);
        assert_eq!(got.priority, *priority);
        assert_eq!(got.score.priority(), Some(*priority));
    }
    assert!(popped.windows(2).all(|w| w[0].score < w[1].score));
    assert_eq!(queue.depth(group).await?, 0);
    assert_eq!(queue.depth_by_priority(group).await?, vec![]);
    Ok(())
}

/// enqueue / position / cancel / peek / bounded pop / depth limits / deadlines.
async fn operations_keep_their_contract(queue: &dyn QueueOps) -> anyhow::Result<()> {
    let group = "contract";
    let p = |n: u32| Priority::new(n).unwrap();
    let low = entry("replica-a");
    let high = entry("replica-a");
    let mid = entry("replica-b");

    let first = queue.enqueue(group, p(5), &low, roomy()).await?;
    assert_eq!(first.position, 0);
    assert_eq!(first.score, Score::new(p(5), 1));
    let second = queue.enqueue(group, p(1), &high, roomy()).await?;
    assert_eq!(second.position, 0);
    assert_eq!(second.score, Score::new(p(1), 2));
    let third = queue.enqueue(group, p(3), &mid, roomy()).await?;
    assert_eq!(third.position, 1);
    assert_eq!(queue.position(group, &low).await?, Some(2));
    assert_eq!(queue.position(group, &entry("replica-a")).await?, None);

    let peeked: Vec<_> = queue
        .peek_head(group, 2)
        .await?
        .into_iter()
        .map(|q| q.entry)
        .collect();
    assert_eq!(peeked, vec![high.clone(), mid.clone()]);
    assert!(queue.peek_head(group, 0).await?.is_empty());
    assert_eq!(queue.peek_head(group, 10).await?.len(), 3);

    // A full queue refuses at once and reports its depth.
    let full = EnqueueOptions {
        max_depth: 3,
        liveness: Duration::from_secs(60),
    };
    let refused = queue
        .enqueue(group, p(0), &entry("replica-a"), full)
        .await
        .unwrap_err();
    assert!(
        matches!(refused, QueueError::QueueFull { depth: 3 }),
        "{refused:?}"
    );
    assert!(refused.is_queue_full() && !refused.is_retryable());

    // Popping is bounded by score: nothing of priority 2 or better waits after `high` left.
    let popped = queue.pop_head_if(group, Score::last_of(p(2))).await?;
    assert_eq!(popped.head.map(|q| q.entry), Some(high.clone()));
    assert!(queue
        .pop_head_if(group, Score::last_of(p(2)))
        .await?
        .head
        .is_none());
    assert_eq!(queue.depth(group).await?, 2);

    assert!(queue.cancel(group, &mid).await?);
    assert!(!queue.cancel(group, &mid).await?);
    assert!(!queue.cancel(group, &high).await?);
    assert_eq!(queue.depth_by_priority(group).await?, vec![(p(5), 1)]);

    // An entry whose deadline passed is dead: skipped by peek, reaped at the head, never popped.
    let late = entry_with(
        "replica-a",
        EntryMeta {
            est_tokens: 10,
            prompt_tokens: 5,
            deadline_ms: 1,
        },
    );
    queue.enqueue(group, p(0), &late, roomy()).await?;
    assert_eq!(queue.depth(group).await?, 2);
    let heads: Vec<_> = queue
        .peek_head(group, 5)
        .await?
        .into_iter()
        .map(|q| q.entry)
        .collect();
    assert_eq!(heads, vec![low.clone()]);
    let popped = queue.pop_head_if(group, Score::MAX).await?;
    assert_eq!(
        popped.reaped.iter().map(|q| &q.entry).collect::<Vec<_>>(),
        vec![&late]
    );
    assert_eq!(popped.head.map(|q| q.entry), Some(low));
    assert_eq!(queue.depth(group).await?, 0);
    assert!(queue.pop_head_if(group, Score::MAX).await?.head.is_none());

    // Invalid owners are refused before reaching the backend.
    let err = queue
        .renew_lease(group, "bad|owner", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(err.is_invalid_input(), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn ordering_memory() -> anyhow::Result<()> {
    pops_in_priority_then_arrival_order(&*memory()).await
}

#[tokio::test]
async fn ordering_redis() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    pops_in_priority_then_arrival_order(&*redis(&server, "ordering")?).await
}

#[tokio::test]
async fn contract_memory() -> anyhow::Result<()> {
    operations_keep_their_contract(&*memory()).await
}

#[tokio::test]
async fn contract_redis() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    operations_keep_their_contract(&*redis(&server, "contract")?).await
}

#[test]
fn priority_range_is_typed() {
    assert_eq!(Priority::try_from(0_i64).unwrap().get(), 0);
    assert_eq!(Priority::try_from(1_i64 << 20).unwrap(), Priority::MAX);
    for bad in [-1_i64, (1 << 20) + 1, i64::MAX, i64::MIN] {
        let err = Priority::try_from(bad).unwrap_err();
        assert!(
            matches!(err, QueueError::InvalidPriority { value } if value == bad),
            "{err:?}"
        );
    }
    assert!(Priority::new(u32::MAX).is_err());
    // Every score stays exact as a Lua double.
    assert!(Score::MAX.get() < 1 << 53);
    assert_eq!(Score::new(Priority::MAX, 7).seq(), 7);
}
