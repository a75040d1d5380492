//! Starting the real `llm-scheduler` binary for process-level tests.
#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long a fresh process gets to log its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The master key of the test configs.
pub(crate) const KEY: &str = "sk-test-master-key-0123456789";

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_llm-scheduler")
}

/// A running `llm-scheduler` process; killed on drop.
pub(crate) struct Proxy {
    child: Child,
    pub(crate) addr: String,
    output: Arc<Mutex<String>>,
    /// Threads copying stdout and stderr into `output`.
    readers: Vec<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// Writes `config` to a temp file and starts the binary on `--port 0` with `env` set.
    pub(crate) fn start(config: &str, env: &[(&str, &str)]) -> anyhow::Result<Proxy> {
        Self::start_with_args(config, env, &[])
    }

    pub(crate) fn start_with_args(
        config: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<Proxy> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, config)?;
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(&path)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env_remove("REDIS_URL")
            .env_remove("LITELLM_MASTER_KEY")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawning llm-scheduler")?;
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let mut readers = Vec::new();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&output);
            let tx = tx.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output.lock().unwrap().push_str(&line);
                    output.lock().unwrap().push('\n');
                    let _ = tx.send(line);
                }
            }));
        }
        drop(tx);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = listening_addr(&line) {
                        return Ok(Proxy {
                            child,
                            addr,
                            output,
                            readers,
                            _dir: dir,
                        });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "llm-scheduler did not log its address within {START_TIMEOUT:?}; output:\n{}",
                        output.lock().unwrap()
                    );
                }
            }
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process printed so far.
    pub(crate) fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Sends SIGTERM.
    pub(crate) fn terminate(&self) {
        signal(self.child.id(), "TERM");
    }

    /// Waits for the process to exit (bounded).
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // The pipes close with the process: read them to the end, so output() is complete.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!("llm-scheduler did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// `ADDR` from a log line containing `listening on http://ADDR`.
pub(crate) fn listening_addr(line: &str) -> Option<String> {
    let rest = line.split("listening on http://").nth(1)?;
    let addr: String = rest
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    (!addr.is_empty()).then_some(addr)
}

/// Runs the binary with `args` to completion: (exit code, stdout, stderr).
pub(crate) fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("REDIS_URL")
        .env_remove("LITELLM_MASTER_KEY")
        .env_remove("LLM_SCHEDULER_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running llm-scheduler");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The repository root.
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An authenticated HTTP client.
pub(crate) fn client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {KEY}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub(crate) async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The config of the fault tests: one model group `shared` with one deployment `id` on `upstream_base`
/// (`max_parallel_requests` as given) behind `redis` under its prefix; `extra_router_settings` are more
/// `router_settings` lines (two-space indented).
pub(crate) fn shared_group_config(
    upstream_base: &str,
    redis: &testkit::RedisServer,
    id: &str,
    max_parallel: u32,
    extra_router_settings: &str,
) -> String {
    format!(
        r#"
model_list:
  - model_name: shared
    litellm_params: {{ model: openai/gpt-4o, api_base: "{upstream_base}", api_key: sk-test, max_parallel_requests: {max_parallel} }}
    model_info: {{ id: {id} }}
router_settings:
  redis_url: {url}
  key_prefix: "{prefix}"
  polling_interval: 0.03
  num_retries: 0
  timeout: 30
{extra_router_settings}general_settings:
  master_key: {KEY}
"#,
        url = redis.url(),
        prefix = redis.prefix(),
    )
}

/// A mock upstream answering after `latency`.
pub(crate) async fn mock_answering_after(latency: Duration) -> testkit::MockUpstream {
    testkit::MockUpstream::start_with(testkit::MockUpstreamConfig {
        behavior: testkit::Behavior::ok().with_latency(latency),
        ..testkit::MockUpstreamConfig::default()
    })
    .await
    .expect("mock upstream")
}
