//! Helpers shared by the priority-admission acceptance tests: replicas sharing one Redis (a redis-server of
//! their own, or a prefix of their own on `TEST_REDIS_URL`; or one router on the in-memory backends), a mock upstream, requests tagged so the upstream's recorder tells them apart,
//! and probes of the scheduler's Redis keys.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use router::{
    Backend, DeploymentHealth, Endpoint, Router, RouterConfig, RouterError, RouterRequest,
    RouterResponse,
};
use serde_json::{json, Value};
use store::{GroupKeys, Keyspace, RedisConfig};
use testkit::{Behavior, MockUpstream, MockUpstreamConfig, RedisCluster, RedisServer};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A request running in its own task.
pub type Pending = JoinHandle<Result<RouterResponse, RouterError>>;

/// Where the replicas keep their shared state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// One router on the in-memory backends.
    Memory,
    /// This many independent routers (each with its own pool) on one fresh Redis.
    Redis(usize),
    /// This many independent routers (each with its own Cluster client) on the test binary's shared
    /// Redis Cluster (3 primaries + 3 replicas), under a prefix of the test's own.
    RedisCluster(usize),
}

/// A probe connection to the scheduler's Redis: one server's, or a Cluster client's (which routes each
/// command to its slot's primary).
#[derive(Clone)]
pub enum Probe {
    /// One server.
    Single(MultiplexedConnection),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Probe {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Probe::Single(c) => c.req_packed_command(cmd),
            Probe::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Probe::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Probe::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Probe::Single(c) => c.get_db(),
            Probe::Cluster(c) => c.get_db(),
        }
    }
}

/// The Redis backend on a Redis Cluster (short timeouts, `prefix`).
pub fn cluster_backend(cluster: &RedisCluster, prefix: &str) -> Backend {
    let nodes = cluster.node_urls();
    Backend::Redis(RedisConfig {
        url: nodes[0].clone(),
        pool_size: 8,
        command_timeout: Duration::from_secs(2),
        key_prefix: prefix.to_owned(),
        topology: store::RedisTopology::Cluster { nodes },
        ..RedisConfig::default()
    })
}

/// A probe connection to `cluster`.
pub async fn cluster_probe(cluster: &RedisCluster) -> anyhow::Result<Probe> {
    let client = redis::cluster::ClusterClientBuilder::new(cluster.node_urls())
        .response_timeout(Duration::from_secs(10))
        .build()?;
    Ok(Probe::Cluster(client.get_async_connection().await?))
}

/// A mock upstream answering after `latency`.
pub async fn upstream_with_latency(latency: Duration) -> anyhow::Result<MockUpstream> {
    MockUpstream::start_with(MockUpstreamConfig {
        behavior: Behavior::ok().with_latency(latency),
        ..MockUpstreamConfig::default()
    })
    .await
}

/// A `model_list` entry: deployment `id` of `group` on `upstream` (upstream model `m-<id>`), with the
/// `litellm_params` in `params` (limits such as `rpm` or `max_parallel_requests`).
pub fn deployment(group: &str, id: &str, upstream: &MockUpstream, params: Value) -> Value {
    let mut p = json!({
        "model": format!("openai/m-{id}"),
        "api_base": upstream.base_url(),
        "api_key": "sk-test",
    });
    if let (Some(p), Value::Object(extra)) = (p.as_object_mut(), params) {
        p.extend(extra);
    }
    json!({"model_name": group, "litellm_params": p, "model_info": {"id": id}})
}

/// A chat request for `group`, tagged `tag` in the forwarded `user` field, with `priority` in the body when
/// given (the configured default otherwise).
pub fn tagged(group: &str, tag: &str, priority: Option<u32>) -> RouterRequest {
    tagged_with(group, tag, priority, json!({}))
}

/// [`tagged`] with extra body fields (`timeout`, ...).
pub fn tagged_with(group: &str, tag: &str, priority: Option<u32>, extra: Value) -> RouterRequest {
    let mut body = json!({
        "model": group,
        "messages": [{"role": "user", "content": "Say hello"}],
        "user": tag,
    });
    if let Some(p) = priority {
        body["priority"] = json!(p);
    }
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    match RouterRequest::from_json(Endpoint::ChatCompletions, body) {
        Ok(r) => r,
        Err(e) => panic!("bad test request: {e}"),
    }
}

