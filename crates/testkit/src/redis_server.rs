//! The Redis a test runs on: a `redis-server` process of its own, or its own key prefix on a shared Redis
//! named by `TEST_REDIS_URL`.

use std::fmt;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

/// The environment variable naming a Redis the suite runs on instead of spawning `redis-server`.
pub const TEST_REDIS_URL: &str = "TEST_REDIS_URL";

/// When set, the path of a file every skip notice is appended to (one line each), so a runner that hides the
/// output of passing tests can still list them.
pub const TESTKIT_SKIP_LOG: &str = "TESTKIT_SKIP_LOG";

/// How long a fresh server gets to answer PING before start fails.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Deadline for each call of the fixture's own (connecting, listing and deleting keys).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Keys listed per `SCAN` step.
const SCAN_COUNT: usize = 1000;

/// The oldest server the product's scripts run on: `ZADD ... GT` came with Redis 6.2.
const MIN_VERSION: (u32, u32) = (6, 2);

/// The Redis of one test, with the key prefix the test owns on it.
///
/// [`RedisServer::start`] spawns a `redis-server` for the test, or, when `TEST_REDIS_URL` is set, hands out
/// that Redis. Either way the test must keep its keys (and Pub/Sub channels) under [`RedisServer::prefix`],
/// a prefix no other test, in this process or another, gets:
/// - on a shared Redis, dropping the fixture deletes every key under the prefix;
/// - on a spawned server, dropping the fixture fails the test if any key lies outside the prefix, so a test
///   that forgets the prefix fails locally, not only when it shares a Redis.
///
/// Tests that stop, kill, restart or pause the server, flush it or read server-wide state (`INFO`,
/// `MONITOR`, `DBSIZE`) need a server of their own: [`RedisServer::start_own`] gives one, or skips the test
/// with a printed reason when `TEST_REDIS_URL` is set.
pub struct RedisServer {
    target: Target,
    prefix: String,
}

