//! Each behaviour of the key store is one body run against Redis (three `Keys` on their own pools standing in
//! for replicas) and against memory (one instance).

use std::time::Duration;

use keys::{KeyError, KeyId, KeyLimits, KeyRecord, KeySpec, Keys, Refusal};
use serde_json::json;
use store::RedisConnection;
use testkit::RedisServer;
use tokio::time::Instant;

async fn redis_replicas(server: &RedisServer, n: usize) -> anyhow::Result<Vec<Keys>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let pool = store::create_pool(&server.url(), 4, Duration::from_secs(2))?;
        out.push(Keys::redis(
            RedisConnection::new(pool, Duration::from_secs(2)),
            server.prefix(),
        ));
    }
    Ok(out)
}

async fn new_key(keys: &Keys, body: serde_json::Value) -> anyhow::Result<(String, KeyId)> {
    let secret = keys::generate_secret();
    let id = KeyId::of_secret(&secret);
    let mut record = KeyRecord {
        token: Some(id.clone()),
        ..KeyRecord::default()
    };
    KeySpec::parse(&body, false)?.apply(&mut record, keys.now_ms())?;
    keys.store().create(&record).await?;
    Ok((secret, id))
}

async fn records_are_created_changed_and_deleted(replicas: &[Keys]) -> anyhow::Result<()> {
    let (a, b) = (&replicas[0], &replicas[replicas.len() - 1]);
    let (secret, id) = new_key(
        a,
        json!({"key_alias": "team-a", "rpm_limit": 5, "models": ["gpt-4o"]}),
    )
    .await?;
    let seen = b
        .lookup(&secret)
        .await?
        .expect("visible on the other replica at once");
    assert_eq!(seen.key_alias.as_deref(), Some("team-a"));
    assert_eq!(seen.token.as_ref(), Some(&id));
    let again = KeyRecord {
        token: Some(id.clone()),
        ..KeyRecord::default()
    };
    assert!(matches!(
        a.store().create(&again).await,
        Err(KeyError::Exists)
    ));

    let mut changed = (*seen).clone();
    KeySpec::parse(&json!({"rpm_limit": null, "tpm_limit": 100}), true)?
        .apply(&mut changed, a.now_ms())?;
    assert!(
        a.store()
            .update(&id, &changed, &["rpm_limit", "tpm_limit"])
            .await?
    );
    let stored = b.store().get(&id).await?.expect("still there");
    assert_eq!((stored.rpm_limit, stored.tpm_limit), (None, Some(100)));
    assert_eq!(stored.models, ["gpt-4o"], "fields not named stay");

    assert_eq!(a.store().list().await?, vec![id.clone()]);
    assert_eq!(
        b.store()
            .delete(&[id.clone(), KeyId::of_secret("nope")])
            .await?,
        vec![id.clone()]
    );
    assert!(
        !a.store().update(&id, &changed, &["rpm_limit"]).await?,
        "no resurrection"
    );
    let refused_within = Instant::now();
    loop {
        if a.lookup(&secret).await?.is_none() {
            break;
        }
        assert!(refused_within.elapsed() < keys::CACHE_TTL + Duration::from_millis(200));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a.store().list().await?.is_empty());
    Ok(())
}

