//! The Redis backend survives a script cache flush, a paused server and a restart without manual steps.
//!
//! Each test flushes, pauses or restarts its server: it needs one of its own (skipped on a shared Redis).

use std::time::{Duration, Instant};

use queue_core::{Priority, QueueOps, RedisQueue, Score};
use redis::AsyncConnectionConfig;
use store::{BackendErrorKind, RedisConfig};
use testkit::RedisServer;

use crate::common::{entry, eventually, roomy, unique_prefix};

const GROUP: &str = "recovery";
const TIMEOUT: Duration = Duration::from_millis(500);

fn queue(server: &RedisServer) -> anyhow::Result<RedisQueue> {
    Ok(RedisQueue::new(&RedisConfig {
        url: server.url(),
        pool_size: 2,
        command_timeout: TIMEOUT,
        key_prefix: unique_prefix(server, "recovery"),
        ..RedisConfig::default()
    })?)
}

async fn admin(server: &RedisServer) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    Ok(redis::Client::open(server.url())?
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

#[tokio::test]
async fn script_flush_is_survived() -> anyhow::Result<()> {
    let Some(server) = RedisServer::start_own("flushes its script cache").await? else {
        return Ok(());
    };
    let queue = queue(&server)?;
    let e = entry("replica-a");
    queue.enqueue(GROUP, Priority::new(1)?, &e, roomy()).await?;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin(&server).await?)
        .await?;
    // The next calls hit NOSCRIPT, load the script and succeed.
    assert_eq!(queue.depth(GROUP).await?, 1);
    let popped = queue.pop_head_if(GROUP, Score::MAX).await?;
    assert_eq!(popped.head.map(|q| q.entry), Some(e));
    Ok(())
}

#[tokio::test]
async fn unresponsive_server_times_out() -> anyhow::Result<()> {
    let Some(server) = RedisServer::start_own("pauses every client of it").await? else {
        return Ok(());
    };
    let queue = queue(&server)?;
    queue.depth(GROUP).await?;
    let () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("ALL")
        .query_async(&mut admin(&server).await?)
        .await?;
    let started = Instant::now();
    let err = queue.depth(GROUP).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(err.backend_kind(), Some(BackendErrorKind::Timeout));
    assert!(
        elapsed >= TIMEOUT - Duration::from_millis(50),
        "{elapsed:?}"
    );
    assert!(
        elapsed < TIMEOUT + Duration::from_millis(400),
        "{elapsed:?}"
    );
    // Once the pause ends the same queue answers again.
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { queue.depth(GROUP).await.ok() },
    )
    .await;
    Ok(())
}

#[tokio::test]
async fn restart_fails_fast_then_recovers() -> anyhow::Result<()> {
    let Some(mut server) = RedisServer::start_own("stops, kills and restarts it").await? else {
        return Ok(());
    };
    let queue = queue(&server)?;
    queue
        .enqueue(GROUP, Priority::new(1)?, &entry("replica-a"), roomy())
        .await?;

    server.stop().await;
    for _ in 0..3 {
        let started = Instant::now();
        let err = queue.depth(GROUP).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert!(
            started.elapsed() < TIMEOUT + Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
    }

    server.restart().await?;
    // Stale pooled connections are replaced on their own; the data is gone with the old process.
    let depth = eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { queue.depth(GROUP).await.ok() },
    )
    .await;
    assert_eq!(depth, 0);
    let e = entry("replica-a");
    queue.enqueue(GROUP, Priority::new(0)?, &e, roomy()).await?;
    assert_eq!(
        queue
            .pop_head_if(GROUP, Score::MAX)
            .await?
            .head
            .map(|q| q.entry),
        Some(e)
    );

    server.kill();
    let err = eventually(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async { queue.depth(GROUP).await.err() },
    )
    .await;
    assert!(err.is_retryable(), "{err:?}");
    server.restart().await?;
    eventually(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { queue.depth(GROUP).await.ok() },
    )
    .await;
    Ok(())
}
