//! Multi-process Redis topologies of a test: a Redis Cluster (3 primaries + 3 replicas) and a Sentinel
//! group (a primary, a replica, 3 sentinels), each on free loopback ports in a temp dir, killed by pid on
//! drop (and by a watchdog when the test process exits, for fixtures shared in a `static`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::OnceCell;

use crate::redis_server::{free_port, redis_server_bin};

/// `cluster-node-timeout` of the fixture's nodes: a killed primary is failed over within about twice this.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// `down-after-milliseconds` of the fixture's sentinels.
pub const SENTINEL_DOWN_AFTER: Duration = Duration::from_millis(1000);

/// The name the fixture's sentinels monitor their primary under.
pub const SENTINEL_SERVICE: &str = "mymaster";

/// How long a cluster or sentinel group gets to become healthy.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// Deadline of each call the fixture makes.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A primary's port and the slot ranges (`first..=last`) it serves.
pub type Shard = (u16, Vec<(u16, u16)>);

/// Slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// One `redis-server` process of a topology.
struct Node {
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn spawn(bin: &Path, dir: &Path, port: u16, args: &[String]) -> anyhow::Result<Node> {
        let node_dir = dir.join(port.to_string());
        std::fs::create_dir_all(&node_dir)?;
        let child = Command::new(bin)
            .args(args)
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .arg("--dir")
            .arg(&node_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        Ok(Node {
            port,
            child: Some(child),
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills `pids` once the current process is gone (a fixture kept in a `static` is never dropped).
fn watchdog(pids: &[u32]) -> anyhow::Result<Child> {
    let list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ");
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 0.5; done; kill -9 {list} 2>/dev/null",
        std::process::id()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawning the fixture's watchdog")
}

/// A free port whose Cluster bus port (`port + 10000`) is free too, both below the kernel's ephemeral
/// range (32768 and up), which a busy machine's closed connections fill with TIME-WAIT entries.
fn free_cluster_port() -> anyhow::Result<u16> {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    for _ in 0..1000 {
        let port = 12000 + rand::random::<u16>() % 10000;
        if free(port) && free(port + 10000) {
            return Ok(port);
        }
    }
    bail!("no free port with a free cluster bus port")
}

fn url(port: u16) -> String {
    format!("redis://127.0.0.1:{port}/")
}

/// Runs `cmd` on a fresh connection to `port`, within [`CALL_TIMEOUT`].
async fn call<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> anyhow::Result<T> {
    let client = redis::Client::open(url(port))?;
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut conn).await
    };
    Ok(tokio::time::timeout(CALL_TIMEOUT, attempt)
        .await
        .context("timed out")??)
}

/// Polls `check` every 50 ms until it answers true or `timeout` passes.
async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{what} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn answers_ping(port: u16) -> bool {
    call::<String>(port, &redis::cmd("PING")).await.is_ok()
}

/// The value of `field` in an `INFO`-style text.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

fn fresh_prefix() -> String {
    format!("tk-{:016x}:", rand::random::<u64>())
}

/// Redis Cluster slot of `key` (CRC16/XMODEM of its hash tag, or of the whole key, modulo 16384).
pub fn cluster_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(bytes);
    let crc = hashed.iter().fold(0u16, |mut crc, &byte| {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
        crc
    });
    crc % SLOTS
}

/// A local Redis Cluster: 3 primaries and 3 replicas (`--cluster-replicas 1`) on free ports of 127.0.0.1,
/// `cluster-node-timeout` [`CLUSTER_NODE_TIMEOUT`], `cluster-require-full-coverage no` (the other shards
/// serve while one fails over); every process killed (by pid) on drop.
///
/// Tests share one cluster per test binary with [`RedisCluster::shared`] and keep their keys under a
/// prefix of their own ([`RedisCluster::fresh_prefix`]); a test that kills nodes starts its own with
/// [`RedisCluster::start`].
pub struct RedisCluster {
    nodes: Vec<Node>,
    _watchdog: Option<WatchdogGuard>,
    _dir: tempfile::TempDir,
}

struct WatchdogGuard(Child);

impl Drop for WatchdogGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCluster")
            .field("ports", &self.ports())
            .finish()
    }
}

static SHARED_CLUSTER: OnceCell<Arc<RedisCluster>> = OnceCell::const_new();

