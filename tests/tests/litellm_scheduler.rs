//! LiteLLM's documented scheduler behaviour as black-box tests (groups are independent, priority 0 before 1,
//! first come first served on ties, nothing is admitted while every deployment cools down, removed entries keep
//! the rest in order, priority 0 is never skipped), and bad input: an out-of-range priority is a typed 400, a
//! full queue a 429 with Retry-After at once. Each runs on three replicas on one Redis and on one in-memory
//! router.

#[macro_use]
mod common;

use std::time::Duration;

use anyhow::{bail, ensure};
use common::{
    arrival_tags, arrivals, expect_ok, tagged, tagged_with, upstream_with_latency, Cluster, Kind,
};
use queue_core::Priority;
use router::RouterError;
use serde_json::{json, Value};
use testkit::{Behavior, MockUpstream};
use tokio::time::Instant;

const LATENCY: Duration = Duration::from_millis(20);

/// Usage window of these tests: the request counts checked at the end stay in one window.
const HOUR: Duration = Duration::from_secs(3600);

fn settings(extra: Value) -> Value {
    let mut s = json!({"num_retries": 0, "timeout": 30, "usage_window": 3600});
    if let (Some(s), Value::Object(e)) = (s.as_object_mut(), extra) {
        s.extend(e);
    }
    s
}

/// Group `g` with one deployment `dep-a` that takes one request at a time.
fn one_at_a_time(upstream: &MockUpstream, extra_settings: Value) -> Value {
    json!({
        "model_list": [common::deployment("g", "dep-a", upstream, json!({"max_parallel_requests": 1}))],
        "router_settings": settings(extra_settings),
    })
}

/// Starts a request holding `g`'s only slot for `hold` and waits until the upstream has it.
async fn hold_the_slot(cluster: &Cluster, hold: Duration) -> anyhow::Result<common::Pending> {
    cluster
        .upstream
        .push_behavior(Behavior::ok().with_latency(hold));
    let blocker = cluster.submit(0, tagged("g", "blocker", Some(0))).await?;
    ensure!(
        cluster
            .upstream
            .wait_for_in_flight(1, Duration::from_secs(5))
            .await,
        "the blocker never reached the upstream"
    );
    Ok(blocker)
}

/// A saturated group with a queue does not delay another group: its requests (also through the queue
/// endpoint's semantics) complete on every replica while the first group's blocker and queue are still there.
async fn two_groups_do_not_block_each_other(kind: Kind) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(LATENCY).await?;
    let config = json!({
        "model_list": [
            common::deployment("g", "dep-a", &upstream, json!({"max_parallel_requests": 1})),
            common::deployment("free", "dep-free", &upstream, json!({})),
        ],
        "router_settings": settings(json!({})),
    });
    let cluster = Cluster::start(kind, config, upstream).await?;
    let blocker = hold_the_slot(&cluster, Duration::from_secs(2)).await?;
    let mut busy = Vec::new();
    for i in 0..3 {
        let tag = format!("busy-{i}");
        busy.push((
            tag.clone(),
            cluster.submit(i, tagged("g", &tag, Some(0))).await?,
        ));
    }
    for i in 0..cluster.n() * 2 {
        let mut req = tagged("free", &format!("free-{i}"), Some(5));
        req.force_queue = i % 2 == 1;
        let started = Instant::now();
        let done =
            tokio::time::timeout(Duration::from_secs(1), cluster.replica(i).completion(req)).await;
        match done {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("free-{i} failed: {e}"),
            Err(_) => bail!(
                "free-{i} waited behind the other group for {:?}",
                started.elapsed()
            ),
        }
    }
    ensure!(
        arrival_tags(&cluster.upstream, "busy-").is_empty(),
        "the blocker ended before the other group was tested"
    );
    ensure!(
        cluster.depth("g").await? == 3,
        "the busy group's queue changed"
    );
    for (tag, p) in busy {
        expect_ok(&tag, p).await?;
    }
    expect_ok("blocker", blocker).await?;
    cluster.assert_clean("g", &["dep-a"], HOUR).await?;
    cluster.assert_clean("free", &["dep-free"], HOUR).await?;
    cluster.shutdown().await;
    Ok(())
}

