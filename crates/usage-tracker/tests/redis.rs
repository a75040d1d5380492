//! Redis-only behaviour: key layout (the contract other crates rely on), the Lua fragment composed into a
//! foreign script, NOSCRIPT reloads and failures while Redis restarts.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use common::*;
use redis::AsyncCommands;
use store::{BackendErrorKind, Keyspace};
use testkit::RedisServer;
use usage_tracker::{
    lua::USAGE_FRAGMENT, Limits, Outcome, RedisUsage, ReserveRequest, UsageOps, UsageSettings,
    UsageStore,
};

async fn conn(server: &RedisServer) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?)
}

#[tokio::test]
async fn keys_follow_the_shared_layout() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    let window = Duration::from_secs(10);
    let settings = UsageSettings {
        keyspace: Keyspace::new(server.prefix())?,
        ..settings(window)
    };
    let store = RedisUsage::from_url(&server.url(), settings)?;
    let d = usage_tracker::Candidate {
        deployment: usage_tracker::DeploymentRef::new("gpt {4o}", "d1"),
        limits: Limits::default(),
    };
    let req = ReserveRequest::new(120, 100, Duration::from_secs(5));
    let r = reserve_ok(
        &(Arc::new(store.clone()) as Arc<dyn UsageOps>),
        std::slice::from_ref(&d),
        &req,
    )
    .await?;
    store
        .cooldown(&d.deployment, Duration::from_secs(3), "429 from upstream")
        .await?;

    let mut c = conn(&server).await?;
    let base = format!("{}{{gpt %7B4o%7D}}:d:d1", server.prefix());
    let base = base.as_str();
    let hash: Vec<(String, String)> = c.hgetall(base).await?;
    let field = |name: &str| hash.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    ensure!(
        field("w") == Some(r.window_start_ms.to_string()),
        "{hash:?}"
    );
    ensure!(
        field("rpm").as_deref() == Some("1") && field("tpm").as_deref() == Some("120"),
        "{hash:?}"
    );
    ensure!(
        field("ok").as_deref() == Some("0") && field("fail").as_deref() == Some("0"),
        "{hash:?}"
    );
    // Expires at the end of the second window after its own: window start + 3 windows.
    let ttl: i64 = c.pttl(base).await?;
    let now_ms = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let expected = (r.window_start_ms + 30_000).saturating_sub(now_ms);
    ensure!(
        ttl > 20_000 && ttl <= 30_000 && (ttl as u64).abs_diff(expected) < 1_000,
        "hash expires at the end of the second window after its own: {ttl}, expected about {expected}"
    );

    let expiry: Option<f64> = c.zscore(format!("{base}:if"), &r.id).await?;
    let expiry = expiry.context("lease member")? as u64;
    ensure!(
        expiry > r.window_start_ms && expiry <= r.window_start_ms + 10_000 + 5_000,
        "{expiry}"
    );
    ensure!(c.pttl::<_, i64>(format!("{base}:if")).await? > 4_000);

    let reason: Option<String> = c.get(format!("{base}:cd")).await?;
    ensure!(reason.as_deref() == Some("429 from upstream"));
    let cd_ttl: i64 = c.pttl(format!("{base}:cd")).await?;
    ensure!(cd_ttl > 2_000 && cd_ttl <= 3_000, "{cd_ttl}");

    store
        .settle(
            &r,
            Some(80),
            Outcome::Success,
            Some(usage_tracker::LatencySample {
                total: Duration::from_millis(500),
                ttft: Some(Duration::from_millis(100)),
                output_tokens: 50,
            }),
        )
        .await?;
    let hash: Vec<(String, String)> = c.hgetall(base).await?;
    let field = |name: &str| hash.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    ensure!(
        field("tpm").as_deref() == Some("80") && field("ok").as_deref() == Some("1"),
        "{hash:?}"
    );
    ensure!(
        field("lat").as_deref() == Some("10.0000") && field("ttft").as_deref() == Some("100.0000"),
        "{hash:?}"
    );
    ensure!(field("n").as_deref() == Some("1"), "{hash:?}");
    ensure!(
        !c.exists::<_, bool>(format!("{base}:if")).await?,
        "the last lease ended"
    );
    Ok(())
}

#[tokio::test]
async fn fragment_composes_into_other_scripts() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    let mut c = conn(&server).await?;
    let p = server.prefix();

    // The fragment alone has no top-level effects.
    let nothing: Option<String> = redis::Script::new(USAGE_FRAGMENT)
        .invoke_async(&mut c)
        .await?;
    ensure!(nothing.is_none());
    ensure!(server.keys().await?.is_empty());

    // A foreign script with its own leading key and args, using offsets, reserve and release.
    let body = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cands = u_parse_candidates(KEYS, ARGV, 1, 2, 2)