impl RedisCluster {
    /// A new cluster of the caller's own, formed and healthy: `cluster info` says `ok` on every node and
    /// every replica is in sync with its primary.
    pub async fn start() -> anyhow::Result<RedisCluster> {
        let mut last = None;
        for _ in 0..3 {
            match RedisCluster::try_start().await {
                Ok(cluster) => return Ok(cluster),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the cluster did not form")))
    }

    /// One cluster for every test of the test binary (started by the first caller, killed when the
    /// binary exits). Tests keep to their own prefix and must not kill its nodes.
    pub async fn shared() -> anyhow::Result<Arc<RedisCluster>> {
        SHARED_CLUSTER
            .get_or_try_init(|| async { RedisCluster::start().await.map(Arc::new) })
            .await
            .cloned()
    }

    /// A key prefix no other test gets (no braces: keys add their own hash tags).
    pub fn fresh_prefix() -> String {
        fresh_prefix()
    }

    async fn try_start() -> anyhow::Result<RedisCluster> {
        let bin = redis_server_bin()?;
        let cli = redis_cli_bin()?;
        let dir = tempfile::tempdir().context("creating a temp dir for the cluster")?;
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_cluster_port()?;
            let args = vec![
                "--cluster-enabled".to_owned(),
                "yes".to_owned(),
                "--cluster-config-file".to_owned(),
                format!("nodes-{port}.conf"),
                "--cluster-node-timeout".to_owned(),
                CLUSTER_NODE_TIMEOUT.as_millis().to_string(),
                // Shards whose primary lives keep serving while another shard fails over (the default
                // `yes` answers CLUSTERDOWN on every node until all slots are covered again).
                "--cluster-require-full-coverage".to_owned(),
                "no".to_owned(),
                // A replica takes over however long it was cut off (the fixture's failovers are quick).
                "--cluster-replica-validity-factor".to_owned(),
                "0".to_owned(),
            ];
            nodes.push(Node::spawn(&bin, dir.path(), port, &args)?);
        }
        let pids: Vec<u32> = nodes.iter().filter_map(Node::pid).collect();
        let watchdog = WatchdogGuard(watchdog(&pids)?);
        let cluster = RedisCluster {
            nodes,
            _watchdog: Some(watchdog),
            _dir: dir,
        };
        for port in cluster.ports() {
            wait_for(
                &format!("cluster node {port} did not answer PING"),
                FORM_TIMEOUT,
                || answers_ping(port),
            )
            .await?;
        }
        let mut create = tokio::process::Command::new(&cli);
        create.arg("--cluster").arg("create");
        for port in cluster.ports() {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = tokio::time::timeout(FORM_TIMEOUT, create.output())
            .await
            .context("redis-cli --cluster create timed out")??;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster.wait_healthy(FORM_TIMEOUT).await?;
        Ok(cluster)
    }

    /// Waits until every running node says `cluster_state:ok` with all slots assigned, every running
    /// replica is in sync, and the nodes agree on three primaries serving all slots.
    pub async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let ports = self.running_ports();
        wait_for("the cluster did not become healthy", timeout, || {
            let ports = ports.clone();
            async move {
                for &port in &ports {
                    let Ok(info) = call::<String>(port, redis::cmd("CLUSTER").arg("INFO")).await
                    else {
                        return false;
                    };
                    if info_field(&info, "cluster_state") != Some("ok")
                        || info_field(&info, "cluster_slots_assigned") != Some("16384")
                    {
                        return false;
                    }
                    let Ok(repl) =
                        call::<String>(port, redis::cmd("INFO").arg("replication")).await
                    else {
                        return false;
                    };
                    if info_field(&repl, "role") == Some("slave")
                        && info_field(&repl, "master_link_status") != Some("up")
                    {
                        return false;
                    }
                }
                true
            }
        })
        .await
    }

    /// Ports of all six nodes, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    fn running_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
            .collect()
    }

    /// `redis://127.0.0.1:<port>/` of every node still running: the startup nodes a client is given.
    pub fn node_urls(&self) -> Vec<String> {
        self.running_ports().into_iter().map(url).collect()
    }

    /// The pid of the node on `port`, while it runs.
    pub fn pid(&self, port: u16) -> Option<u32> {
        self.nodes.iter().find(|n| n.port == port)?.pid()
    }