/// Submits `(tag, priority)` one at a time over the replicas while the slot is held, then checks the upstream
/// served them in `want` order.
async fn served_in_order(
    cluster: &Cluster,
    requests: &[(&str, Option<u32>)],
    want: &[&str],
) -> anyhow::Result<()> {
    let blocker = hold_the_slot(cluster, Duration::from_millis(600)).await?;
    let mut pending = Vec::new();
    for (i, (tag, priority)) in requests.iter().enumerate() {
        pending.push((
            tag.to_string(),
            cluster.submit(i, tagged("g", tag, *priority)).await?,
        ));
    }
    ensure!(
        cluster.upstream.request_count() == 1,
        "setup too slow: the blocker finished before every request was queued"
    );
    for (tag, p) in pending {
        expect_ok(&tag, p).await?;
    }
    expect_ok("blocker", blocker).await?;
    let got = arrival_tags(&cluster.upstream, "r-");
    ensure!(got == want, "served {got:?}, want {want:?}");
    Ok(())
}

/// Priority 0 before priority 1, and equal priorities first come first served.
async fn priority_zero_before_one_and_fifo_on_ties(kind: Kind) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(LATENCY).await?;
    let cluster = Cluster::start(kind, one_at_a_time(&upstream, json!({})), upstream).await?;
    served_in_order(
        &cluster,
        &[
            ("r-a", Some(1)),
            ("r-b", Some(1)),
            ("r-c", Some(0)),
            ("r-d", Some(0)),
            ("r-e", Some(1)),
            ("r-f", Some(0)),
        ],
        &["r-c", "r-d", "r-f", "r-a", "r-b", "r-e"],
    )
    .await?;
    cluster.assert_clean("g", &["dep-a"], HOUR).await?;
    cluster.shutdown().await;
    Ok(())
}

/// Priority 0 is the most important: a priority-0 request waiting on one replica gets the freed slot although
/// other replicas keep offering priority-1 requests that could take it on the fast path; the rest follows by
/// priority, the default priority (128, for a request naming none) and the largest one (2^20) included.
async fn priority_zero_is_never_skipped(kind: Kind) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(LATENCY).await?;
    let cluster = Cluster::start(kind, one_at_a_time(&upstream, json!({})), upstream).await?;
    let blocker = hold_the_slot(&cluster, Duration::from_millis(400)).await?;
    let mut pending = Vec::new();
    for (i, (tag, priority)) in [
        ("r-max", Some(Priority::MAX.get())),
        ("r-mid", Some(5)),
        ("r-default", None),
        ("r-zero", Some(0)),
    ]
    .into_iter()
    .enumerate()
    {
        pending.push((
            tag.to_owned(),
            cluster.submit(i, tagged("g", tag, priority)).await?,
        ));
    }
    // Priority-1 requests keep coming from the other replicas until the priority-0 one was served.
    let mut late = Vec::new();
    let mut i = 0;
    while !arrival_tags(&cluster.upstream, "r-zero")
        .iter()
        .any(|t| t == "r-zero")
    {
        ensure!(late.len() < 500, "r-zero was never served");
        let tag = format!("r-late-{i}");
        pending.push((
            tag.clone(),
            cluster.submit(i + 1, tagged("g", &tag, Some(1))).await?,
        ));
        late.push(tag);
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (tag, p) in pending {
        expect_ok(&tag, p).await?;
    }
    expect_ok("blocker", blocker).await?;
    let got = arrival_tags(&cluster.upstream, "r-");
    let mut want = vec!["r-zero".to_owned()];
    want.extend(late);
    want.extend(["r-mid", "r-default", "r-max"].map(str::to_owned));
    ensure!(got == want, "served {got:?}, want {want:?}");
    cluster.assert_clean("g", &["dep-a"], HOUR).await?;
    cluster.shutdown().await;
    Ok(())
}

