//! The scheduler on a Redis Cluster (3 primaries + 3 replicas): groups spread over the shards and run at
//! once, every group's keys live on its own slot's primary, and when one primary dies its replica takes
//! over: that shard's groups succeed again within the failover time plus 2 s while the other shards' groups
//! never fail.

#[macro_use]
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context};
use common::{tagged, upstream_with_latency, Cluster};
use serde_json::json;
use store::Keyspace;
use testkit::{RedisCluster, CLUSTER_NODE_TIMEOUT};
use tokio::time::Instant;

/// `n` group names whose hash tags land on `n` different primaries of `cluster` (the first found, in
/// `g0, g1, ...` order), each with the port of its primary.
async fn groups_on_distinct_primaries(
    cluster: &RedisCluster,
    keyspace: &Keyspace,
    n: usize,
) -> anyhow::Result<Vec<(String, u16)>> {
    let mut found: Vec<(String, u16)> = Vec::new();
    for i in 0..1000 {
        let group = format!("g{i}");
        let port = cluster
            .primary_of_slot(Keyspace::slot(keyspace.group(&group).queue))
            .await?;
        if found.iter().all(|(_, p)| *p != port) {
            found.push((group, port));
            if found.len() == n {
                return Ok(found);
            }
        }
    }
    anyhow::bail!("no {n} groups on distinct primaries")
}

/// When each request of one group ended and whether it succeeded.
type Outcomes = Arc<Mutex<Vec<(Instant, bool)>>>;

fn config(groups: &[(String, u16)], upstream: &testkit::MockUpstream) -> serde_json::Value {
    let model_list: Vec<_> = groups
        .iter()
        .map(|(g, _)| {
            common::deployment(
                g,
                &format!("{g}-a"),
                upstream,
                json!({"max_parallel_requests": 2}),
            )
        })
        .collect();
    json!({
        "model_list": model_list,
        "router_settings": {"num_retries": 0, "timeout": 30, "usage_window": 3600},
    })
}

/// Three groups whose keys hash to three different primaries run at once through three replicas: every
/// request is admitted (the wait queue of each group works on its own shard, with its limit of 2 in
/// flight), and each group's keys live on its own primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_on_three_primaries_run_at_once() -> anyhow::Result<()> {
    let redis_cluster = RedisCluster::shared().await?;
    let prefix = RedisCluster::fresh_prefix();
    let keyspace = Keyspace::new(prefix.clone())?;
    let groups = groups_on_distinct_primaries(&redis_cluster, &keyspace, 3).await?;
    let upstream = upstream_with_latency(Duration::from_millis(30)).await?;
    let config = config(&groups, &upstream);
    let fleet =
        Cluster::start_on_cluster(3, redis_cluster.clone(), &prefix, config, upstream).await?;
    let mut pending = Vec::new();
    for round in 0..8 {
        for (i, (g, _)) in groups.iter().enumerate() {
            let req = tagged(g, &format!("{g}-{round}"), Some(1));
            pending.push((g.clone(), fleet.spawn(i + round, req).await));
        }
    }
    for (g, p) in pending {
        let answer = p.await.context("request task")?;
        ensure!(answer.is_ok(), "a request of {g} failed: {answer:?}");
    }
    for (g, port) in &groups {
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?
            .get_multiplexed_async_connection()
            .await?;
        let seq: bool = redis::cmd("EXISTS")
            .arg(&keyspace.group(g).seq)
            .query_async(&mut conn)
            .await?;
        ensure!(seq, "{g}'s sequence is not on its primary {port}");
    }
    Ok(())
}