    /// The slot ranges each primary serves, as a running node sees them: `(port, [(first, last)])`.
    pub async fn primaries(&self) -> anyhow::Result<Vec<Shard>> {
        let mut last = None;
        for port in self.running_ports() {
            match call::<redis::Value>(port, redis::cmd("CLUSTER").arg("SLOTS")).await {
                Ok(value) => return parse_slots(&value),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no cluster node runs")))
    }

    /// The port of the primary serving `slot`.
    pub async fn primary_of_slot(&self, slot: u16) -> anyhow::Result<u16> {
        self.primaries()
            .await?
            .into_iter()
            .find(|(_, ranges)| ranges.iter().any(|&(a, b)| a <= slot && slot <= b))
            .map(|(port, _)| port)
            .with_context(|| format!("no primary serves slot {slot}"))
    }

    /// The port of the primary serving `key`'s slot.
    pub async fn primary_of_key(&self, key: &str) -> anyhow::Result<u16> {
        self.primary_of_slot(cluster_slot(key)).await
    }

    /// Kills the node on `port` with SIGKILL (by its pid), as a crash would.
    pub fn kill_node(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.kill();
        }
    }

    /// Waits until `slot` is served by a running primary other than `old` and the cluster is healthy again
    /// (a replica was promoted after `old` died); answers the new primary's port.
    pub async fn wait_failover(
        &self,
        slot: u16,
        old: u16,
        timeout: Duration,
    ) -> anyhow::Result<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(port) = self.primary_of_slot(slot).await {
                if port != old && self.running_ports().contains(&port) {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.wait_healthy(left.max(Duration::from_millis(100)))
                        .await?;
                    return Ok(port);
                }
            }
            if Instant::now() >= deadline {
                bail!("slot {slot} was not failed over from node {old} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Decodes `CLUSTER SLOTS`: `[[first, last, [host, port, id], replicas...], ...]`.
fn parse_slots(value: &redis::Value) -> anyhow::Result<Vec<Shard>> {
    let redis::Value::Array(ranges) = value else {
        bail!("CLUSTER SLOTS answered {value:?}");
    };
    let mut by_port: Vec<Shard> = Vec::new();
    for range in ranges {
        let redis::Value::Array(fields) = range else {
            bail!("CLUSTER SLOTS range {range:?}");
        };
        let (Some(first), Some(last), Some(redis::Value::Array(primary))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            bail!("CLUSTER SLOTS range {range:?}");
        };
        let first: u16 = redis::from_redis_value(first.clone())?;
        let last: u16 = redis::from_redis_value(last.clone())?;
        let port: u16 =
            redis::from_redis_value(primary.get(1).cloned().context("CLUSTER SLOTS: no port")?)?;
        match by_port.iter_mut().find(|(p, _)| *p == port) {
            Some((_, r)) => r.push((first, last)),
            None => by_port.push((port, vec![(first, last)])),
        }
    }
    by_port.sort();
    Ok(by_port)
}

/// A primary, its replica and three sentinels monitoring it as [`SENTINEL_SERVICE`] (quorum 2,
/// `down-after-milliseconds` [`SENTINEL_DOWN_AFTER`]), on free ports of 127.0.0.1; killed by pid on drop.
pub struct RedisSentinel {
    servers: Vec<Node>,
    sentinels: Vec<Node>,
    _watchdog: WatchdogGuard,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for RedisSentinel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSentinel")
            .field(
                "servers",
                &self.servers.iter().map(|n| n.port).collect::<Vec<_>>(),
            )
            .field(
                "sentinels",
                &self.sentinels.iter().map(|n| n.port).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl RedisSentinel {
    /// Starts the group and waits until the replica is in sync and every sentinel knows the replica and
    /// the other two sentinels (so a failover can be agreed at once).
    pub async fn start() -> anyhow::Result<RedisSentinel> {
        let bin = redis_server_bin()?;
        let dir = tempfile::tempdir().context("creating a temp dir for the sentinels")?;
        let primary_port = free_port()?;
        let primary = Node::spawn(&bin, dir.path(), primary_port, &[])?;
        let replica_port = free_port()?;
        let replica = Node::spawn(
            &bin,
            dir.path(),
            replica_port,
            &[
                "--replicaof".to_owned(),
                "127.0.0.1".to_owned(),
                primary_port.to_string(),
            ],
        )?;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = free_port()?;
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_SERVICE} {}\n\
                     sentinel failover-timeout {SENTINEL_SERVICE} 5000\n\
                     sentinel parallel-syncs {SENTINEL_SERVICE} 1\n",
                    SENTINEL_DOWN_AFTER.as_millis()
                ),
            )?;
            let args = vec![conf.display().to_string(), "--sentinel".to_owned()];
            sentinels.push(Node::spawn(&bin, dir.path(), port, &args)?);
        }
        let pids: Vec<u32> = [primary.pid(), replica.pid()]
            .into_iter()
            .flatten()
            .chain(sentinels.iter().filter_map(Node::pid))
            .collect();
        let group = RedisSentinel {
            servers: vec![primary, replica],
            sentinels,
            _watchdog: WatchdogGuard(watchdog(&pids)?),
            _dir: dir,
        };
        group.wait_ready(FORM_TIMEOUT).await?;
        Ok(group)
    }

    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let replica = self.servers[1].port;
        wait_for("the replica did not sync", timeout, || async move {
            call::<String>(replica, redis::cmd("INFO").arg("replication"))
                .await
                .is_ok_and(|i| info_field(&i, "master_link_status") == Some("up"))
        })
        .await?;
        for port in self.sentinel_ports() {
            wait_for(
                &format!("sentinel {port} did not learn the replica and its peers"),
                timeout,
                || async move {
                    let replicas = call::<Vec<redis::Value>>(
                        port,
                        redis::cmd("SENTINEL").arg("replicas").arg(SENTINEL_SERVICE),
                    )
                    .await;
                    let peers = call::<Vec<redis::Value>>(
                        port,
                        redis::cmd("SENTINEL")
                            .arg("sentinels")
                            .arg(SENTINEL_SERVICE),
                    )
                    .await;
                    matches!((replicas, peers), (Ok(r), Ok(p)) if !r.is_empty() && p.len() >= 2)
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Ports of the sentinels.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|n| n.port).collect()
    }

    /// Ports of the two data servers (the first started as the primary).
    pub fn server_ports(&self) -> Vec<u16> {
        self.servers.iter().map(|n| n.port).collect()
    }

    /// The port of the primary the sentinels name now.
    pub async fn primary_port(&self) -> anyhow::Result<u16> {
        let mut last = None;
        for port in self.sentinel_ports() {
            let addr = call::<Option<(String, u16)>>(
                port,
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(SENTINEL_SERVICE),
            )
            .await;
            match addr {
                Ok(Some((_, p))) => return Ok(p),
                Ok(None) => last = Some(anyhow::anyhow!("sentinel {port} knows no primary")),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no sentinel runs")))
    }

    /// Kills the data server on `port` with SIGKILL (by its pid).
    pub fn kill_server(&mut self, port: u16) {
        if let Some(node) = self.servers.iter_mut().find(|n| n.port == port) {
            node.kill();
        }
    }

    /// Waits until the sentinels name a primary other than `old` and it answers as a primary.
    pub async fn wait_failover(&self, old: u16, timeout: Duration) -> anyhow::Result<u16> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(port) = self.primary_port().await {
                if port != old {
                    let role = call::<String>(port, redis::cmd("INFO").arg("replication")).await;
                    if role.is_ok_and(|i| info_field(&i, "role") == Some("master")) {
                        return Ok(port);
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!("the sentinels did not fail over from {old} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn redis_cli_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("REDIS_CLI_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-cli"))
        .find(|candidate| candidate.is_file())
        .context("redis-cli is not installed (not on PATH and REDIS_CLI_BIN unset)")
}

/// A `redis-server` that accepts only TLS (`rediss://`), with a throwaway CA and a certificate for
/// 127.0.0.1 made with the `openssl` CLI in its temp dir; killed by pid on drop.
pub struct RedisTls {
    node: Node,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTls")
            .field("port", &self.node.port)
            .finish()
    }
}

impl RedisTls {
    /// Starts the server, or answers why it cannot: `Ok(None)` with the reason printed when this
    /// `redis-server` was built without TLS or `openssl` is missing.
    pub async fn start() -> anyhow::Result<Option<RedisTls>> {
        let bin = redis_server_bin()?;
        let dir = tempfile::tempdir().context("creating a temp dir for the TLS server")?;
        let d = dir.path();
        let openssl = |args: &[&str]| -> anyhow::Result<bool> {
            Ok(Command::new("openssl")
                .args(args)
                .current_dir(d)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false))
        };
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
        )?;
        let made = openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ])? && openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ])? && openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ])?;
        if !made {
            eprintln!(
                "skipped: the TLS test needs the openssl CLI to make a throwaway certificate"
            );
            return Ok(None);
        }
        let port = free_port()?;
        let args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &d.join("server.crt").display().to_string(),
            "--tls-key-file",
            &d.join("server.key").display().to_string(),
            "--tls-ca-cert-file",
            &d.join("ca.crt").display().to_string(),
            "--tls-auth-clients",
            "no",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // No plain port (`--port 0`): only TLS clients get in.
        let mut node = spawn_tls(&bin, d, port, &args)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Ok(Some(_))) = node.child.as_mut().map(Child::try_wait) {
                node.child = None;
                eprintln!(
                    "skipped: this redis-server does not accept --tls-port (built without TLS)"
                );
                return Ok(None);
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!("the TLS redis-server on port {port} did not listen within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Some(RedisTls {
            node,
            ca: d.join("ca.crt"),
            _dir: dir,
        }))
    }

    /// `rediss://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.node.port)
    }

    /// The PEM file of the CA that signed the server's certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }
}

fn spawn_tls(bin: &Path, dir: &Path, tls_port: u16, args: &[String]) -> anyhow::Result<Node> {
    let child = Command::new(bin)
        .args(args)
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("spawning {}", bin.display()))?;
    Ok(Node {
        port: tls_port,
        child: Some(child),
    })
}