/// Both deployments of a group answer 429 (Retry-After 1 s and 30 s) and cool down. Requests queued during the
/// cooldown wait: nothing reaches the upstream before the first cooldown ends; then they are admitted from the
/// head, in (priority, arrival) order, on the deployment whose cooldown ended.
async fn during_cooldown_requests_wait_then_are_admitted_in_order(
    kind: Kind,
) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(LATENCY).await?;
    let config = json!({
        "model_list": [
            common::deployment("g", "dep-a", &upstream, json!({"max_parallel_requests": 1})),
            common::deployment("g", "dep-b", &upstream, json!({"max_parallel_requests": 1})),
        ],
        "router_settings": settings(json!({"num_retries": 1})),
    });
    let cluster = Cluster::start(kind, config, upstream).await?;
    cluster.upstream.push_behavior(Behavior::rate_limited(1));
    cluster.upstream.push_behavior(Behavior::rate_limited(30));
    match cluster
        .replica(0)
        .completion(tagged("g", "trigger", Some(0)))
        .await
    {
        Err(e) => ensure!(e.status_code() == 429, "the trigger failed with {e}"),
        Ok(_) => bail!("the trigger succeeded; both deployments should have answered 429"),
    }
    let seen = arrivals(&cluster.upstream);
    ensure!(
        seen.len() == 2,
        "the trigger reached the upstream {} times",
        seen.len()
    );
    let (short, long) = (seen[0].model.clone(), seen[1].model.clone());
    ensure!(short != long, "the retry used the same deployment: {short}");
    // The cooldown starts when the 429 is settled, after it arrived.
    let cooldown_ends_after = seen[0].epoch_ms + 1000;

    let requests = [
        (3, "r-0"),
        (1, "r-1"),
        (3, "r-2"),
        (0, "r-3"),
        (2, "r-4"),
        (1, "r-5"),
    ];
    let mut pending = Vec::new();
    for (i, (priority, tag)) in requests.iter().enumerate() {
        pending.push((
            tag.to_string(),
            cluster.submit(i, tagged("g", tag, Some(*priority))).await?,
        ));
    }
    ensure!(
        cluster.upstream.request_count() == 2,
        "a request was admitted during the cooldown (or the setup outlasted it)"
    );
    for (tag, p) in pending {
        expect_ok(&tag, p).await?;
    }
    let served: Vec<common::Arrival> = arrivals(&cluster.upstream)
        .into_iter()
        .filter(|a| a.tag.starts_with("r-"))
        .collect();
    for a in &served {
        ensure!(
            a.epoch_ms >= cooldown_ends_after,
            "{} reached the upstream {} ms before the cooldown ended",
            a.tag,
            cooldown_ends_after - a.epoch_ms
        );
        ensure!(
            a.model == short,
            "{} went to {}, which is still cooling down",
            a.tag,
            a.model
        );
    }
    let got: Vec<&str> = served.iter().map(|a| a.tag.as_str()).collect();
    let want = ["r-3", "r-1", "r-5", "r-4", "r-0", "r-2"];
    ensure!(got == want, "served {got:?}, want {want:?}");
    cluster.assert_clean("g", &["dep-a", "dep-b"], HOUR).await?;
    cluster.shutdown().await;
    Ok(())
}

/// One waiting entry times out (its request `timeout`) and another is abandoned by its client; they never reach
/// the upstream and the others keep their order.
async fn removed_entries_keep_the_rest_in_order(kind: Kind) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(LATENCY).await?;
    let cluster = Cluster::start(kind, one_at_a_time(&upstream, json!({})), upstream).await?;
    let blocker = hold_the_slot(&cluster, Duration::from_millis(1500)).await?;
    let r0 = cluster.submit(0, tagged("g", "r-0", Some(2))).await?;
    let started = Instant::now();
    let r1 = cluster
        .submit(1, tagged_with("g", "r-1", Some(1), json!({"timeout": 0.2})))
        .await?;
    let r2 = cluster.submit(2, tagged("g", "r-2", Some(1))).await?;
    let r3 = cluster.submit(3, tagged("g", "r-3", Some(0))).await?;
    let r4 = cluster.submit(4, tagged("g", "r-4", Some(2))).await?;
    r3.abort();
    match r1.await? {
        Err(RouterError::QueueTimeout { .. }) => {}
        Err(e) => bail!("r-1 failed with {e}, not a queue timeout"),
        Ok(_) => bail!("r-1 was served after its timeout"),
    }
    let waited = started.elapsed();
    ensure!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(1000),
        "r-1 gave up after {waited:?}, its timeout is 200 ms"
    );
    ensure!(
        r3.await.is_err_and(|e| e.is_cancelled()),
        "r-3 was not cancelled"
    );
    cluster
        .wait_for_depth("g", 3, Duration::from_secs(1))
        .await?;
    ensure!(
        cluster.upstream.request_count() == 1,
        "setup too slow: the blocker ended"
    );
    for (tag, p) in [("r-0", r0), ("r-2", r2), ("r-4", r4)] {
        expect_ok(tag, p).await?;
    }
    expect_ok("blocker", blocker).await?;
    let got = arrival_tags(&cluster.upstream, "r-");
    ensure!(got == ["r-2", "r-0", "r-4"], "served {got:?}");
    cluster.assert_clean("g", &["dep-a"], HOUR).await?;
    cluster.shutdown().await;
    Ok(())
}

