//! The crate's examples run as tests: the quick start on memory, and the shared-queue example as two
//! "processes" (two routers) on one Redis, which between them get the deployment's one request per minute.

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/quick_start.rs"]
mod quick_start;

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/shared_queue.rs"]
mod shared_queue;

use router::RouterSettings;
use testkit::RedisServer;

#[tokio::test]
async fn the_quick_start_answers_then_refuses_past_rpm() -> anyhow::Result<()> {
    let lines = quick_start::run().await?;
    anyhow::ensure!(lines.len() == 2, "{lines:?}");
    anyhow::ensure!(
        lines[0].starts_with("call 1: 200") && lines[0].contains("Hello world this is Macintosh!"),
        "{lines:?}"
    );
    // Refused at once with when to retry (a request that waited out its 2 s timeout would get 408).
    anyhow::ensure!(
        lines[1].starts_with("call 2: 429") && lines[1].contains("retry after"),
        "{lines:?}"
    );
    Ok(())
}

#[tokio::test]
async fn two_shared_queue_processes_share_one_rpm() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let settings = || RouterSettings {
        key_prefix: Some(redis.prefix().to_owned()),
        ..RouterSettings::default()
    };
    let url = redis.url();
    let env = move |name: &str| (name == "REDIS_URL").then(|| url.clone());
    let (a, b) = tokio::join!(
        shared_queue::run(settings(), env.clone()),
        shared_queue::run(settings(), env)
    );
    let mut statuses = [a?, b?];
    statuses.sort_unstable();
    anyhow::ensure!(statuses[0] == 200 && statuses[1] != 200, "{statuses:?}");
    Ok(())
}