/// The `user` tag of a request body.
fn tag_of(body: &Value) -> Option<&str> {
    body.get("user").and_then(Value::as_str)
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Arrival {
    pub tag: String,
    /// The upstream model (`m-<deployment id>`).
    pub model: String,
    pub epoch_ms: u64,
    pub at: Instant,
    pub body: Value,
}

/// The upstream's requests in arrival order.
pub fn arrivals(upstream: &MockUpstream) -> Vec<Arrival> {
    upstream
        .requests()
        .into_iter()
        .map(|r| Arrival {
            tag: tag_of(&r.body).unwrap_or_default().to_owned(),
            model: r
                .body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            epoch_ms: r.epoch_ms,
            at: r.at,
            body: r.body,
        })
        .collect()
}

/// Tags of the upstream's requests whose tag starts with `prefix`, in arrival order.
pub fn arrival_tags(upstream: &MockUpstream, prefix: &str) -> Vec<String> {
    arrivals(upstream)
        .into_iter()
        .filter(|a| a.tag.starts_with(prefix))
        .map(|a| a.tag)
        .collect()
}

/// Pairs (i, j), i before j in `order`, whose keys are the other way round.
pub fn inversions<K: Ord>(order: &[K]) -> usize {
    let mut n = 0;
    for i in 0..order.len() {
        for j in i + 1..order.len() {
            if order[j] < order[i] {
                n += 1;
            }
        }
    }
    n
}

/// Wall-clock epoch milliseconds (the clock Redis `TIME` and the mock's recorder use on this host).
pub fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Polls `check` every 5 ms until it returns true or `timeout` passes; returns the last answer.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Routers sharing one state backend, one mock upstream and, on Redis, a probe connection.
pub struct Cluster {
    pub kind: Kind,
    pub upstream: MockUpstream,
    pub replicas: Vec<Router>,
    conn: Option<Probe>,
    keyspace: Keyspace,
    /// Queue and grant members already attributed to a submitted request (Redis).
    seen: Mutex<HashSet<String>>,
    /// Every request started, for telling when one entered admission on the memory backend.
    started: Mutex<Vec<Started>>,
    /// Last, so the routers are dropped before their server.
    pub redis: Option<RedisServer>,
    /// The shared Redis Cluster of [`Kind::RedisCluster`].
    pub redis_cluster: Option<Arc<RedisCluster>>,
}

impl Cluster {
    /// Starts `kind`'s backend and its routers, all built from `config` (a `config.yaml`-shaped value).
    pub async fn start(
        kind: Kind,
        config: Value,
        upstream: MockUpstream,
    ) -> anyhow::Result<Cluster> {
        let redis = match kind {
            Kind::Memory => None,
            Kind::Redis(_) => Some(RedisServer::start().await?),
            Kind::RedisCluster(n) => {
                let prefix = RedisCluster::fresh_prefix();
                let shared = RedisCluster::shared().await?;
                return Cluster::start_on_cluster(n, shared, &prefix, config, upstream).await;
            }
        };
        Cluster::start_on(kind, redis, config, upstream).await
    }

    /// [`Cluster::start`] on `redis` (`Some` for the Redis kinds), e.g. a server of the test's own.
    pub async fn start_on(
        kind: Kind,
        redis: Option<RedisServer>,
        config: Value,
        upstream: MockUpstream,
    ) -> anyhow::Result<Cluster> {
        let (backend, keyspace, n) = match (kind, &redis) {
            (Kind::Memory, None) => (Backend::Memory, Keyspace::default(), 1),
            (Kind::Redis(n), Some(server)) => {
                (redis_backend(server), Keyspace::new(server.prefix())?, n)
            }
            _ => bail!("a {kind:?} cluster on {redis:?}"),
        };
        let mut replicas = Vec::with_capacity(n);
        for _ in 0..n {
            let cfg = RouterConfig::from_json(config.clone())?;
            replicas.push(Router::new(cfg, backend.clone()).await?);
        }
        let conn = match &redis {
            // Probes may queue behind bursts of admission steps: allow more than the default 500 ms.
            Some(server) => Some(Probe::Single(
                redis::Client::open(server.url())?
                    .get_multiplexed_async_connection_with_config(
                        &redis::AsyncConnectionConfig::new()
                            .set_response_timeout(Some(Duration::from_secs(10))),
                    )
                    .await?,
            )),
            None => None,
        };
        Ok(Cluster {
            kind,
            upstream,
            replicas,
            conn,
            keyspace,
            seen: Mutex::new(HashSet::new()),
            started: Mutex::new(Vec::new()),
            redis,
            redis_cluster: None,
        })
    }

    /// `n` routers built from `config` on the Redis Cluster `redis_cluster`, under `prefix`.
    pub async fn start_on_cluster(
        n: usize,
        redis_cluster: Arc<RedisCluster>,
        prefix: &str,
        config: Value,
        upstream: MockUpstream,
    ) -> anyhow::Result<Cluster> {
        let backend = cluster_backend(&redis_cluster, prefix);
        let mut replicas = Vec::with_capacity(n);
        for _ in 0..n {
            let cfg = RouterConfig::from_json(config.clone())?;
            replicas.push(Router::new(cfg, backend.clone()).await?);
        }
        Ok(Cluster {
            kind: Kind::RedisCluster(n),
            upstream,
            replicas,
            conn: Some(cluster_probe(&redis_cluster).await?),
            keyspace: Keyspace::new(prefix)?,
            seen: Mutex::new(HashSet::new()),
            started: Mutex::new(Vec::new()),
            redis: None,
            redis_cluster: Some(redis_cluster),
        })
    }

    /// Number of replicas.
    pub fn n(&self) -> usize {
        self.replicas.len()
    }

    /// Replica `i` (modulo the number of replicas).
    pub fn replica(&self, i: usize) -> &Router {
        &self.replicas[i % self.replicas.len()]
    }

    /// The Redis keys of `group`.
    pub fn keys(&self, group: &str) -> GroupKeys {
        self.keyspace.group(group)
    }

    /// A probe connection to the one redis-server ([`Kind::Redis`] only).
    pub fn conn(&self) -> anyhow::Result<MultiplexedConnection> {
        match self.probe()? {
            Probe::Single(conn) => Ok(conn),
            Probe::Cluster(_) => bail!("this fleet runs on a Redis Cluster: use probe()"),
        }
    }

    /// A probe connection to the shared Redis (one server or a Cluster).
    pub fn probe(&self) -> anyhow::Result<Probe> {
        self.conn.clone().context("this cluster has no Redis")
    }

    /// Starts `req` on replica `i` without waiting for admission.
    pub async fn spawn(&self, i: usize, req: RouterRequest) -> Pending {
        let done = Arc::new(AtomicBool::new(false));
        self.started.lock().unwrap().push(Started {
            tag: tag_of(&Value::Object(req.body.clone()))
                .unwrap_or_default()
                .to_owned(),
            group: req.model.clone(),
            priority: priority_of(&req),
            done: done.clone(),
        });
        let router = self.replica(i).clone();
        tokio::spawn(async move {
            let _done = SetOnDrop(done);
            router.completion(req).await
        })
    }

    /// Starts `req` on replica `i` and returns once it waits in the queue, was granted or reached the
    /// upstream, so that requests submitted one after another have a defined arrival order.
    ///
    /// On Redis a request counts as submitted when a queue or grant member nobody was credited with appears
    /// (so requests must be submitted one at a time), when its tag reaches the upstream, or when it ends. On
    /// the memory backend, where entries are not visible, it counts as submitted when the requests of its
    /// group and priority that are waiting, reached the upstream, or ended without reaching it add up to all
    /// that were started: each term counts only requests that did enter admission (one granted but not yet
    /// at the upstream counts in none), so the sum reaches that number only once this one entered too.
    pub async fn submit(&self, i: usize, req: RouterRequest) -> anyhow::Result<Pending> {
        let tag = tag_of(&Value::Object(req.body.clone()))
            .unwrap_or_default()
            .to_owned();
        let group = req.model.clone();
        let priority = priority_of(&req);
        let pending = self.spawn(i, req).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let entered = match &self.conn {
                Some(conn) => self.new_member(conn, &group).await?,
                None => self.all_entered(&group, priority).await?,
            };
            if entered
                || pending.is_finished()
                || self
                    .upstream
                    .requests()
                    .iter()
                    .any(|r| tag_of(&r.body) == Some(&tag))
            {
                return Ok(pending);
            }
            if Instant::now() >= deadline {
                bail!("request {tag} was neither queued nor admitted within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Whether a queue or grant member of `group` appeared that no submitted request was credited with.
    async fn new_member(&self, conn: &Probe, group: &str) -> anyhow::Result<bool> {
        let keys = self.keys(group);
        let mut conn = conn.clone();
        let (queued, granted): (Vec<String>, Vec<String>) = redis::pipe()
            .cmd("ZRANGE")
            .arg(&keys.queue)
            .arg(0)
            .arg(-1)
            .cmd("HKEYS")
            .arg(&keys.grants)
            .query_async(&mut conn)
            .await?;
        let mut seen = self.seen.lock().unwrap();
        let fresh = queued
            .iter()
            .chain(granted.iter())
            .find(|m| !seen.contains(*m))
            .cloned();
        Ok(fresh.is_some_and(|m| seen.insert(m)))
    }

    /// Whether every started request of `group` at `priority` entered admission (see [`Cluster::submit`]).
    async fn all_entered(&self, group: &str, priority: u32) -> anyhow::Result<bool> {
        let waiting: u64 = self.replicas[0]
            .queue_depths()
            .await?
            .iter()
            .filter(|d| d.group == group && d.priority == priority)
            .map(|d| d.waiting)
            .sum();
        let arrived: HashSet<String> = arrivals(&self.upstream)
            .into_iter()
            .map(|a| a.tag)
            .collect();
        let started = self.started.lock().unwrap();
        let mine: Vec<&Started> = started
            .iter()
            .filter(|s| s.group == group && s.priority == priority)
            .collect();
        let reached = mine.iter().filter(|s| arrived.contains(&s.tag)).count() as u64;
        let ended = mine
            .iter()
            .filter(|s| !arrived.contains(&s.tag) && s.done.load(Ordering::SeqCst))
            .count() as u64;
        Ok(waiting + reached + ended >= mine.len() as u64)
    }

    /// Entries waiting in `group`'s queue: `ZCARD` on Redis, the router's queue depths in memory.
    pub async fn depth(&self, group: &str) -> anyhow::Result<u64> {
        match &self.conn {
            Some(conn) => {
                let mut conn = conn.clone();
                Ok(redis::cmd("ZCARD")
                    .arg(self.keys(group).queue)
                    .query_async(&mut conn)
                    .await?)
            }
            None => Ok(self.replicas[0]
                .queue_depths()
                .await?
                .iter()
                .filter(|d| d.group == group)
                .map(|d| d.waiting)
                .sum()),
        }
    }

    /// Grants not yet taken by their replica (Redis only).
    pub async fn grants(&self, group: &str) -> anyhow::Result<u64> {
        let mut conn = self.probe()?;
        Ok(redis::cmd("HLEN")
            .arg(self.keys(group).grants)
            .query_async(&mut conn)
            .await?)
    }

    /// In-flight leases of deployment `id`, expired ones included (Redis only).
    pub async fn in_flight_leases(&self, group: &str, id: &str) -> anyhow::Result<u64> {
        let mut conn = self.probe()?;
        Ok(redis::cmd("ZCARD")
            .arg(self.keys(group).deployment_inflight(id))
            .query_async(&mut conn)
            .await?)
    }

    /// Waits until `group`'s queue holds `n` entries.
    pub async fn wait_for_depth(
        &self,
        group: &str,
        n: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let depth = self.depth(group).await?;
            if depth == n {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "queue of {group} holds {depth} entries, not {n}, after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits (bounded) until every replica's releases have run: answered requests release their capacity
    /// in the background, right after the answer. Reads local state only (no Redis command).
    pub async fn wait_settled(&self) -> anyhow::Result<()> {
        let settled = eventually(Duration::from_secs(5), || async {
            self.replicas.iter().all(|r| r.releases_pending() == 0)
        })
        .await;
        anyhow::ensure!(settled, "releases still pending");
        Ok(())
    }

    /// Usage of deployment `id` as replica 0 reports it.
    pub async fn health(&self, id: &str) -> anyhow::Result<DeploymentHealth> {
        self.replicas[0]
            .health()
            .await?
            .into_iter()
            .find(|d| d.id == id)
            .with_context(|| format!("no deployment {id}"))
    }

    /// Requests that reached the upstream model of deployment `id` (`m-<id>`) in the current usage window
    /// (`window` long, aligned to multiples of its length, as the usage counters are).
    pub fn sent_in_window(&self, id: &str, window: Duration) -> u64 {
        let window_ms = window.as_millis() as u64;
        let now = epoch_ms();
        let start = now - now % window_ms;
        let model = format!("m-{id}");
        arrivals(&self.upstream)
            .iter()
            .filter(|a| a.model == model && a.epoch_ms >= start)
            .count() as u64
    }

    /// Asserts that nothing of `group` is left behind once every request ended: no queue entry, no untaken
    /// grant, no in-flight lease on `deployments`, and each deployment's request count in the current usage
    /// window (`window` long) equals the requests that reached the upstream in it: a request that never
    /// reached the upstream gives its count back. Polls for up to 3 s: cancellations and give-backs run in the
    /// background. Use a long window (an hour) so the test does not straddle a window boundary.
    pub async fn assert_clean(
        &self,
        group: &str,
        deployments: &[&str],
        window: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let (clean, state) = self.leftovers(group, deployments, window).await;
            if clean {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "state left behind after every request ended: {state}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Whether `group` is clean (see [`Cluster::assert_clean`]) and what was found.
    async fn leftovers(
        &self,
        group: &str,
        deployments: &[&str],
        window: Duration,
    ) -> (bool, String) {
        let mut state = String::new();
        let mut ok = true;
        let depth = self.depth(group).await.unwrap_or(u64::MAX);
        state.push_str(&format!("queue {depth}; "));
        ok &= depth == 0;
        if self.conn.is_some() {
            let grants = self.grants(group).await.unwrap_or(u64::MAX);
            state.push_str(&format!("grants {grants}; "));
            ok &= grants == 0;
            for id in deployments {
                let leases = self.in_flight_leases(group, id).await.unwrap_or(u64::MAX);
                state.push_str(&format!("{id}: {leases} in-flight leases; "));
                ok &= leases == 0;
            }
        }
        for id in deployments {
            match self.health(id).await {
                Ok(h) => {
                    let sent = self.sent_in_window(id, window);
                    state.push_str(&format!(
                        "{id}: in_flight {}, rpm_used {} (sent {sent}); ",
                        h.in_flight, h.rpm_used
                    ));
                    ok &= h.in_flight == 0 && h.rpm_used == sent;
                }
                Err(e) => {
                    state.push_str(&format!("{id}: {e}; "));
                    ok = false;
                }
            }
        }
        (ok, state)
    }

    /// Stops every replica's pollers.
    pub async fn shutdown(&self) {
        for r in &self.replicas {
            r.shutdown().await;
        }
    }
}

/// A request started through [`Cluster::spawn`].
struct Started {
    tag: String,
    group: String,
    priority: u32,
    /// Set when the request's task ends (or is aborted).
    done: Arc<AtomicBool>,
}

/// Sets its flag when dropped: when a request's future completes or is dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The router's default priority (`router_settings.default_priority`, not set by these tests).
pub const DEFAULT_PRIORITY: u32 = 128;

/// The priority `req` waits at.
fn priority_of(req: &RouterRequest) -> u32 {
    req.priority.map(|p| p.get()).unwrap_or_else(|| {
        req.body
            .get("priority")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .unwrap_or(DEFAULT_PRIORITY)
    })
}

/// The Redis backend on `server` (short timeouts, the test's own prefix).
pub fn redis_backend(server: &RedisServer) -> Backend {
    Backend::Redis(RedisConfig {
        url: server.url(),
        pool_size: 8,
        command_timeout: Duration::from_secs(2),
        key_prefix: server.prefix().to_owned(),
        ..RedisConfig::default()
    })
}

/// Awaits a request that must succeed; names it in the error.
pub async fn expect_ok(tag: &str, pending: Pending) -> anyhow::Result<RouterResponse> {
    match pending.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => bail!("request {tag} failed with {}: {e}", e.status_code()),
        Err(e) => bail!("request {tag} panicked or was cancelled: {e}"),
    }
}

/// Runs each named `async fn(Kind) -> anyhow::Result<()>` of the including test file on three replicas
/// sharing a fresh redis-server, on three replicas sharing the test binary's Redis Cluster, and on one
/// in-memory router.
#[allow(unused_macros)] // not every test file runs on both backends
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Kind::Redis(3)).await
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Kind::Memory).await
                }
            )*
        }
        mod redis_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Kind::RedisCluster(3)).await
                }
            )*
        }
    };
}