local i, ws = u_try_reserve(now, u_window(60000, false), cands, 0, 10, 5, ARGV[1], 1000)
local busy, next_ms = u_try_reserve(now, u_window(60000, false), { cands[1] }, 0, 10, 5, 'other', 1000)
local held = u_release(cands[i].dep, cands[i].inflight, ARGV[1], ws, 10, 4)
local again = u_release(cands[i].dep, cands[i].inflight, ARGV[1], ws, 4, -1)
return { i, cands[i].id, cands[1].rpm, cands[2].tier, held, again,
         tonumber(redis.call('HGET', cands[i].dep, 'tpm')), tostring(busy), next_ms - now, ws }
"#;
    let script = redis::Script::new(&format!("{USAGE_FRAGMENT}{body}"));
    let (i, id, rpm, tier, held, again, tpm, busy, next_in, ws): (
        i64,
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
        String,
        i64,
        i64,
    ) = script
        .prepare_invoke()
        .key(format!("{p}unrelated"))
        .key(format!("{p}{{g}}:d:a"))
        .key(format!("{p}{{g}}:d:a:if"))
        .key(format!("{p}{{g}}:d:a:cd"))
        .key(format!("{p}{{g}}:d:b"))
        .key(format!("{p}{{g}}:d:b:if"))
        .key(format!("{p}{{g}}:d:b:cd"))
        .arg("rid")
        .arg("unrelated")
        .arg("a")
        .arg(0)
        .arg(-1)
        .arg(-1)
        .arg(-1)
        .arg(0)
        .arg("b")
        .arg(-1)
        .arg(-1)
        .arg(-1)
        .arg(-1)
        .arg(7)
        .invoke_async(&mut c)
        .await?;
    ensure!(
        i == 2 && id == "b" && rpm == 0 && tier == 7,
        "{i} {id} {rpm} {tier}"
    );
    ensure!(held == 1 && again == 0 && tpm == 4, "{held} {again} {tpm}");
    // rpm 0 never takes requests: no next time.
    ensure!(busy == "false" && next_in < 0, "{busy} {next_in}");
    ensure!(ws % 60_000 == 0);
    Ok(())
}

#[tokio::test]
async fn scripts_reload_after_script_flush() -> anyhow::Result<()> {
    let Some(server) = RedisServer::start_own("flushes its script cache").await? else {
        return Ok(());
    };
    let h = redis_on(server, 1, Duration::from_secs(60))?;
    let server = h.redis.as_ref().context("redis")?;
    let d = [cand("d1", Limits::default())];
    reserve_ok(h.store(0), &d, &request(1)).await?;
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut conn(server).await?)
        .await?;
    let r = reserve_ok(h.store(0), &d, &request(1)).await?;
    h.store(0).settle(&r, None, Outcome::Success, None).await?;
    h.store(0).stats(GROUP, &[Arc::from("d1")]).await?;
    h.store(0).renew(&[r], LEASE).await?;
    Ok(())
}

