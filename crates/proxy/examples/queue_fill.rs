//! Benchmark helper (`scripts/bench.sh`, queue-depth scenario): fills a model group's Redis queue with waiting
//! entries through queue-core's `RedisQueue` (the member encoding and owner lease the proxy writes), keeps their
//! owner lease alive, and on SIGTERM/SIGINT (or after `--hold-secs`) ends the lease.
//!
//! ```sh
//! cargo run --release -p proxy --example queue_fill -- \
//!     --redis-url redis://127.0.0.1:6390 --group deep --count 100000 --priority 1000 \
//!     --prompt-tokens 5000 --est-tokens 5256
//! ```
//!
//! Prints `filled N entries in S s (depth D)` once every entry is queued.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::Parser;
use queue_core::{EnqueueOptions, Entry, Priority, QueueOps, RedisQueue};
use store::RedisConfig;

/// Fills a group's queue with live waiting entries owned by this process.
#[derive(Debug, Parser)]
struct Cli {
    /// Redis URL (loopback).
    #[arg(long)]
    redis_url: String,
    /// Key prefix of the proxy (`router_settings.key_prefix`).
    #[arg(long, default_value = "llms:")]
    key_prefix: String,
    /// Model group whose queue is filled.
    #[arg(long)]
    group: String,
    /// Entries to enqueue.
    #[arg(long)]
    count: u64,
    /// Priority of every entry.
    #[arg(long, default_value_t = 1000)]
    priority: u32,
    /// Tokens each entry reserves when admitted.
    #[arg(long, default_value_t = 5256)]
    est_tokens: u64,
    /// Prompt tokens of each entry (checked against `max_input_tokens`).
    #[arg(long, default_value_t = 5000)]
    prompt_tokens: u64,
    /// Owner lease, renewed every third of it.
    #[arg(long, default_value_t = 30)]
    lease_secs: u64,
    /// Longest the entries are kept alive.
    #[arg(long, default_value_t = 600)]
    hold_secs: u64,
    /// Enqueue calls in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let queue = RedisQueue::new(&RedisConfig {
        url: cli.redis_url.clone(),
        pool_size: 4,
        command_timeout: Duration::from_secs(5),
        key_prefix: cli.key_prefix.clone(),
        ..RedisConfig::default()
    })
    .context("connecting to Redis")?;
    let priority = Priority::new(cli.priority).context("--priority")?;
    let lease = Duration::from_secs(cli.lease_secs.max(3));
    let owner = format!(
        "{:032x}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let options = EnqueueOptions {
        max_depth: 0,
        liveness: lease,
    };

    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..cli.concurrency.clamp(1, cli.count.max(1)) {
        let (queue, next, owner, group) = (
            queue.clone(),
            next.clone(),
            owner.clone(),
            cli.group.clone(),
        );
        let (count, est, prompt) = (cli.count, cli.est_tokens, cli.prompt_tokens);
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(());
                }
                // `<id>|<owner>|<est>|<prompt>|<deadline>`, id 32 hex digits like a request uuid.
                let entry = Entry::from_member(&format!(
                    "{:016x}{i:016x}|{owner}|{est}|{prompt}|0",
                    0x6265_6e63_685f_6669_u64
                ))?;
                queue.enqueue(&group, priority, &entry, options).await?;
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("enqueue task")??;
    }
    let depth = queue.depth(&cli.group).await?;
    println!(
        "filled {} entries in {:.3} s (depth {depth})",
        cli.count,
        started.elapsed().as_secs_f64()
    );

    let hold = tokio::time::sleep(Duration::from_secs(cli.hold_secs));
    tokio::pin!(hold);
    let mut renew = tokio::time::interval(lease / 3);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = renew.tick() => queue.renew_lease(&cli.group, &owner, lease).await?,
            _ = &mut hold => break,
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    queue.expire_owner(&cli.group, &owner).await?;
    println!("lease ended");
    Ok(())
}