async fn rpm_is_exact_across_replicas(replicas: &[Keys]) -> anyhow::Result<()> {
    let (_, id) = new_key(&replicas[0], json!({"rpm_limit": 5})).await?;
    let limits = KeyLimits {
        rpm: Some(5),
        ..KeyLimits::default()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let tries = (0..15).map(|i| {
        let keys = replicas[i % replicas.len()].clone();
        let id = id.clone();
        async move { keys.acquire(&id, limits, 10, deadline).await }
    });
    let results = futures::future::join_all(tries).await;
    let granted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(granted, 5, "{results:?}");
    for r in &results {
        if let Err(refusal) = r {
            assert!(
                matches!(refusal, Refusal::RateLimited { tokens: false, retry_after } if *retry_after <= keys::WINDOW)
            );
        }
    }
    // A request the model group refused gives its place back.
    let mut permits: Vec<_> = results.into_iter().filter_map(Result::ok).collect();
    permits[0].give_back();
    drop(permits);
    let keys = &replicas[0];
    let back = async {
        loop {
            if let Ok(p) = keys.acquire(&id, limits, 10, deadline).await {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let _p = tokio::time::timeout(Duration::from_secs(3), back).await?;
    assert_eq!(keys.store().usage(&id).await?.rpm_used, 5);
    Ok(())
}

async fn parallel_limit_waits_without_blocking_other_keys(replicas: &[Keys]) -> anyhow::Result<()> {
    let (a, b) = (&replicas[0], &replicas[replicas.len() - 1]);
    let (_, one) = new_key(a, json!({"max_parallel_requests": 1})).await?;
    let (_, other) = new_key(a, json!({"max_parallel_requests": 1})).await?;
    let limits = KeyLimits {
        parallel: Some(1),
        ..KeyLimits::default()
    };
    let far = Instant::now() + Duration::from_secs(10);
    let first = a.acquire(&one, limits, 1, far).await?;
    // The same key on another replica waits ...
    let waiting = tokio::spawn({
        let b = b.clone();
        let one = one.clone();
        async move {
            b.acquire(&one, limits, 1, far)
                .await
                .map(|_p| Instant::now())
        }
    });
    // ... while another key goes through at once, and a short deadline ends the wait.
    let _other =
        tokio::time::timeout(Duration::from_secs(2), b.acquire(&other, limits, 1, far)).await??;
    let soon = Instant::now() + Duration::from_millis(100);
    assert!(matches!(
        b.acquire(&one, limits, 1, soon).await,
        Err(Refusal::TimedOut)
    ));
    assert!(!waiting.is_finished());
    assert_eq!(a.store().usage(&one).await?.in_flight, 1);
    let released_at = Instant::now();
    drop(first);
    let admitted_at = tokio::time::timeout(Duration::from_secs(3), waiting).await???;
    assert!(admitted_at >= released_at);
    Ok(())
}

async fn spend_adds_up_and_restarts_with_the_budget_period(
    replicas: &[Keys],
) -> anyhow::Result<()> {
    let keys = &replicas[0];
    let (_, id) = new_key(keys, json!({"max_budget": 0.001, "budget_duration": "1h"})).await?;
    let now = keys.now_ms();
    keys.store().add_spend(&id, 0.0004, now).await?;
    keys.store().add_spend(&id, 0.0004, now).await?;
    let r = keys.store().get(&id).await?.expect("exists");
    assert!((r.spend - 0.0008).abs() < 1e-9, "{}", r.spend);
    assert!(!r.over_budget(now));
    keys.store().add_spend(&id, 0.0004, now).await?;
    let r = keys.store().get(&id).await?.expect("exists");
    assert!(r.over_budget(now));
    // An hour later the period rolled: spend reads zero, and the next request starts it again.
    let later = now + 3_600_001;
    assert!(!r.over_budget(later));
    keys.store().add_spend(&id, 0.0001, later).await?;
    let r = keys.store().get(&id).await?.expect("exists");
    assert!((r.spend - 0.0001).abs() < 1e-9 && r.budget_reset_at_ms > Some(later));
    Ok(())
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn redis() -> anyhow::Result<()> {
                let server = RedisServer::start().await?;
                let replicas = redis_replicas(&server, 3).await?;
                super::$name(&replicas).await
            }

            #[tokio::test]
            async fn memory() -> anyhow::Result<()> {
                super::$name(&[Keys::memory()]).await
            }
        }
    };
}

both!(records_are_created_changed_and_deleted);
both!(rpm_is_exact_across_replicas);
both!(parallel_limit_waits_without_blocking_other_keys);
both!(spend_adds_up_and_restarts_with_the_budget_period);

#[tokio::test]
async fn redis_holds_no_secret_and_one_slot_per_key() -> anyhow::Result<()> {
    let server = RedisServer::start().await?;
    let replicas = redis_replicas(&server, 1).await?;
    let keys = &replicas[0];
    let (secret, id) = new_key(keys, json!({"max_parallel_requests": 2, "rpm_limit": 9})).await?;
    let _p = keys
        .acquire(
            &id,
            KeyLimits {
                parallel: Some(2),
                rpm: Some(9),
                tpm: None,
            },
            5,
            Instant::now() + Duration::from_secs(1),
        )
        .await?;
    let names = server.keys().await?;
    let mine: Vec<&String> = names.iter().filter(|n| n.contains(id.as_str())).collect();
    assert_eq!(mine.len(), 3, "{names:?}");
    let slots: std::collections::HashSet<u16> = mine.iter().map(store::Keyspace::slot).collect();
    assert_eq!(slots.len(), 1, "one slot per key");
    let text = server.dump_text().await?;
    assert!(
        text.contains(id.as_str()) && text.contains("rpm_limit"),
        "{text}"
    );
    assert!(
        !text.contains(&secret[3..]),
        "the secret is in Redis:\n{text}"
    );
    Ok(())
}
