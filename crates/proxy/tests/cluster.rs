//! `scripts/cluster.sh up|status|down`: redis-server and three replicas on loopback ports from the environment,
//! each answering, then everything stopped and the cluster directory removed.

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

struct Cluster {
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Cluster {
    fn script(&self, command: &str) -> (bool, String, String) {
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/cluster.sh"))
            .arg(command)
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
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // The example config with an hour-long usage window: the three requests below must count in one window,
    // which a 60 s window rolling between them would split.
    let example =
        std::fs::read_to_string(repo_root().join("examples/compose-config.yaml")).unwrap();
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
            ("CLUSTER_REDIS_PORT", free_port().to_string()),
            ("CLUSTER_MASTER_KEY", "sk-cluster-test-key-77".to_owned()),
            ("CLUSTER_WAIT_SECS", "30".to_owned()),
            ("LLM_SCHEDULER_BIN", common::bin().to_owned()),
        ],
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
        4,
        "{out}"
    );

    let started = pids(&cluster.dir);
    assert_eq!(started.len(), 4, "{started:?}");
    let (ok, _, err) = cluster.script("down");
    assert!(ok, "{err}");
    assert!(!cluster.dir.exists(), "cluster dir left behind");
    for pid in started {
        assert!(!alive(&pid), "process {pid} still running");
    }
}
