//! A replica killed with SIGKILL while its clients' requests wait at the head of the shared queue, or while
//! its request holds the deployment's slot at the upstream: the other replicas' waiting requests proceed
//! within about a second (the dead replica's liveness, three missed heartbeats, not its `queue_lease` or
//! `inflight_lease`), all of them complete, and nothing of the dead replica is left in Redis.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{client, eventually, mock_answering_after, shared_group_config, signal, Proxy};
use serde_json::{json, Value};
use testkit::{Behavior, RecordedRequest, RedisServer};

/// The longest the group may stall after the kill: no upstream start while waiters exist and capacity is
/// free (the default heartbeat of 0.25 s makes a replica dead after 0.75 s).
const STALL_MS: u64 = 1000;
/// How long the request holding the deployment's only slot stays at the upstream.
const HOLD: Duration = Duration::from_millis(1000);

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn tag_of(r: &RecordedRequest) -> &str {
    r.body
        .get("user")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

async fn zcard(conn: &redis::aio::MultiplexedConnection, key: &str) -> u64 {
    let mut conn = conn.clone();
    redis::cmd("ZCARD")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap_or(u64::MAX)
}

async fn hlen(conn: &redis::aio::MultiplexedConnection, key: &str) -> u64 {
    let mut conn = conn.clone();
    redis::cmd("HLEN")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap_or(u64::MAX)
}

/// Posts a chat request tagged `tag` to `proxy` in the background; yields the status.
fn post(
    http: &reqwest::Client,
    proxy: &Proxy,
    tag: &str,
    priority: u32,
) -> tokio::task::JoinHandle<Result<u16, String>> {
    let request = http.post(proxy.url("/v1/chat/completions")).json(&json!({
        "model": "shared",
        "messages": [{"role": "user", "content": "hello there"}],
        "user": tag,
        "priority": priority,
        "timeout": 10,
    }));
    tokio::spawn(async move {
        request
            .send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    })
}

/// Waits until the group's queue (`queue_key`) holds `n` entries.
async fn queued(conn: &redis::aio::MultiplexedConnection, queue_key: &str, n: u64) -> bool {
    eventually(Duration::from_secs(10), || async {
        zcard(conn, queue_key).await == n
    })
    .await
}

/// Three replicas share one deployment that takes one request at a time. C's request holds the slot; A's
/// clients queue three priority-0 requests (the head of the queue), B's clients three priority-5 requests;
/// then A is killed with SIGKILL, without any chance to cancel its entries. The slot frees while A may still
/// count as alive, so admission may first grant A's dead entries; B's requests must nevertheless reach the
/// upstream within a second of the slot freeing (or of the kill, if the slot freed before), every one of
/// them completes (their clients give up after 10 s), and the queue, the grants and the deployment's
/// in-flight leases end empty. The leases keep their defaults (`queue_lease` 10 s, `inflight_lease` 30 s):
/// capacity granted to the dead replica's entries must come back with its liveness, not with a lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_stalls_its_group_for_less_than_a_second() {
    let redis = RedisServer::start().await.unwrap();
    let upstream = mock_answering_after(Duration::from_millis(20)).await;
    let config = shared_group_config(&upstream.base_url(), &redis, "solo", 1, "");
    let a = Proxy::start(&config, &[]).unwrap();
    let b = Proxy::start(&config, &[]).unwrap();
    let c = Proxy::start(&config, &[]).unwrap();
    let http = client();
    let queue = format!("{}{{shared}}:q", redis.prefix());
    let grants = format!("{}{{shared}}:grants", redis.prefix());
    let inflight = format!("{}{{shared}}:d:solo:if", redis.prefix());
    let conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();

    upstream.push_behavior(Behavior::ok().with_latency(HOLD));
    let holder = post(&http, &c, "holder", 0);
    assert!(
        upstream
            .wait_for_in_flight(1, Duration::from_secs(10))
            .await,
        "the holder never reached the upstream"
    );
    let held_since = Instant::now();
    let mut a_requests = Vec::new();
    for i in 0..3 {
        a_requests.push(post(&http, &a, &format!("a-{i}"), 0));
        assert!(
            queued(&conn, &queue, i + 1).await,
            "A's request {i} was not queued"
        );
    }
    let mut b_requests = Vec::new();
    for i in 0..3 {
        b_requests.push((format!("b-{i}"), post(&http, &b, &format!("b-{i}"), 5)));
        assert!(
            queued(&conn, &queue, 4 + i).await,
            "B's request {i} was not queued"
        );
    }
    assert!(
        held_since.elapsed() < HOLD - Duration::from_millis(100) && upstream.request_count() == 1,
        "setup too slow: the holder ended before the kill ({:?})",
        held_since.elapsed()
    );

    signal(a.pid(), "KILL");
    let killed_at = epoch_ms();
    for r in a_requests {
        // A's clients lose their connection; they are not the subject.
        let _ = r.await;
    }

    let mut b_statuses = Vec::new();
    for (tag, r) in b_requests {
        b_statuses.push((tag, r.await.unwrap()));
    }
    assert_eq!(holder.await.unwrap(), Ok(200), "the holder failed");

    let seen = upstream.requests();
    assert!(
        seen.iter().all(|r| !tag_of(r).starts_with("a-")),
        "a request of the killed replica reached the upstream"
    );
    let holder_end = seen
        .iter()
        .find(|r| tag_of(r) == "holder")
        .map(|r| r.epoch_ms + HOLD.as_millis() as u64)
        .unwrap();
    let first_b = seen
        .iter()
        .filter(|r| tag_of(r).starts_with("b-"))
        .map(|r| r.epoch_ms)
        .min();
    // Capacity is free from the later of the holder's end and the kill; the group may stall for less than
    // a second after that.
    let bound = holder_end.max(killed_at) + STALL_MS;
    assert!(
        first_b.is_some_and(|t| t <= bound) && b_statuses.iter().all(|(_, s)| *s == Ok(200)),
        "B's requests ended {b_statuses:?}; the first reached the upstream {} after A was killed (holder \
         ended {} ms after the kill, bound {} ms)",
        first_b.map_or("never".to_owned(), |t| format!("{} ms", t - killed_at)),
        holder_end.saturating_sub(killed_at),
        bound - killed_at
    );

    let clean = eventually(Duration::from_secs(3), || async {
        zcard(&conn, &queue).await == 0
            && hlen(&conn, &grants).await == 0
            && zcard(&conn, &inflight).await == 0
    })
    .await;
    assert!(
        clean,
        "left in Redis: queue {}, grants {}, in-flight leases {}",
        zcard(&conn, &queue).await,
        hlen(&conn, &grants).await,
        zcard(&conn, &inflight).await
    );
    drop((b, c));
}