enum Target {
    Spawned {
        process: RedisProcess,
        /// Started by `start_own`: the test may stop, kill and restart it.
        own: bool,
    },
    External {
        url: String,
        host: Option<(String, u16)>,
    },
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The external URL may carry a password.
        let (kind, port) = match &self.target {
            Target::Spawned { process, own } => {
                let kind = if *own { "own" } else { "spawned" };
                (kind, Some(process.port))
            }
            Target::External { host, .. } => ("external", host.as_ref().map(|(_, port)| *port)),
        };
        f.debug_struct("RedisServer")
            .field("kind", &kind)
            .field("port", &port)
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl RedisServer {
    /// The Redis named by `TEST_REDIS_URL` when it is set, else a fresh `redis-server` on a free port of
    /// 127.0.0.1 (which answers PING once this returns).
    ///
    /// The binary is `REDIS_SERVER_BIN` when set, else `redis-server` from `PATH`.
    pub async fn start() -> anyhow::Result<RedisServer> {
        match external_url() {
            Some(url) => RedisServer::external(&url)
                .await
                .with_context(|| format!("using the Redis of {TEST_REDIS_URL}")),
            None => Ok(RedisServer::spawned(RedisProcess::start().await?, false)),
        }
    }

    /// A `redis-server` of this test's own, which it may stop, kill, restart, pause or flush and whose
    /// server-wide state it may read; `None` when `TEST_REDIS_URL` is set, after printing that the test is
    /// skipped because it `needs` its own server.
    ///
    /// ```no_run
    /// # async fn demo() -> anyhow::Result<()> {
    /// let Some(mut redis) = testkit::RedisServer::start_own("restarts it").await? else {
    ///     return Ok(());
    /// };
    /// redis.restart().await?;
    /// # Ok(()) }
    /// ```
    pub async fn start_own(needs: &str) -> anyhow::Result<Option<RedisServer>> {
        if skip_on_external_redis(&format!("needs its own redis-server: {needs}")) {
            return Ok(None);
        }
        Ok(Some(RedisServer::spawned(
            RedisProcess::start().await?,
            true,
        )))
    }

    /// Like [`RedisServer::start_own`], with an append-only file synced on every write
    /// (`appendfsync always`), so [`RedisServer::shutdown_and_restart`] brings back all the data.
    pub async fn start_own_persistent(needs: &str) -> anyhow::Result<Option<RedisServer>> {
        if skip_on_external_redis(&format!("needs its own redis-server: {needs}")) {
            return Ok(None);
        }
        Ok(Some(RedisServer::spawned(
            RedisProcess::start_with(true).await?,
            true,
        )))
    }

    /// A fresh prefix on the Redis at `url`, shared with other tests; fails unless the server answers and is
    /// recent enough for the product's scripts.
    pub async fn external(url: &str) -> anyhow::Result<RedisServer> {
        let client = redis::Client::open(url).context("parsing the Redis URL")?;
        let host = match client.get_connection_info().addr() {
            redis::ConnectionAddr::Tcp(host, port) => Some((host.clone(), *port)),
            redis::ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
            _ => None,
        };
        let info: String = call(&client, redis::cmd("INFO").arg("server"))
            .await
            .context("the Redis does not answer")?;
        check_version(&info)?;
        Ok(RedisServer {
            target: Target::External {
                url: url.to_owned(),
                host,
            },
            prefix: fresh_prefix(),
        })
    }

    fn spawned(process: RedisProcess, own: bool) -> RedisServer {
        RedisServer {
            target: Target::Spawned { process, own },
            prefix: fresh_prefix(),
        }
    }

    /// The URL to connect to: `redis://127.0.0.1:PORT/` for a spawned server, else `TEST_REDIS_URL`.
    pub fn url(&self) -> String {
        match &self.target {
            Target::Spawned { process, .. } => process.url(),
            Target::External { url, .. } => url.clone(),
        }
    }

    /// The key prefix this test owns (`tk-<random>:`): every key and channel the test makes goes under it,
    /// e.g. as `router_settings.key_prefix`. Tests that need several keyspaces append to it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The host name of the server, for configs that name host and port (they carry no password or
    /// database number).
    ///
    /// # Panics
    /// When `TEST_REDIS_URL` names a Unix socket.
    pub fn host(&self) -> &str {
        match &self.target {
            Target::Spawned { .. } => "127.0.0.1",
            Target::External { host, .. } => &tcp_address(host).0,
        }
    }

    /// The TCP port of the server (for a spawned one it stays the same across [`RedisServer::restart`]).
    ///
    /// # Panics
    /// When `TEST_REDIS_URL` names a Unix socket.
    pub fn port(&self) -> u16 {
        match &self.target {
            Target::Spawned { process, .. } => process.port,
            Target::External { host, .. } => tcp_address(host).1,
        }
    }

    /// Whether this is a Redis shared with other tests (`TEST_REDIS_URL`).
    pub fn is_external(&self) -> bool {
        matches!(self.target, Target::External { .. })
    }

    /// The keys under this test's prefix, sorted: what the test left so far.
    pub async fn keys(&self) -> anyhow::Result<Vec<String>> {
        let client = redis::Client::open(self.url())?;
        let mut conn =
            tokio::time::timeout(CALL_TIMEOUT, client.get_multiplexed_async_connection())
                .await
                .context("connecting to Redis timed out")??;
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let step = scan.query_async::<(u64, Vec<String>)>(&mut conn);
            let (next, batch) = tokio::time::timeout(CALL_TIMEOUT, step)
                .await
                .context("SCAN timed out")??;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    /// Every key under this test's prefix with its whole value as text (`name => value` lines; hashes,
    /// sets, sorted sets, lists and strings read out whole), for tests that assert what Redis holds, e.g.
    /// that no secret is stored anywhere.
    pub async fn dump_text(&self) -> anyhow::Result<String> {
        let client = redis::Client::open(self.url())?;
        let mut conn =
            tokio::time::timeout(CALL_TIMEOUT, client.get_multiplexed_async_connection())
                .await
                .context("connecting to Redis timed out")??;
        let mut out = String::new();
        for key in self.keys().await? {
            let kind: String = tokio::time::timeout(
                CALL_TIMEOUT,
                redis::cmd("TYPE").arg(&key).query_async(&mut conn),
            )
            .await
            .context("TYPE timed out")??;
            let mut read = match kind.as_str() {
                "hash" => redis::cmd("HGETALL"),
                "set" => redis::cmd("SMEMBERS"),
                "zset" => redis::cmd("ZRANGE"),
                "list" => redis::cmd("LRANGE"),
                "stream" => redis::cmd("XRANGE"),
                _ => redis::cmd("GET"),
            };
            read.arg(&key);
            match kind.as_str() {
                "zset" => {
                    read.arg(0).arg(-1).arg("WITHSCORES");
                }
                "list" => {
                    read.arg(0).arg(-1);
                }
                "stream" => {
                    read.arg("-").arg("+");
                }
                _ => {}
            }
            let value: redis::Value =
                tokio::time::timeout(CALL_TIMEOUT, read.query_async(&mut conn))
                    .await
                    .context("reading a value timed out")??;
            out.push_str(&key);
            out.push_str(" => ");
            text_of(&value, &mut out);
            out.push('\n');
        }
        Ok(out)
    }

    /// Whether the process is running (not stopped or killed).
    ///
    /// # Panics
    /// Unless the server came from [`RedisServer::start_own`].
    pub fn is_running(&mut self) -> bool {
        self.own_process("is_running").is_running()
    }

    /// Stops the server (SIGKILL and reap). Clients see connection errors until [`RedisServer::restart`].
    ///
    /// # Panics
    /// Unless the server came from [`RedisServer::start_own`].
    pub async fn stop(&mut self) {
        self.own_process("stop").stop().await;
    }

    /// Kills the server with SIGKILL without waiting, as a crash would.
    ///
    /// # Panics
    /// Unless the server came from [`RedisServer::start_own`].
    pub fn kill(&mut self) {
        self.own_process("kill").kill();
    }

    /// Stops the server with `SHUTDOWN` (which writes out its append-only file), waits for the process to
    /// exit, and starts it again on the same port and data directory: a server from
    /// [`RedisServer::start_own_persistent`] comes back with its data once it has loaded it.
    ///
    /// # Panics
    /// Unless the server came from [`RedisServer::start_own`] or [`RedisServer::start_own_persistent`].
    pub async fn shutdown_and_restart(&mut self) -> anyhow::Result<()> {
        self.own_process("shutdown_and_restart")
            .shutdown_and_restart()
            .await
    }

    /// Stops the server if it runs (SIGKILL) and starts a new one on the same port: with empty data, or
    /// with what its append-only file holds for a server from [`RedisServer::start_own_persistent`].
    ///
    /// # Panics
    /// Unless the server came from [`RedisServer::start_own`].
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.own_process("restart").restart().await
    }

    fn own_process(&mut self, what: &str) -> &mut RedisProcess {
        match &mut self.target {
            Target::Spawned { process, own: true } => process,
            _ => panic!(
                "RedisServer::{what} needs a server of the test's own: start it with \
                 RedisServer::start_own, which skips the test when {TEST_REDIS_URL} is set"
            ),
        }
    }

    /// Deletes this test's keys from a shared Redis.
    fn remove_keys(&self, url: &str) -> anyhow::Result<usize> {
        let mut conn = blocking_connection(url)?;
        let keys = scan_blocking(&mut conn, &format!("{}*", self.prefix))?;
        for batch in keys.chunks(SCAN_COUNT) {
            redis::cmd("UNLINK")
                .arg(batch)
                .query::<()>(&mut conn)
                .context("UNLINK")?;
        }
        Ok(keys.len())
    }

    /// Panics when keys of the test's spawned server lie outside its prefix.
    fn fail_on_stray_keys(&self, url: &str) {
        match self.keys_outside_prefix(url) {
            Ok(stray) if !stray.is_empty() => {
                let shown: Vec<&String> = stray.iter().take(10).collect();
                panic!(
                    "{} key(s) outside the test's prefix {:?}, e.g. {shown:?}: build key prefixes \
                     from RedisServer::prefix() so the test can share a Redis ({TEST_REDIS_URL})",
                    stray.len(),
                    self.prefix
                );
            }
            Ok(_) => {}
            Err(e) => notice(&format!(
                "testkit: could not check the keys of the test's redis-server: {e:#}"
            )),
        }
    }

    /// The keys of a spawned server that lie outside this test's prefix.
    fn keys_outside_prefix(&self, url: &str) -> anyhow::Result<Vec<String>> {
        let mut conn = blocking_connection(url)?;
        let keys = scan_blocking(&mut conn, "*")?;
        Ok(keys
            .into_iter()
            .filter(|k| !k.starts_with(self.prefix.as_bytes()))
            .map(|k| String::from_utf8_lossy(&k).into_owned())
            .collect())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        match &self.target {
            Target::External { url, .. } => {
                if let Err(e) = self.remove_keys(url) {
                    notice(&format!(
                        "testkit: could not delete the keys under {:?} from the Redis of {TEST_REDIS_URL}: \
                         {e:#}",
                        self.prefix
                    ));
                }
            }
            // A test that fails already must not be hidden behind this one's message (nor abort the run
            // with a second panic).
            Target::Spawned {
                process,
                own: false,
            } if !std::thread::panicking() => self.fail_on_stray_keys(&process.url()),
            Target::Spawned { .. } => {}
        }
    }
}

/// Whether the suite runs on a Redis it is given: then prints that the current test is skipped because it
/// `needs` something a shared Redis cannot give (e.g. "scripts/cluster.sh starts its own redis-server") and
/// returns true.
pub fn skip_on_external_redis(needs: &str) -> bool {
    if external_url().is_none() {
        return false;
    }
    let thread = std::thread::current();
    let test = match thread.name() {
        Some(name) if name != "main" => format!("{name}: "),
        _ => String::new(),
    };
    notice(&format!("skipped: {test}{needs} ({TEST_REDIS_URL} is set)"));
    true
}

/// `TEST_REDIS_URL`, unless unset or empty.
fn external_url() -> Option<String> {
    std::env::var(TEST_REDIS_URL)
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// Writes `line` to stderr past the test harness's output capture (a skip must be seen also when its test
/// passes) and appends it to `TESTKIT_SKIP_LOG` when that is set.
fn notice(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    if let Some(path) = std::env::var_os(TESTKIT_SKIP_LOG) {
        // One write of one line in append mode: lines of concurrent test processes do not interleave.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        if let Ok(mut file) = file {
            let _ = file.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// `tk-<16 hex digits>:`, random so that test processes sharing a Redis never pick the same one. No glob
/// characters (it is used as a `SCAN MATCH` pattern) and no braces (they would break hash tags).
fn fresh_prefix() -> String {
    format!("tk-{:016x}:", rand::random::<u64>())
}

fn tcp_address(host: &Option<(String, u16)>) -> &(String, u16) {
    host.as_ref().unwrap_or_else(|| {
        panic!("{TEST_REDIS_URL} names no TCP host and port, which this test needs")
    })
}

/// Runs `cmd` on a fresh connection of `client`, within [`CALL_TIMEOUT`].
async fn call<T: redis::FromRedisValue>(
    client: &redis::Client,
    cmd: &redis::Cmd,
) -> anyhow::Result<T> {
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async::<T>(&mut conn).await
    };
    Ok(tokio::time::timeout(CALL_TIMEOUT, attempt)
        .await
        .context("timed out")??)
}

/// Fails unless `INFO server` names Redis (or Valkey, which reports the Redis version it is compatible
/// with) at least [`MIN_VERSION`].
fn check_version(info: &str) -> anyhow::Result<()> {
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .map(str::trim)
        .context("INFO server names no redis_version")?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if found < MIN_VERSION {
        bail!(
            "Redis {version} is too old: the product's scripts need Redis {}.{} or later",
            MIN_VERSION.0,
            MIN_VERSION.1
        );
    }
    Ok(())
}

fn blocking_connection(url: &str) -> anyhow::Result<redis::Connection> {
    let client = redis::Client::open(url)?;
    let conn = client
        .get_connection_with_timeout(CALL_TIMEOUT)
        .context("connecting")?;
    conn.set_read_timeout(Some(CALL_TIMEOUT))?;
    conn.set_write_timeout(Some(CALL_TIMEOUT))?;
    Ok(conn)
}

/// Every key matching `pattern` (deduplicated: SCAN may return a key twice).
fn scan_blocking(conn: &mut redis::Connection, pattern: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query(conn)
            .context("SCAN")?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    Ok(keys)
}

/// A throwaway `redis-server` process on a free loopback port, in its own temp dir, without persistence;
/// killed on drop, also when the test panics.
#[derive(Debug)]
struct RedisProcess {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// An append-only file synced on every write (else no persistence).
    persistent: bool,
}

impl RedisProcess {
    /// Starts a server on a free port of 127.0.0.1 and waits until it answers PING.
    async fn start() -> anyhow::Result<RedisProcess> {
        RedisProcess::start_with(false).await
    }

    async fn start_with(persistent: bool) -> anyhow::Result<RedisProcess> {
        let bin = redis_server_bin()?;
        // A port can be taken between probing and binding; retry with a new one.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port()?;
            let mut server = RedisProcess {
                child: None,
                port,
                dir: tempfile::tempdir().context("creating a temp dir for redis-server")?,
                bin: bin.clone(),
                persistent,
            };
            match server.spawn_and_wait().await {
                Ok(()) => return Ok(server),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }

    async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await;
        // The old socket may linger briefly; retry binding within the start timeout.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("redis-server restart retry: {e:#}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn shutdown_and_restart(&mut self) -> anyhow::Result<()> {
        let client = redis::Client::open(self.url())?;
        let mut conn =
            tokio::time::timeout(CALL_TIMEOUT, client.get_multiplexed_async_connection())
                .await
                .context("connecting for SHUTDOWN timed out")??;
        // The server closes the connection instead of answering.
        let _ = tokio::time::timeout(
            CALL_TIMEOUT,
            redis::cmd("SHUTDOWN").query_async::<()>(&mut conn),
        )
        .await;
        if let Some(mut child) = self.child.take() {
            match tokio::time::timeout(START_TIMEOUT, child.wait()).await {
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill().await;
                    bail!(
                        "redis-server on port {} did not exit after SHUTDOWN",
                        self.port
                    );
                }
            }
        }
        self.restart().await
    }

    async fn spawn_and_wait(&mut self) -> anyhow::Result<()> {
        let appendonly = if self.persistent { "yes" } else { "no" };
        let mut child = Command::new(&self.bin)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", appendonly])
            .args(["--appendfsync", "always"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "redis-server on port {} exited at start: {status}",
                    self.port
                );
            }
            // Another server may hold the port (a race between probing and binding): only a reply
            // from our own process counts.
            if child.id().is_some() && server_pid(self.port).await == child.id() {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill().await;
                bail!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

/// The pid of the server answering on `port`, if one answers.
async fn server_pid(port: u16) -> Option<u32> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .ok()?;
        info.lines()
            .find_map(|line| line.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok())
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("probing for a free port")?;
    Ok(listener.local_addr()?.port())
}

pub(crate) fn redis_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("REDIS_SERVER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .context("redis-server is not installed (not on PATH and REDIS_SERVER_BIN unset); run scripts/setup.sh, or point TEST_REDIS_URL at a running Redis")
}

/// Appends the text of a reply (bulk strings as lossy UTF-8) to `out`.
fn text_of(value: &redis::Value, out: &mut String) {
    match value {
        redis::Value::BulkString(bytes) => out.push_str(&String::from_utf8_lossy(bytes)),
        redis::Value::SimpleString(s) => out.push_str(s),
        redis::Value::Int(n) => out.push_str(&n.to_string()),
        redis::Value::Array(items) | redis::Value::Set(items) => {
            for item in items {
                text_of(item, out);
                out.push(' ');
            }
        }
        redis::Value::Map(pairs) => {
            for (k, v) in pairs {
                text_of(k, out);
                out.push(' ');
                text_of(v, out);
                out.push(' ');
            }
        }
        other => out.push_str(&format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_fresh_and_safe_in_patterns_and_hash_tags() {
        let a = fresh_prefix();
        assert_ne!(a, fresh_prefix());
        assert!(a.starts_with("tk-") && a.ends_with(':'), "{a}");
        assert!(!a.contains(['*', '?', '[', ']', '\\', '{', '}']), "{a}");
    }

    #[test]
    fn versions_before_6_2_are_refused() {
        for ok in ["6.2.0", "7.0.15", "7.2.4", "8.0.1", "10.0.0"] {
            assert!(
                check_version(&format!("# Server\r\nredis_version:{ok}\r\n")).is_ok(),
                "{ok}"
            );
        }
        for old in ["6.0.20", "5.0.14"] {
            let err = check_version(&format!("redis_version:{old}\r\n")).unwrap_err();
            assert!(err.to_string().contains("6.2"), "{err}");
        }
        assert!(check_version("# Server\r\n").is_err());
    }
}
