//! A step runs as a Redis Function, is loaded again when the server lost it, and runs as a script where
//! Functions are not available.

use std::time::Duration;

use anyhow::{ensure, Context};
use store::{create_pool, RedisConnection, StepCall, StepFunction};
use testkit::RedisServer;

/// A step with a prelude: the helper must be visible to the body in both forms.
fn step() -> StepFunction {
    StepFunction::new(
        "test_incr_by",
        &["local function double(x) return 2 * tonumber(x) end"],
        "return redis.call('INCRBY', KEYS[1], double(ARGV[1]))",
    )
}

fn connection(url: &str) -> anyhow::Result<RedisConnection> {
    Ok(RedisConnection::new(
        create_pool(url, 2, Duration::from_secs(5))?,
        Duration::from_secs(5),
    ))
}

async fn commandstat(conn: &RedisConnection, name: &str) -> anyhow::Result<u64> {
    let info: String = conn.query(redis::cmd("INFO").arg("commandstats")).await?;
    let prefix = format!("cmdstat_{name}:calls=");
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

async fn call(conn: &RedisConnection, step: &StepFunction, key: &str) -> anyhow::Result<i64> {
    let mut call = StepCall::new();
    call.key(key).arg(3);
    let value = conn.call_step(step, &call).await?;
    Ok(redis::from_redis_value(value)?)
}

#[tokio::test]
async fn a_step_is_a_function_loaded_again_after_the_server_lost_it() -> anyhow::Result<()> {
    let Some(redis) =
        RedisServer::start_own("flushes its Functions, reads INFO commandstats").await?
    else {
        return Ok(());
    };
    let conn = connection(&redis.url())?;
    let step = step();
    let key = format!("{}n", redis.prefix());
    ensure!(call(&conn, &step, &key).await? == 6);
    ensure!(call(&conn, &step, &key).await? == 12);
    let _: () = conn
        .query(redis::cmd("FUNCTION").arg("FLUSH"))
        .await
        .context("FUNCTION FLUSH")?;
    ensure!(call(&conn, &step, &key).await? == 18);
    ensure!(
        commandstat(&conn, "evalsha").await? == 0,
        "a server with Functions ran the step as a script"
    );
    ensure!(commandstat(&conn, "fcall").await? >= 3);
    Ok(())
}

#[tokio::test]
async fn a_step_runs_as_a_script_where_functions_are_not_allowed() -> anyhow::Result<()> {
    let Some(redis) = RedisServer::start_own("defines an ACL user").await? else {
        return Ok(());
    };
    let admin = connection(&redis.url())?;
    let _: () = admin
        .query(
            redis::cmd("ACL")
                .arg("SETUSER")
                .arg("scripts-only")
                .arg("on")
                .arg(">secret")
                .arg("~*")
                .arg("&*")
                .arg("+@all")
                .arg("-fcall")
                .arg("-function"),
        )
        .await?;
    let url = redis
        .url()
        .replacen("redis://", "redis://scripts-only:secret@", 1);
    let conn = connection(&url)?;
    let step = step();
    let key = format!("{}n", redis.prefix());
    ensure!(call(&conn, &step, &key).await? == 6);
    let _: () = admin
        .query(redis::cmd("SCRIPT").arg("FLUSH"))
        .await
        .context("SCRIPT FLUSH")?;
    ensure!(call(&conn, &step, &key).await? == 12);
    ensure!(commandstat(&admin, "evalsha").await? >= 2);
    Ok(())
}
