//! Redis cost of admission: the uncontended path takes two round trips per request (the admission step and
//! the settle step), and the queue's Redis load does not grow with the number of waiting requests.
//!
//! Method: commands are observed with `MONITOR`, which reports every command with its Redis timestamp and its
//! source, `[db ip:port]` for a command sent by a client and `[db lua]` for a command run inside a script.
//! Only client commands are round trips; the script-internal ones are counted apart (`INFO commandstats`
//! would mix both, since it counts commands run by scripts under their own names; its `cmdstat_fcall`
//! is used as a cross-check). Phases are delimited by `ECHO` markers sent by the test's own connection, which
//! `MONITOR` reports in order with everything else, so no command is attributed to the wrong phase.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use common::{tagged, upstream_with_latency, Cluster, Kind};
use serde_json::json;
use testkit::{Behavior, RedisServer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One command as `MONITOR` reported it.
#[derive(Clone, Debug)]
struct Command {
    /// Redis time, seconds.
    ts: f64,
    /// Run inside a script (`[0 lua]`), not sent by a client.
    lua: bool,
    /// Lowercase command name.
    name: String,
    /// First argument (for markers).
    arg: String,
}

/// Parses `+1700000000.123456 [0 127.0.0.1:54321] "fcall" "admit_v2_..." ...`.
fn parse(line: &str) -> Option<Command> {
    let line = line.trim_end().strip_prefix('+')?;
    let (ts, rest) = line.split_once(' ')?;
    let (source, rest) = rest.strip_prefix('[')?.split_once("] ")?;
    let mut quoted = rest.split('"').skip(1).step_by(2);
    Some(Command {
        ts: ts.parse().ok()?,
        lua: source.ends_with(" lua"),
        name: quoted.next()?.to_ascii_lowercase(),
        arg: quoted.next().unwrap_or_default().to_owned(),
    })
}

/// A `MONITOR` connection collecting every command in the background.
struct Monitor {
    seen: Arc<Mutex<Vec<Command>>>,
    task: JoinHandle<()>,
}

impl Monitor {
    async fn start(port: u16) -> anyhow::Result<Monitor> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let (read, mut write) = stream.into_split();
        write.write_all(b"MONITOR\r\n").await?;
        let mut reader = BufReader::new(read);
        let mut ok = String::new();
        reader.read_line(&mut ok).await?;
        ensure!(ok.starts_with("+OK"), "MONITOR answered {ok:?}");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            let _keep_open = write;
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if let Some(c) = parse(&line) {
                            sink.lock().unwrap().push(c);
                        }
                    }
                }
            }
        });
        Ok(Monitor { seen, task })
    }

    /// Sends `ECHO <name>` on `conn` and waits until the monitor reports it; returns its Redis time.
    async fn mark(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        name: &str,
    ) -> anyhow::Result<f64> {
        let _: String = redis::cmd("ECHO").arg(name).query_async(conn).await?;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if let Some(c) = self.find(|c| c.name == "echo" && c.arg == name) {
                return Ok(c.ts);
            }
            ensure!(
                Instant::now() < deadline,
                "MONITOR never reported marker {name}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn find(&self, f: impl Fn(&Command) -> bool) -> Option<Command> {
        self.seen.lock().unwrap().iter().find(|c| f(c)).cloned()
    }

    /// Waits until the monitor reported a command at or after Redis time `ts`.
    async fn wait_past(&self, ts: f64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.find(|c| c.ts >= ts).is_none() {
            ensure!(
                Instant::now() < deadline,
                "no Redis traffic reported after {ts}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// (client commands, script-internal commands) with `from <= ts < to`, markers excluded.
    fn count(&self, from: f64, to: f64) -> (Vec<Command>, usize) {
        let seen = self.seen.lock().unwrap();
        let window = seen
            .iter()
            .filter(|c| c.ts >= from && c.ts < to && c.name != "echo");
        let (lua, client): (Vec<&Command>, Vec<&Command>) = window.partition(|c| c.lua);
        (client.into_iter().cloned().collect(), lua.len())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `cmdstat_<name>` calls from `INFO commandstats`.
async fn calls(conn: &mut redis::aio::MultiplexedConnection, name: &str) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let prefix = format!("cmdstat_{name}:calls=");
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Twenty requests one after another on an idle deployment (with rpm and concurrency limits, so admission does
/// its full work): each costs exactly its admission step and its settle step, two FCALL round trips (the step is a
/// Redis Function), and no other command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncontended_requests_cost_two_round_trips_each() -> anyhow::Result<()> {
    const N: usize = 20;
    let upstream = upstream_with_latency(Duration::ZERO).await?;
    let config = json!({
        "model_list": [common::deployment("g", "dep-a", &upstream,
            json!({"rpm": 100_000, "tpm": 100_000_000, "max_parallel_requests": 100}))],
        "router_settings": {"num_retries": 0, "timeout": 30},
    });
    let Some(redis) = RedisServer::start_own("reads MONITOR and INFO commandstats").await? else {
        return Ok(());
    };
    let cluster = Cluster::start_on(Kind::Redis(1), Some(redis), config, upstream).await?;
    let port = cluster.redis.as_ref().context("redis")?.port();
    // Warm-up: scripts loaded, connections open.
    for i in 0..3 {
        cluster
            .replica(0)
            .completion(tagged("g", &format!("warm-{i}"), Some(0)))
            .await?;
    }
    cluster.wait_settled().await?;
    let mut conn = cluster.conn()?;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await?;
    let monitor = Monitor::start(port).await?;
    let from = monitor.mark(&mut conn, "start").await?;
    for i in 0..N {
        cluster
            .replica(0)
            .completion(tagged("g", &format!("r-{i}"), Some(0)))
            .await?;
    }
    // The last release runs just after its answer: count it too.
    cluster.wait_settled().await?;
    let to = monitor.mark(&mut conn, "end").await?;
    let (client, lua) = monitor.count(from, to);
    let names: Vec<&str> = client.iter().map(|c| c.name.as_str()).collect();
    ensure!(
        client.len() <= 2 * N,
        "{N} uncontended requests sent {} commands to Redis (at most {}): {names:?}",
        client.len(),
        2 * N
    );
    let fcall = client.iter().filter(|c| c.name == "fcall").count();
    ensure!(
        fcall == client.len() && fcall >= N,
        "expected only FCALL round trips, at least one per request: {names:?}"
    );
    ensure!(
        lua > 0,
        "MONITOR reported no script-internal commands: the method is broken"
    );
    let stat = calls(&mut conn, "fcall").await?;
    ensure!(
        stat == fcall as u64,
        "INFO commandstats counts {stat} FCALL, MONITOR {fcall}"
    );
    cluster.shutdown().await;
    Ok(())
}

/// Calls per second to Redis, from clients and inside scripts, over one second of Redis time.
async fn load_over_one_second(
    monitor: &Monitor,
    conn: &mut redis::aio::MultiplexedConnection,
    name: &str,
) -> anyhow::Result<(usize, usize)> {
    let from = monitor.mark(conn, name).await?;
    monitor.wait_past(from + 1.0).await?;
    let (client, lua) = monitor.count(from, from + 1.0);
    Ok((client.len(), lua))
}

/// A deployment that takes one request at a time is held by a long request while 10, then 1,000 requests
/// wait, spread over three replicas. The Redis load of the waiting queue (the replicas' pollers) over one
/// second is the same for both depths: pollers run one admission step per polling interval per replica and
/// group, whatever the number of waiters, and each step's script work does not depend on the depth.
///
/// Tolerance: the counts come from timers (one step per 30 ms per replica, about 100 per second), so two
/// seconds differ by a few steps, and the in-flight lease renewal may fall into one of them; 25% plus 10
/// calls (client) or plus 100 calls (script-internal, about ten per step) absorbs that, while load growing
/// with the queue (100 times more entries) would exceed it by far.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_load_of_a_waiting_queue_does_not_grow_with_its_depth() -> anyhow::Result<()> {
    let upstream = upstream_with_latency(Duration::from_millis(10)).await?;
    let config = json!({
        "model_list": [common::deployment("g", "dep-a", &upstream, json!({"max_parallel_requests": 1}))],
        "router_settings": {"num_retries": 0, "timeout": 60},
    });
    let Some(redis) = RedisServer::start_own("reads MONITOR").await? else {
        return Ok(());
    };
    let cluster = Cluster::start_on(Kind::Redis(3), Some(redis), config, upstream).await?;
    let port = cluster.redis.as_ref().context("redis")?.port();
    cluster
        .upstream
        .push_behavior(Behavior::ok().with_latency(Duration::from_secs(30)));
    let blocker = cluster.spawn(0, tagged("g", "blocker", Some(0))).await;
    ensure!(
        cluster
            .upstream
            .wait_for_in_flight(1, Duration::from_secs(5))
            .await,
        "the blocker never reached the upstream"
    );
    let mut pending = Vec::new();
    for i in 0..10 {
        pending.push(
            cluster
                .spawn(i, tagged("g", &format!("r-{i}"), Some(i as u32 % 7)))
                .await,
        );
    }
    cluster
        .wait_for_depth("g", 10, Duration::from_secs(5))
        .await?;
    let mut conn = cluster.conn()?;
    let monitor = Monitor::start(port).await?;
    let (client_10, lua_10) = load_over_one_second(&monitor, &mut conn, "depth-10").await?;
    // One monitor per measurement: none is attached while the burst of 990 admission steps runs.
    drop(monitor);

    for i in 10..1000 {
        pending.push(
            cluster
                .spawn(i, tagged("g", &format!("r-{i}"), Some(i as u32 % 7)))
                .await,
        );
    }
    cluster
        .wait_for_depth("g", 1000, Duration::from_secs(20))
        .await?;
    let monitor = Monitor::start(port).await?;
    let (client_1000, lua_1000) = load_over_one_second(&monitor, &mut conn, "depth-1000").await?;
    ensure!(
        cluster.upstream.request_count() == 1 && cluster.depth("g").await? == 1000,
        "the queue changed while it was measured"
    );

    ensure!(
        client_10 > 0,
        "no poller traffic with 10 waiting: the measurement is broken"
    );
    // Three pollers at one step per 30 ms: about 100 per second; twice that would be a busy loop.
    ensure!(
        client_10 <= 200,
        "{client_10} calls per second for a queue of 10"
    );
    let bound = |base: usize, extra: usize| base + base / 4 + extra;
    if client_1000 > bound(client_10, 10) || lua_1000 > bound(lua_10, 100) {
        bail!(
            "Redis load grows with the queue: {client_10} client / {lua_10} script calls per second with 10 \
             waiting, {client_1000} / {lua_1000} with 1,000"
        );
    }
    for p in &pending {
        p.abort();
    }
    blocker.abort();
    cluster.shutdown().await;
    Ok(())
}
