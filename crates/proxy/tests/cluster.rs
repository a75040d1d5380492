//! `scripts/cluster.sh up|status|down`: redis-server (or, with `up --redis-cluster`, a 6-node Redis Cluster) and
//! three replicas on loopback ports from the environment, each answering, then everything stopped and the
//! cluster directory removed.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::repo_root;
use serde_json::json;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The first of `n` consecutive ports that are free now (the script's Redis nodes take `port..port + n`),
/// with their Cluster bus ports (`port + 10000`) free too. Drawn below the kernel's ephemeral range
/// (32768 and up), which a busy machine's closed connections fill with TIME-WAIT entries.
fn free_port_run(n: usize) -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    for attempt in 0..1000u32 {
        let spread = seed.wrapping_add(attempt.wrapping_mul(7919)) % 10000;
        let first = 12000 + u16::try_from(spread).unwrap_or(0);
        let free = (0..n).all(|i| {
            [i, i + 10000].into_iter().all(|offset| {
                u16::try_from(usize::from(first) + offset)
                    .is_ok_and(|p| TcpListener::bind(("127.0.0.1", p)).is_ok())
            })
        });
        if free {
            return first;
        }
    }
    panic!("no {n} consecutive free ports");
}

struct Cluster {
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
    /// `up`'s extra argument (`--redis-cluster`).
    up_flag: Option<&'static str>,
}

impl Cluster {
    fn script(&self, command: &str) -> (bool, String, String) {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/cluster.sh"))
            .arg(command)
            .args(self.up_flag.filter(|_| command == "up"))
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("REDIS_URL")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Also after a failed assertion: never leave processes behind.
        let _ = self.script("down");
    }
}

fn pids(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .map(|p| p.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `pid` runs; an exited process waiting to be reaped (a zombie) does not.
fn alive(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_script_brings_up_three_replicas_sharing_redis_and_cleans_up() {
    if testkit::skip_on_external_redis("scripts/cluster.sh starts its own redis-server") {
        return;
    }
    three_replicas_share_their_redis(None, "examples/compose-config.yaml", 1).await;
}

/// `up --redis-cluster`: six cluster nodes (3 primaries + 3 replicas) instead of one redis-server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_script_on_a_redis_cluster_brings_up_three_replicas_and_cleans_up() {
    if testkit::skip_on_external_redis("scripts/cluster.sh starts its own redis-servers") {
        return;
    }
    three_replicas_share_their_redis(
        Some("--redis-cluster"),
        "examples/redis-cluster-config.yaml",
        6,
    )
    .await;
}

async fn three_replicas_share_their_redis(
    up_flag: Option<&'static str>,
    example: &str,
    redis_processes: usize,
) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // The example config with an hour-long usage window: the three requests below must count in one window,
    // which a 60 s window rolling between them would split.
    let example = std::fs::read_to_string(repo_root().join(example)).unwrap();
    assert!(example.contains("\nrouter_settings:\n"), "{example}");
    let config = tmp.path().join("config.yaml");
    std::fs::write(
        &config,
        example.replace(
            "\nrouter_settings:\n",
            "\nrouter_settings:\n  usage_window: 3600\n",
        ),
    )
    .unwrap();
    let cluster = Cluster {
        dir: dir.clone(),
        env: vec![
            ("CLUSTER_DIR", dir.display().to_string()),
            ("CLUSTER_CONFIG", config.display().to_string()),
            (
                "CLUSTER_PORTS",
                ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            (
                "CLUSTER_REDIS_PORT",
                free_port_run(redis_processes).to_string(),
            ),
            ("CLUSTER_MASTER_KEY", "sk-cluster-test-key-77".to_owned()),
            ("CLUSTER_WAIT_SECS", "30".to_owned()),
            ("LLM_SCHEDULER_BIN", common::bin().to_owned()),
        ],
        up_flag,
    };

    let (ok, out, err) = cluster.script("up");
    assert!(ok, "up failed:\n{out}\n{err}");
    let urls: Vec<&str> = out.lines().filter(|l| l.starts_with("http://")).collect();
    assert_eq!(urls.len(), 3, "{out}");

    let http = reqwest::Client::new();
    for url in &urls {
        let r = http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth("sk-cluster-test-key-77")
            .json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{url}: {body}");
        assert!(body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Hello from mock"));
        let ready: serde_json::Value = http
            .get(format!("{url}/health/readiness"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["backend"], "redis", "{url}");
    }
    // The replicas share one usage window: every replica sees the three requests.
    let health: serde_json::Value = http
        .get(format!("{}/health", urls[2]))
        .bearer_auth("sk-cluster-test-key-77")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let used: u64 = health["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["model_group"] == "gpt-4o")
        .filter_map(|d| d["rpm_used"].as_u64())
        .sum();
    assert_eq!(used, 3, "{health}");

    let (ok, out, err) = cluster.script("status");
    assert!(ok, "status failed:\n{out}\n{err}");
    assert_eq!(
        out.lines().filter(|l| l.contains(" up ")).count(),
        3 + redis_processes,
        "{out}"
    );

    let started = pids(&cluster.dir);
    assert_eq!(started.len(), 3 + redis_processes, "{started:?}");
    let (ok, _, err) = cluster.script("down");
    assert!(ok, "{err}");
    assert!(!cluster.dir.exists(), "cluster dir left behind");
    for pid in started {
        assert!(!alive(&pid), "process {pid} still running");
    }
}