#[tokio::test]
async fn redis_restart_gives_typed_errors_then_recovers() -> anyhow::Result<()> {
    let Some(mut server) = RedisServer::start_own("stops and restarts it").await? else {
        return Ok(());
    };
    let timeout = Duration::from_millis(500);
    let settings = UsageSettings {
        command_timeout: timeout,
        // An hour: the counts read after the restart stay in the reservation's window.
        ..UsageSettings::with_window(Duration::from_secs(3600))
    };
    let store: Arc<dyn UsageOps> = Arc::new(RedisUsage::from_url(&server.url(), settings)?);
    let d = [cand("d1", Limits::default())];
    reserve_ok(&store, &d, &request(1)).await?;

    server.stop().await;
    let ids = [Arc::<str>::from("d1")];
    for _ in 0..3 {
        let started = Instant::now();
        let err = store
            .reserve(&d, &request(1))
            .await
            .err()
            .context("reserve succeeded with Redis down")?;
        ensure!(
            started.elapsed() < timeout + Duration::from_millis(250),
            "{:?}",
            started.elapsed()
        );
        ensure!(
            matches!(
                err.backend_kind(),
                Some(BackendErrorKind::Connection | BackendErrorKind::Timeout)
            ) && err.is_retryable(),
            "{err:?}"
        );
        let err = store
            .stats(GROUP, &ids)
            .await
            .err()
            .context("stats with Redis down")?;
        ensure!(err.is_retryable(), "{err:?}");
        let err = store
            .cooldown(&dep("d1"), Duration::from_secs(1), "x")
            .await
            .err()
            .context("cooldown with Redis down")?;
        ensure!(err.is_retryable(), "{err:?}");
    }

    server.restart().await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        match store.reserve(&d, &request(1)).await {
            Ok(usage_tracker::ReserveOutcome::Reserved(r)) => break r,
            Ok(other) => anyhow::bail!("unexpected {other:?}"),
            Err(e) if Instant::now() < deadline && e.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    // Fresh server: the counters start over and every script loads again.
    let stats = store.stats(GROUP, &ids).await?;
    ensure!(
        stats[0].rpm_used == 1 && stats[0].in_flight == 1,
        "{stats:?}"
    );
    store.settle(&r, None, Outcome::Success, None).await?;
    Ok(())
}

#[tokio::test]
async fn an_unresponsive_redis_times_out_with_a_typed_error() -> anyhow::Result<()> {
    let Some(server) = RedisServer::start_own("pauses every client of it").await? else {
        return Ok(());
    };
    let timeout = Duration::from_millis(200);
    let settings = UsageSettings {
        command_timeout: timeout,
        ..UsageSettings::with_window(Duration::from_secs(60))
    };
    let store: Arc<dyn UsageOps> = Arc::new(RedisUsage::from_url(&server.url(), settings)?);
    let d = [cand("d1", Limits::default())];
    reserve_ok(&store, &d, &request(1)).await?;

    // Redis holds every other client's commands for 800 ms once this returns.
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(800)
        .query_async::<()>(&mut conn(&server).await?)
        .await?;
    let started = Instant::now();
    let err = store
        .reserve(&d, &request(1))
        .await
        .err()
        .context("reserve answered during the pause")?;
    let took = started.elapsed();
    ensure!(
        err.backend_kind() == Some(BackendErrorKind::Timeout) && err.is_retryable(),
        "{err:?}"
    );
    ensure!(
        took >= timeout && took < timeout + Duration::from_millis(250),
        "{took:?}"
    );

    // Served again after the pause.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match store.reserve(&d, &request(1)).await {
            Ok(_) => break,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[tokio::test]
async fn settings_are_validated() -> anyhow::Result<()> {
    use usage_tracker::UsageError;
    let bad = [
        UsageSettings::with_window(Duration::ZERO),
        UsageSettings::with_window(Duration::from_micros(1500)),
        UsageSettings {
            command_timeout: Duration::ZERO,
            ..UsageSettings::default()
        },
        UsageSettings {
            latency_ewma_alpha: 0.0,
            ..UsageSettings::default()
        },
    ];
    for settings in bad {
        ensure!(
            matches!(
                RedisUsage::from_url("redis://127.0.0.1:1/", settings.clone()),
                Err(UsageError::InvalidSettings(_))
            ),
            "{settings:?}"
        );
        ensure!(matches!(
            usage_tracker::MemoryUsage::new(&settings),
            Err(UsageError::InvalidSettings(_))
        ));
    }
    ensure!(matches!(
        RedisUsage::from_url("not a url", UsageSettings::default()),
        Err(UsageError::InvalidSettings(_))
    ));
    Ok(())
}

/// Giving back a reservation twice (two racing paths that both learn it was never sent) counts once.
#[tokio::test]
async fn give_back_counts_once() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    let mut c = conn(&server).await?;
    let p = server.prefix();
    let body = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cands = u_parse_candidates(KEYS, ARGV, 0, 0, 1)
local _, ws = u_try_reserve(now, u_window(60000, false), cands, 0, 7, 1, 'kept', 10000)
local _, ws2 = u_try_reserve(now, u_window(60000, false), cands, 0, 5, 1, 'unsent', 10000)
local first = u_give_back(cands[1].dep, cands[1].inflight, 'unsent', ws2, 5)
local second = u_give_back(cands[1].dep, cands[1].inflight, 'unsent', ws2, 5)
return { first, second, tonumber(redis.call('HGET', cands[1].dep, 'rpm')),
         tonumber(redis.call('HGET', cands[1].dep, 'tpm')), redis.call('ZCARD', cands[1].inflight) }
"#;
    let script = redis::Script::new(&format!("{USAGE_FRAGMENT}{body}"));
    let reply: (i64, i64, i64, i64, i64) = script
        .prepare_invoke()
        .key(format!("{p}{{g}}:d:a"))
        .key(format!("{p}{{g}}:d:a:if"))
        .key(format!("{p}{{g}}:d:a:cd"))
        .arg("a")
        .arg(-1)
        .arg(-1)
        .arg(-1)
        .arg(-1)
        .arg(0)
        .invoke_async(&mut c)
        .await?;
    ensure!(reply == (1, 0, 1, 7, 1), "{reply:?}");
    Ok(())
}
