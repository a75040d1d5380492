//! Random operation sequences give identical results on Redis and in memory.
//!
//! Determinism: leases are an hour long, and expiry is modelled by `expire_owner` (the owner's lease
//! record is dropped) and by deadlines far in the past or future, so no result depends on timing.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use queue_core::{
    EnqueueOptions, Enqueued, Entry, EntryMeta, Popped, Priority, QueueError, QueueOps, Queued,
    Score,
};
use testkit::RedisServer;

use crate::common::{memory, redis_on};

const OWNERS: [&str; 3] = ["replica-a", "replica-b", "replica-c"];
const PRIORITIES: [u32; 4] = [0, 1, 7, 1 << 20];
const GROUP: &str = "eq {group}/ü";

#[derive(Debug, Clone)]
enum Deadline {
    None,
    Past,
    Future,
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue {
        owner: usize,
        priority: usize,
        deadline: Deadline,
        est: u64,
    },
    Cancel(usize),
    Position(usize),
    Peek(usize),
    Pop(Option<usize>),
    Renew(usize),
    Expire(usize),
    Reap,
    Depth,
    DepthByPriority,
}

fn op() -> impl Strategy<Value = Op> {
    let deadline = prop_oneof![
        6 => Just(Deadline::None),
        1 => Just(Deadline::Past),
        2 => Just(Deadline::Future),
    ];
    prop_oneof![
        8 => (0..OWNERS.len(), 0..PRIORITIES.len(), deadline, 0..5000_u64).prop_map(
            |(owner, priority, deadline, est)| Op::Enqueue { owner, priority, deadline, est }
        ),
        2 => any::<usize>().prop_map(Op::Cancel),
        1 => any::<usize>().prop_map(Op::Position),
        1 => (0..6_usize).prop_map(Op::Peek),
        4 => proptest::option::weighted(0.7, 0..PRIORITIES.len()).prop_map(Op::Pop),
        1 => (0..OWNERS.len()).prop_map(Op::Renew),
        1 => (0..OWNERS.len()).prop_map(Op::Expire),
        1 => Just(Op::Reap),
        1 => Just(Op::Depth),
        1 => Just(Op::DepthByPriority),
    ]
}

/// What an operation returned, comparable across backends.
#[derive(Debug, PartialEq)]
enum Outcome {
    Enqueued(Result<Enqueued, u64>),
    Cancelled(bool),
    Position(Option<u64>),
    Entries(Vec<Queued>),
    Popped(Popped),
    Done,
    Depth(u64),
    ByPriority(Vec<(Priority, u64)>),
}

async fn apply(queue: &dyn QueueOps, op: &Op, entries: &[Entry]) -> Result<Outcome, QueueError> {
    let pick = |i: usize| entries.get(i % entries.len().max(1));
    let options = EnqueueOptions {
        max_depth: 12,
        liveness: Duration::from_secs(3600),
    };
    Ok(match op {
        Op::Enqueue { priority, .. } => {
            let Some(entry) = entries.last() else {
                return Ok(Outcome::Done);
            };
            let priority = Priority::new(PRIORITIES[*priority])?;
            match queue.enqueue(GROUP, priority, entry, options).await {
                Ok(queued) => Outcome::Enqueued(Ok(queued)),
                Err(QueueError::QueueFull { depth }) => Outcome::Enqueued(Err(depth)),
                Err(e) => return Err(e),
            }
        }
        Op::Cancel(i) => match pick(*i) {
            Some(entry) => Outcome::Cancelled(queue.cancel(GROUP, entry).await?),
            None => Outcome::Done,
        },
        Op::Position(i) => match pick(*i) {
            Some(entry) => Outcome::Position(queue.position(GROUP, entry).await?),
            None => Outcome::Done,
        },
        Op::Peek(n) => Outcome::Entries(queue.peek_head(GROUP, *n).await?),
        Op::Pop(bound) => {
            let max = match bound {
                Some(p) => Score::last_of(Priority::new(PRIORITIES[*p])?),
                None => Score::MAX,
            };
            Outcome::Popped(queue.pop_head_if(GROUP, max).await?)
        }
        Op::Renew(owner) => {
            queue
                .renew_lease(GROUP, OWNERS[*owner], Duration::from_secs(3600))
                .await?;
            Outcome::Done
        }
        Op::Expire(owner) => {
            queue.expire_owner(GROUP, OWNERS[*owner]).await?;
            Outcome::Done
        }
        Op::Reap => Outcome::Entries(queue.reap_expired(GROUP).await?),
        Op::Depth => Outcome::Depth(queue.depth(GROUP).await?),
        Op::DepthByPriority => Outcome::ByPriority(queue.depth_by_priority(GROUP).await?),
    })
}

/// Runs `ops` on both backends, comparing every result.
async fn run_both(
    redis: &dyn QueueOps,
    memory: &dyn QueueOps,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let far_future = 4_102_444_800_000; // 2100-01-01
    let mut entries: Vec<Entry> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        if let Op::Enqueue {
            owner,
            deadline,
            est,
            ..
        } = op
        {
            let deadline_ms = match deadline {
                Deadline::None => 0,
                Deadline::Past => 1,
                Deadline::Future => far_future,
            };
            let meta = EntryMeta {
                est_tokens: *est,
                prompt_tokens: est / 2,
                deadline_ms,
            };
            // Occasionally re-enqueue a known entry (moves it to the back of its priority).
            let reuse = *est % 7 == 0 && !entries.is_empty();
            let entry = if reuse {
                entries[*est as usize % entries.len()].clone()
            } else {
                Entry::new(uuid::Uuid::new_v4(), OWNERS[*owner], meta).unwrap()
            };
            entries.push(entry);
        }
        let from_redis = apply(redis, op, &entries).await;
        let from_memory = apply(memory, op, &entries).await;
        match (from_redis, from_memory) {
            (Ok(r), Ok(m)) => prop_assert_eq!(r, m, "step {} {:?}", step, op),
            (r, m) => {
                return Err(TestCaseError::fail(format!(
                    "step {step} {op:?}: {r:?} vs {m:?}"
                )))
            }
        }
    }
    let r = apply(redis, &Op::Peek(usize::MAX >> 1), &entries).await;
    let m = apply(memory, &Op::Peek(usize::MAX >> 1), &entries).await;
    prop_assert_eq!(format!("{r:?}"), format!("{m:?}"));
    Ok(())
}

#[test]
fn redis_and_memory_agree() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let server = rt.block_on(RedisServer::start())?;
    let pool = store::create_pool(&server.url(), 2, Duration::from_secs(2))?;
    let mut runner = TestRunner::new(Config {
        cases: 32,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        rt.block_on(async {
            // Fresh keys and a fresh memory queue per case, so cases (and shrink steps) are independent.
            let redis =
                redis_on(&server, &pool, "eq").map_err(|e| TestCaseError::fail(e.to_string()))?;
            run_both(&redis, &*memory(), &ops).await
        })
    });
    drop(server);
    result.map_err(|e| anyhow::anyhow!("{e}"))
}
