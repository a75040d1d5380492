//! Enqueue + pop throughput of the queue on Redis and in memory, next to a raw ZADD + ZPOPMIN baseline
//! (the same two round trips without scripts) on the same redis-server.
//!
//! `cargo bench -p queue-core --bench queue`; figures are printed as elements/s (one element = one
//! enqueue + one pop). Set `REDIS_URL` to bench an external server instead of a testkit one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_main, Criterion, Throughput};
use futures::future::join_all;
use queue_core::{
    EnqueueOptions, Entry, EntryMeta, MemoryQueue, Priority, QueueOps, RedisQueue, Score,
};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;
use store::{Clock, RedisConfig};
use tokio::runtime::Runtime;
use uuid::Uuid;

const GROUP: &str = "bench";
/// Concurrent callers in the `x16` variants (replica-like load through one pool).
const CONCURRENCY: usize = 16;

fn entry() -> Entry {
    let meta = EntryMeta {
        est_tokens: 1000,
        prompt_tokens: 600,
        deadline_ms: 0,
    };
    Entry::new(Uuid::new_v4(), "bench-replica", meta).expect("static owner id is valid")
}

async fn enqueue_pop(queue: &dyn QueueOps, priority: Priority) {
    let options = EnqueueOptions {
        max_depth: 0,
        liveness: Duration::from_secs(60),
    };
    queue
        .enqueue(GROUP, priority, &entry(), options)
        .await
        .expect("enqueue");
    queue.pop_head_if(GROUP, Score::MAX).await.expect("pop");
}

async fn raw_zadd_zpopmin(conn: &mut MultiplexedConnection, seq: u64) {
    let member = entry();
    let () = conn
        .zadd("raw:{bench}:q", member.member(), seq)
        .await
        .expect("zadd");
    let _: Vec<(String, f64)> = conn.zpopmin("raw:{bench}:q", 1).await.expect("zpopmin");
}

/// Runs `iters` operations split over `CONCURRENCY` tasks and returns the wall time.
async fn concurrent<F, Fut>(iters: u64, op: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let per_task = iters.div_ceil(CONCURRENCY as u64);
    let started = Instant::now();
    join_all((0..CONCURRENCY as u64).map(|t| {
        let op = &op;
        async move {
            for i in 0..per_task {
                op(t * per_task + i).await;
            }
        }
    }))
    .await;
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");
    let (_server, url, key_prefix) = rt.block_on(async {
        match std::env::var("REDIS_URL") {
            Ok(url) => (None, url, "bench:".to_owned()),
            Err(_) => {
                let server = testkit::RedisServer::start()
                    .await
                    .expect("start redis-server");
                let url = server.url();
                let key_prefix = server.prefix().to_owned();
                (Some(server), url, key_prefix)
            }
        }
    });
    let config = RedisConfig {
        url: url.clone(),
        pool_size: 4,
        command_timeout: Duration::from_secs(2),
        key_prefix,
        ..RedisConfig::default()
    };
    let redis_queue: Arc<dyn QueueOps> = Arc::new(RedisQueue::new(&config).expect("redis queue"));
    let memory_queue: Arc<dyn QueueOps> = Arc::new(MemoryQueue::new(Clock::new()));
    let raw = rt.block_on(async {
        redis::Client::open(url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection")
    });
    let priority = Priority::new(3).expect("valid priority");

    let mut group = c.benchmark_group("enqueue+pop");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    group.bench_function("memory", |b| {
        b.to_async(&rt)
            .iter(|| enqueue_pop(&*memory_queue, priority))
    });
    group.bench_function("redis", |b| {
        b.to_async(&rt)
            .iter(|| enqueue_pop(&*redis_queue, priority))
    });
    let mut seq = 0_u64;
    group.bench_function("raw zadd+zpopmin", |b| {
        b.to_async(&rt).iter(|| {
            seq += 1;
            let mut conn = raw.clone();
            async move { raw_zadd_zpopmin(&mut conn, seq).await }
        })
    });
    group.bench_function("redis x16", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let queue = Arc::clone(&redis_queue);
            async move { concurrent(iters, |_| enqueue_pop(&*queue, priority)).await }
        })
    });
    group.bench_function("raw zadd+zpopmin x16", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let raw = raw.clone();
            async move {
                concurrent(iters, |i| {
                    let mut conn = raw.clone();
                    async move { raw_zadd_zpopmin(&mut conn, i).await }
                })
                .await
            }
        })
    });
    group.finish();
}

// The macro generates an undocumented pub fn.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::bench);
}
use group::benches;
criterion_main!(benches);
