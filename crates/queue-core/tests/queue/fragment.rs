//! The Lua fragment's functions that the queue scripts do not call themselves (grants, better_waiting,
//! decode, q_head's removed list) run in small composite scripts and agree with `QueueState`.

use std::time::Duration;

use queue_core::lua::{NOW_MS, QUEUE_FRAGMENT};
use queue_core::{Clock, EntryMeta, Keyspace, Priority, QueueState};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};
use testkit::RedisServer;

use crate::common::{entry, entry_with, unique_prefix};

fn composite(body: &str) -> Script {
    Script::new(&format!("{QUEUE_FRAGMENT}\n{NOW_MS}{body}"))
}

async fn connect(server: &RedisServer) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(server.url())?;
    let config = AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    Ok(client
        .get_multiplexed_async_connection_with_config(&config)
        .await?)
}

#[test]
fn fragment_only_defines_prefixed_local_functions() {
    let mut depth = 0_i32;
    let mut code_only = String::new();
    for line in QUEUE_FRAGMENT.lines() {
        let code = line.split("--").next().unwrap_or("").trim_end();
        code_only.push_str(code);
        code_only.push('\n');
        if depth == 0 && !code.trim().is_empty() {
            assert!(
                code.starts_with("local function q_"),
                "top-level code in fragment: {line:?}"
            );
        }
        let words: Vec<&str> = code
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .filter(|w| !w.is_empty())
            .collect();
        for w in words {
            match w {
                // `while ... do` and `for ... do` open their block through `do`.
                "function" | "if" | "do" => depth += 1,
                "end" => depth -= 1,
                _ => {}
            }
        }
    }
    assert_eq!(depth, 0);
    assert!(!code_only.contains("KEYS") && !code_only.contains("ARGV"));
    assert!(
        !code_only.contains("redis.call('TIME')"),
        "now is the composite script's job"
    );
    for name in [
        "q_decode",
        "q_enqueue",
        "q_better_waiting",
        "q_head",
        "q_remove",
        "q_heartbeat",
        "q_record_grant",
        "q_take_grants",
        "q_take_grant",
    ] {
        assert!(
            QUEUE_FRAGMENT.contains(&format!("local function {name}(")),
            "{name} missing"
        );
    }
}

#[tokio::test]
async fn decode_and_enqueue_contracts() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = connect(&server).await?;
    let keys = Keyspace::new(unique_prefix(&server, "frag"))?.group("g");

    let e = entry_with(
        "replica-a",
        EntryMeta {
            est_tokens: 1200,
            prompt_tokens: 800,
            deadline_ms: 1_700_000_000_123,
        },
    );
    let decode = composite(
        "local e = q_decode(ARGV[1]); return {e.id, e.owner, e.est, e.prompt, e.deadline, q_decode('x|y') == nil and 1 or 0}",
    );
    let (id, owner, est, prompt, deadline, malformed_is_nil): (String, String, u64, u64, u64, u8) =
        decode.arg(e.member()).invoke_async(&mut conn).await?;
    assert_eq!(id, e.id().simple().to_string());
    assert_eq!(owner, "replica-a");
    assert_eq!((est, prompt, deadline), (1200, 800, 1_700_000_000_123));
    assert_eq!(malformed_is_nil, 1);

    // q_enqueue returns `score, rank`, or `false, depth` when full.
    let enqueue = composite(
        "local a, b = q_enqueue(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]); if a then return {1, a, b} end; return {0, b}",
    );
    let mut state = QueueState::new();
    for (i, priority) in [3_u32, 1, 1 << 20].into_iter().enumerate() {
        let e = entry("replica-a");
        let reply: Vec<u64> = enqueue
            .key(&keys.queue)
            .key(&keys.seq)
            .arg(e.member())
            .arg(priority)
            .arg(3)
            .invoke_async(&mut conn)
            .await?;
        let expected = state.enqueue("g", Priority::new(priority)?, &e, 3)?;
        assert_eq!(
            reply,
            vec![1, expected.score.get(), expected.position],
            "entry {i}"
        );
    }
    let reply: Vec<u64> = enqueue
        .key(&keys.queue)
        .key(&keys.seq)
        .arg(entry("replica-a").member())
        .arg(0)
        .arg(3)
        .invoke_async(&mut conn)
        .await?;
    assert_eq!(reply, vec![0, 3]);
    Ok(())
}