/// A priority outside 0..=2^20 (or not an integer) is a typed 400 naming `priority`, for the body field, and
/// cannot even be built as a typed priority; 2^20 itself is served.
async fn out_of_range_priority_is_a_typed_400(kind: Kind) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(Duration::ZERO).await?;
    let cluster = Cluster::start(kind, one_at_a_time(&upstream, json!({})), upstream).await?;
    let max = i64::from(Priority::MAX.get());
    ensure!(max == 1 << 20);
    for bad in [
        json!(max + 1),
        json!(-1),
        json!(1.5),
        json!("high"),
        json!(u64::MAX),
    ] {
        let req = tagged_with("g", "bad", None, json!({"priority": bad}));
        match cluster.replica(0).completion(req).await {
            Err(e @ RouterError::BadRequest { .. }) => {
                ensure!(e.status_code() == 400, "{bad}: status {}", e.status_code());
                ensure!(
                    e.param() == Some("priority"),
                    "{bad}: param {:?}",
                    e.param()
                );
            }
            Err(e) => bail!(
                "priority {bad}: {e} ({}), not a bad request",
                e.status_code()
            ),
            Ok(_) => bail!("priority {bad} was accepted"),
        }
    }
    ensure!(Priority::try_from(max + 1).is_err() && Priority::try_from(-1_i64).is_err());
    ensure!(Priority::new(Priority::MAX.get() + 1).is_err());
    ensure!(
        cluster.upstream.request_count() == 0,
        "a bad request reached the upstream"
    );

    let ok = cluster
        .replica(0)
        .completion(tagged_with("g", "max", None, json!({"priority": max})))
        .await;
    ensure!(ok.is_ok(), "priority 2^20 refused: {:?}", ok.err());
    let mut typed = tagged("g", "typed-max", None);
    typed.priority = Some(Priority::MAX);
    ensure!(cluster.replica(0).completion(typed).await.is_ok());
    cluster.shutdown().await;
    Ok(())
}

/// With `max_queue_depth: 2` and two requests waiting, a third is refused at once with 429 and a Retry-After,
/// although its timeout would let it wait 30 s; it never reaches the upstream, and once the queue drains new
/// requests are accepted again.
async fn full_queue_answers_429_with_retry_after_at_once(kind: Kind) -> anyhow::Result<()> {
    let upstream = upstream_with_latency(LATENCY).await?;
    let config = one_at_a_time(&upstream, json!({"max_queue_depth": 2}));
    let cluster = Cluster::start(kind, config, upstream).await?;
    let blocker = hold_the_slot(&cluster, Duration::from_millis(800)).await?;
    let q0 = cluster.submit(0, tagged("g", "q-0", Some(5))).await?;
    let q1 = cluster.submit(1, tagged("g", "q-1", Some(5))).await?;
    for (i, priority) in [5, 0].into_iter().enumerate() {
        let started = Instant::now();
        let refused = cluster
            .replica(2 + i)
            .completion(tagged("g", "overflow", Some(priority)))
            .await;
        let took = started.elapsed();
        match refused {
            Err(e @ RouterError::QueueFull { .. }) => {
                ensure!(e.status_code() == 429, "status {}", e.status_code());
                let retry = e.retry_after();
                ensure!(
                    retry.is_some_and(|d| !d.is_zero()),
                    "no Retry-After: {retry:?}"
                );
            }
            Err(e) => bail!(
                "overflow failed with {e} ({}), not a full queue",
                e.status_code()
            ),
            Ok(_) => bail!("overflow was served"),
        }
        ensure!(
            took < Duration::from_millis(500),
            "the refusal took {took:?}"
        );
    }
    ensure!(
        cluster.upstream.request_count() == 1,
        "setup too slow: the blocker ended"
    );
    ensure!(cluster.depth("g").await? == 2);
    expect_ok("q-0", q0).await?;
    expect_ok("q-1", q1).await?;
    expect_ok("blocker", blocker).await?;
    ensure!(arrival_tags(&cluster.upstream, "overflow").is_empty());
    let after = cluster
        .replica(0)
        .completion(tagged("g", "after", Some(5)))
        .await;
    ensure!(
        after.is_ok(),
        "refused after the queue drained: {:?}",
        after.err()
    );
    cluster.assert_clean("g", &["dep-a"], HOUR).await?;
    cluster.shutdown().await;
    Ok(())
}

on_both_backends!(
    two_groups_do_not_block_each_other,
    priority_zero_before_one_and_fifo_on_ties,
    priority_zero_is_never_skipped,
    during_cooldown_requests_wait_then_are_admitted_in_order,
    removed_entries_keep_the_rest_in_order,
    out_of_range_priority_is_a_typed_400,
    full_queue_answers_429_with_retry_after_at_once,
);