/// A primary is killed (by pid); its replica is promoted. Requests of the group on that shard succeed
/// again within the failover time plus 2 s; the groups on the other two shards never fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_fails_over_and_only_its_groups_pause() -> anyhow::Result<()> {
    let mut redis_cluster = RedisCluster::start().await?;
    let prefix = RedisCluster::fresh_prefix();
    let keyspace = Keyspace::new(prefix.clone())?;
    let groups = groups_on_distinct_primaries(&redis_cluster, &keyspace, 3).await?;
    let upstream = upstream_with_latency(Duration::from_millis(5)).await?;
    // The test keeps the cluster to itself (it kills a node): the routers get a backend built from the
    // node URLs.
    let nodes = redis_cluster.node_urls();
    let backend = router::Backend::Redis(store::RedisConfig {
        url: nodes[0].clone(),
        pool_size: 8,
        command_timeout: Duration::from_secs(1),
        key_prefix: prefix.clone(),
        topology: store::RedisTopology::Cluster { nodes },
        ..store::RedisConfig::default()
    });
    let mut fleet = Vec::new();
    for _ in 0..3 {
        let config = router::RouterConfig::from_json(config(&groups, &upstream))?;
        fleet.push(router::Router::new(config, backend.clone()).await?);
    }
    let fleet = Arc::new(fleet);
    let stop = Arc::new(AtomicBool::new(false));
    let logs: Vec<Outcomes> = (0..3).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let mut tasks = Vec::new();
    for (i, (g, _)) in groups.iter().enumerate() {
        for r in 0..2 {
            let fleet = fleet.clone();
            let group = g.clone();
            let stop = stop.clone();
            let log = logs[i].clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let req = tagged(&group, &format!("{group}-{r}-{n}"), Some(1));
                    let answer = tokio::time::timeout(
                        Duration::from_secs(5),
                        fleet[(i + r) % fleet.len()].completion(req),
                    )
                    .await;
                    let ok = answer.as_ref().is_ok_and(|r| r.is_ok());
                    if i > 0 && !ok {
                        eprintln!("{group}: {:?}", answer.map(|r| r.err()));
                    }
                    log.lock().unwrap().push((Instant::now(), ok));
                    if !ok {
                        // 503 while the shard has no primary: pace the retries.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }));
        }
    }
    // Everything works before the fault.
    let warm = Instant::now() + Duration::from_secs(10);
    while logs
        .iter()
        .any(|l| l.lock().unwrap().iter().filter(|(_, ok)| *ok).count() < 5)
    {
        ensure!(Instant::now() < warm, "the groups did not start succeeding");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (victim_group, victim) = groups[0].clone();
    let slot = Keyspace::slot(keyspace.group(&victim_group).queue);
    let killed_at = Instant::now();
    redis_cluster.kill_node(victim);
    let promoted = redis_cluster
        .wait_failover(slot, victim, Duration::from_secs(30))
        .await?;
    let failover_time = killed_at.elapsed();
    let promoted_at = killed_at + failover_time;
    // The victim's group succeeds again within the failover time plus 2 s.
    let deadline = promoted_at + Duration::from_secs(2);
    let recovered = loop {
        let first_ok_after = logs[0]
            .lock()
            .unwrap()
            .iter()
            .find(|(at, ok)| *ok && *at > promoted_at)
            .map(|(at, _)| *at);
        if let Some(at) = first_ok_after {
            break at;
        }
        ensure!(
            Instant::now() < deadline + Duration::from_millis(500),
            "{victim_group} did not succeed within failover ({failover_time:?}) + 2 s after its primary \
             {victim} died (promoted: {promoted})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    ensure!(
        recovered <= deadline,
        "{victim_group} succeeded again only {:?} after the failover",
        recovered - promoted_at
    );
    // Keep the other groups running a little past the recovery, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await?;
    }
    for (i, (g, port)) in groups.iter().enumerate().skip(1) {
        let log = logs[i].lock().unwrap();
        let failed = log.iter().filter(|(_, ok)| !ok).count();
        let during = log.iter().filter(|(at, ok)| *ok && *at > killed_at).count();
        ensure!(
            failed == 0,
            "{g} on the healthy primary {port} failed {failed} time(s) during the failover"
        );
        ensure!(during > 0, "{g} made no progress during the failover");
    }
    eprintln!(
        "failover of {victim} took {failover_time:?} (cluster-node-timeout {CLUSTER_NODE_TIMEOUT:?}); \
         {victim_group} succeeded again {:?} after the promotion",
        recovered.saturating_duration_since(promoted_at)
    );
    Ok(())
}

/// Durable jobs of groups on three primaries: each job's record, queue entry and runs stay on its group's
/// slot (submit, claim, run and finish are single-slot steps), submitted on one replica and run by any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_groups_on_three_primaries_finish() -> anyhow::Result<()> {
    let redis_cluster = RedisCluster::shared().await?;
    let prefix = RedisCluster::fresh_prefix();
    let keyspace = Keyspace::new(prefix.clone())?;
    let groups = groups_on_distinct_primaries(&redis_cluster, &keyspace, 3).await?;
    let upstream = upstream_with_latency(Duration::from_millis(10)).await?;
    let config = config(&groups, &upstream);
    let fleet =
        Cluster::start_on_cluster(2, redis_cluster.clone(), &prefix, config, upstream).await?;
    let caller = router::JobCaller {
        identity: "tester".to_owned(),
        admin: false,
    };
    let mut tickets = Vec::new();
    for (i, (g, _)) in groups.iter().enumerate() {
        for n in 0..2 {
            let req = tagged(g, &format!("{g}-job-{n}"), Some(1));
            tickets.push(fleet.replica(i).submit_job(req, &caller).await?);
        }
    }
    for ticket in tickets {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let report = fleet
                .replica(1)
                .job(&ticket.id, &caller, Duration::from_secs(2))
                .await?;
            match report.phase {
                router::JobPhase::Finished(router::JobOutcome::Result(_)) => break,
                router::JobPhase::Finished(other) => {
                    anyhow::bail!("job {} ended {other:?}", ticket.id)
                }
                _ => ensure!(
                    Instant::now() < deadline,
                    "job {} did not finish",
                    ticket.id
                ),
            }
        }
    }
    Ok(())
}