/// A replica killed while its request holds the deployment's only slot at the upstream (for far longer than
/// the test): the slot comes back with the dead replica's liveness (0.75 s), not with its in-flight lease
/// (`inflight_lease` keeps its default, 30 s). B's queued requests reach the upstream within two seconds of
/// the kill, all complete, the dead request is not run again, and the in-flight leases end empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_slot_at_the_upstream_comes_back_with_its_liveness() {
    const BOUND_MS: u64 = 2000;
    let redis = RedisServer::start().await.unwrap();
    let upstream = mock_answering_after(Duration::from_millis(20)).await;
    let config = shared_group_config(&upstream.base_url(), &redis, "solo", 1, "");
    let a = Proxy::start(&config, &[]).unwrap();
    let b = Proxy::start(&config, &[]).unwrap();
    let http = client();
    let queue = format!("{}{{shared}}:q", redis.prefix());
    let owners = format!("{}{{shared}}:owners", redis.prefix());
    let inflight = format!("{}{{shared}}:d:solo:if", redis.prefix());
    let conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();

    upstream.push_behavior(Behavior::ok().with_latency(Duration::from_secs(60)));
    let stuck = post(&http, &a, "a-stuck", 0);
    assert!(
        upstream
            .wait_for_in_flight(1, Duration::from_secs(10))
            .await,
        "A's request never reached the upstream"
    );
    // A's heartbeat (a poll step every 0.25 s while it has a request in flight) registers it in the group.
    assert!(
        eventually(Duration::from_secs(5), || async {
            zcard(&conn, &owners).await == 1
        })
        .await,
        "A never heartbeated in the group"
    );
    let mut b_requests = Vec::new();
    for i in 0..3 {
        b_requests.push(post(&http, &b, &format!("b-{i}"), 0));
        assert!(
            queued(&conn, &queue, i + 1).await,
            "B's request {i} was not queued"
        );
    }

    signal(a.pid(), "KILL");
    let killed_at = epoch_ms();
    let _ = stuck.await;
    for r in b_requests {
        assert_eq!(r.await.unwrap(), Ok(200), "a request of B failed");
    }
    let seen = upstream.requests();
    let first_b = seen
        .iter()
        .filter(|r| tag_of(r).starts_with("b-"))
        .map(|r| r.epoch_ms)
        .min()
        .unwrap();
    assert!(
        first_b <= killed_at + BOUND_MS,
        "B's first request reached the upstream {} ms after A was killed (bound {BOUND_MS} ms)",
        first_b.saturating_sub(killed_at)
    );
    assert_eq!(
        seen.iter().filter(|r| tag_of(r) == "a-stuck").count(),
        1,
        "the dead replica's request ran again"
    );
    assert!(
        eventually(Duration::from_secs(3), || async {
            zcard(&conn, &inflight).await == 0 && zcard(&conn, &queue).await == 0
        })
        .await,
        "left in Redis: in-flight leases {}, queue {}",
        zcard(&conn, &inflight).await,
        zcard(&conn, &queue).await
    );
    drop(b);
}