#[tokio::test]
async fn better_waiting_and_head_agree_with_state() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = connect(&server).await?;
    let keys = Keyspace::new(unique_prefix(&server, "frag"))?.group("g");
    let clock = Clock::new();
    let mut state = QueueState::new();

    let better = composite("return q_better_waiting(KEYS[1], ARGV[1]) and 1 or 0");
    let enqueue = composite("return q_enqueue(KEYS[1], KEYS[2], ARGV[1], ARGV[2], 0)");
    let heartbeat = composite("q_heartbeat(KEYS[1], ARGV[1], now + tonumber(ARGV[2])); return 1");
    let head = composite(
        "local removed = {}; local m, s = q_head(KEYS[1], KEYS[2], now, removed); return {removed, m or '', s or -1}",
    );

    let check_better = |state: &QueueState| {
        [0_u32, 2, 3, 4, 1 << 20].map(|p| state.better_waiting("g", Priority::new(p).unwrap()))
    };
    let mut redis_better = Vec::new();
    for p in [0_u32, 2, 3, 4, 1 << 20] {
        let b: u8 = better
            .key(&keys.queue)
            .arg(p)
            .invoke_async(&mut conn)
            .await?;
        redis_better.push(b == 1);
    }
    assert_eq!(redis_better, check_better(&state));

    // Two dead entries (unknown owner, passed deadline) in front of a live one.
    let ghost = entry("replica-gone");
    let late = entry_with(
        "replica-a",
        EntryMeta {
            deadline_ms: 1,
            ..EntryMeta::default()
        },
    );
    let live = entry("replica-a");
    for (e, p) in [(&ghost, 3_u32), (&late, 3), (&live, 4)] {
        let _: u64 = enqueue
            .key(&keys.queue)
            .key(&keys.seq)
            .arg(e.member())
            .arg(p)
            .invoke_async(&mut conn)
            .await?;
        state.enqueue("g", Priority::new(p)?, e, 0)?;
    }
    let _: u8 = heartbeat
        .key(&keys.owners)
        .arg("replica-a")
        .arg(60_000)
        .invoke_async(&mut conn)
        .await?;
    state.heartbeat("g", "replica-a", clock.now_ms() + 60_000);

    let mut redis_better = Vec::new();
    for p in [0_u32, 2, 3, 4, 1 << 20] {
        let b: u8 = better
            .key(&keys.queue)
            .arg(p)
            .invoke_async(&mut conn)
            .await?;
        redis_better.push(b == 1);
    }
    assert_eq!(redis_better, check_better(&state));
    assert_eq!(redis_better, vec![false, false, true, true, true]);

    let (removed, member, score): (Vec<String>, String, i64) = head
        .key(&keys.queue)
        .key(&keys.owners)
        .invoke_async(&mut conn)
        .await?;
    let mut state_removed = Vec::new();
    let state_head = state.head("g", clock.now_ms(), &mut state_removed).unwrap();
    assert_eq!(
        removed,
        vec![ghost.member().to_owned(), late.member().to_owned()]
    );
    assert_eq!(
        state_removed
            .iter()
            .map(|q| q.entry.member().to_owned())
            .collect::<Vec<_>>(),
        removed
    );
    assert_eq!(member, live.member());
    assert_eq!(state_head.entry, live);
    assert_eq!(score as u64, state_head.score.get());
    // q_head leaves the live head in place.
    let again: (Vec<String>, String, i64) = head
        .key(&keys.queue)
        .key(&keys.owners)
        .invoke_async(&mut conn)
        .await?;
    assert_eq!(again.1, live.member());
    Ok(())
}

#[tokio::test]
async fn grants_agree_with_state() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    let mut conn = connect(&server).await?;
    let keys = Keyspace::new(unique_prefix(&server, "frag"))?.group("g");
    let mut state = QueueState::new();

    let record = composite("q_record_grant(KEYS[1], ARGV[1], ARGV[2]); return 1");
    let take_all = composite("return q_take_grants(KEYS[1], ARGV[1])");
    let take_one = composite("return q_take_grant(KEYS[1], ARGV[1])");

    let a1 = entry("replica-a");
    let a2 = entry("replica-a");
    let b1 = entry("replica-b");
    for (i, e) in [&a1, &a2, &b1].into_iter().enumerate() {
        let payload = format!("dep{i}|1700000000000");
        let _: u8 = record
            .key(&keys.grants)
            .arg(e.member())
            .arg(&payload)
            .invoke_async(&mut conn)
            .await?;
        state.record_grant("g", e, payload);
    }

    let flat: Vec<String> = take_all
        .key(&keys.grants)
        .arg("replica-a")
        .invoke_async(&mut conn)
        .await?;
    let mut from_redis: Vec<(String, String)> = flat
        .chunks(2)
        .map(|c| (c[0].clone(), c[1].clone()))
        .collect();
    let mut from_state: Vec<(String, String)> = state
        .take_grants("g", "replica-a")
        .into_iter()
        .map(|g| (g.entry.member().to_owned(), g.payload))
        .collect();
    from_redis.sort();
    from_state.sort();
    assert_eq!(from_redis, from_state);
    assert_eq!(from_redis.len(), 2);
    let again: Vec<String> = take_all
        .key(&keys.grants)
        .arg("replica-a")
        .invoke_async(&mut conn)
        .await?;
    assert!(again.is_empty());
    assert!(state.take_grants("g", "replica-a").is_empty());

    let one: Option<String> = take_one
        .key(&keys.grants)
        .arg(b1.member())
        .invoke_async(&mut conn)
        .await?;
    assert_eq!(one, state.take_grant("g", &b1));
    assert_eq!(one.as_deref(), Some("dep2|1700000000000"));
    let none: Option<String> = take_one
        .key(&keys.grants)
        .arg(b1.member())
        .invoke_async(&mut conn)
        .await?;
    assert_eq!(none, None);
    assert_eq!(state.take_grant("g", &b1), None);
    Ok(())
}
