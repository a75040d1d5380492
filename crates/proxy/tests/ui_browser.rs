//! The operator's page in headless Chromium: it logs in (the key handed over in the URL fragment, which never
//! reaches the server), polls `/queue/status`, and the rendered DOM shows the depth by priority, a deployment
//! at its rpm limit and cooling-down badges, without the key; screenshots at 1280 px and 390 px are saved in
//! the test's temp dir. Skips, saying why, only when Chromium is missing and cannot be installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{client, eventually, Proxy, KEY};
use serde_json::{json, Value};

const CONFIG: &str = r#"
model_list:
  - model_name: chat
    litellm_params: { model: openai/gpt-4o, mock_response: "hi", rpm: 1 }
    model_info: { id: chat-a }
  - model_name: flaky
    litellm_params: { model: openai/x, mock_response: "litellm.RateLimitError" }
    model_info: { id: flaky-a }
  - model_name: flaky
    litellm_params: { model: openai/x, mock_response: "litellm.RateLimitError" }
    model_info: { id: flaky-b }
router_settings:
  num_retries: 0
  timeout: 1200
  usage_window: 600
  cooldown_time: 600
general_settings:
  master_key: sk-test-master-key-0123456789
"#;

/// Waiting requests by priority.
const WAITING: [(u32, usize); 2] = [(0, 2), (7, 3)];

/// Chromium's binary: on the PATH, else installed with apt-get (root only, bounded in time).
fn chromium() -> Result<PathBuf, String> {
    let find = || {
        ["chromium", "chromium-browser"].iter().find_map(|name| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {name}")])
                .output()
                .ok()?;
            let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
        })
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root {
        return Err("chromium is not installed and this user cannot install it".into());
    }
    let install = Command::new("timeout")
        .args(["600", "apt-get", "install", "-y", "-qq", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match (install, find()) {
        (_, Some(path)) => Ok(path),
        (Ok(status), None) => Err(format!("apt-get install chromium failed ({status})")),
        (Err(e), None) => Err(format!("apt-get could not run: {e}")),
    }
}

/// Runs headless Chromium on `url` with `args` (a fresh profile in `dir`), killed after a minute.
fn run_chromium(browser: &Path, dir: &Path, url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir_in(dir).expect("profile dir");
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Virtual time runs ahead while the page is idle: a few polls of /queue/status, then the dump.
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromium");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut out);
        out
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("chromium status").is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within a minute on {url}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap_or_default()
}

/// The opening tag of the element carrying `attr` (e.g. `data-priority="0"`).
fn tag_with<'a>(dom: &'a str, attr: &str) -> Option<&'a str> {
    let at = dom.find(attr)?;
    let start = dom[..at].rfind('<')?;
    let end = at + dom[at..].find('>')?;
    Some(&dom[start..=end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_queues_limits_and_cooldowns() {
    let browser = match chromium() {
        Ok(path) => path,
        Err(why) => {
            println!("skipped: the_page_shows_queues_limits_and_cooldowns: {why}");
            return;
        }
    };
    let proxy = Proxy::start(CONFIG, &[]).expect("proxy");
    let http = client();
    let chat = |model: &str, priority: u32| json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "priority": priority});
    // Both flaky deployments cool down after a 429 each; chat-a reaches its rpm.
    for _ in 0..2 {
        let r = http
            .post(proxy.url("/v1/chat/completions"))
            .json(&chat("flaky", 0))
            .send()
            .await
            .expect("flaky");
        assert_eq!(r.status(), 429);
    }
    let r = http
        .post(proxy.url("/v1/chat/completions"))
        .json(&chat("chat", 0))
        .send()
        .await
        .expect("chat");
    assert_eq!(r.status(), 200);
    let waiting_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1200))
        .build()
        .expect("client");
    let mut tasks = tokio::task::JoinSet::new();
    for (priority, n) in WAITING {
        for _ in 0..n {
            let request = waiting_client
                .post(proxy.url("/v1/chat/completions"))
                .bearer_auth(KEY)
                .json(&chat("chat", priority));
            tasks.spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
        }
    }
    let total: u64 = WAITING.iter().map(|(_, n)| *n as u64).sum();
    let status = || async {
        let s: Option<Value> = async {
            http.get(proxy.url("/queue/status"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()
        }
        .await;
        s.unwrap_or(Value::Null)
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            let s = status().await;
            s["groups"][0]["depth"] == total
                && s["deployments"]
                    .as_array()
                    .is_some_and(|d| d.iter().filter(|d| d["cooling_down"] == true).count() == 2)
        })
        .await,
        "the queue did not fill: {}",
        status().await
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let url = proxy.url(&format!("/ui#key={KEY}"));
    let dom = run_chromium(
        &browser,
        dir.path(),
        &url,
        &["--window-size=1280,1000", "--dump-dom"],
    );
    assert!(dom.contains("id=\"queues\""), "no page: {dom}");
    for (priority, n) in WAITING {
        let row = tag_with(&dom, &format!("data-priority=\"{priority}\""))
            .unwrap_or_else(|| panic!("no row of priority {priority}: {dom}"));
        assert!(row.contains(&format!("data-waiting=\"{n}\"")), "{row}");
    }
    let group = tag_with(&dom, "data-group=\"chat\"").expect("chat group card");
    assert!(
        group.contains(&format!("data-depth=\"{total}\"")),
        "{group}"
    );
    let at_limit = tag_with(&dom, "data-deployment=\"chat-a\"").expect("chat-a row");
    assert!(at_limit.contains("data-at-limit=\"rpm\""), "{at_limit}");
    assert!(
        dom.contains("at rpm limit"),
        "no limit badge in text: {dom}"
    );
    assert_eq!(
        dom.matches("class=\"badge cooling\">cooling down").count(),
        2,
        "cooling-down badges: {dom}"
    );
    let error = tag_with(&dom, "id=\"error\"").expect("error line");
    assert!(error.contains("hidden"), "the page shows an error: {dom}");
    assert!(!dom.contains(KEY), "the page shows the key");

    for (name, size) in [("ui-1280.png", "1280,1000"), ("ui-390.png", "390,1400")] {
        let path = dir.path().join(name);
        run_chromium(
            &browser,
            dir.path(),
            &url,
            &[
                &format!("--window-size={size}"),
                &format!("--screenshot={}", path.display()),
            ],
        );
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(bytes > 10_000, "{name}: {bytes} bytes");
        println!("screenshot: {}", path.display());
    }
    assert!(
        tasks.try_join_next().is_none(),
        "a waiting request was answered"
    );
    tasks.abort_all();
    // `UI_SCREENSHOTS_TO=DIR` keeps copies (the temp dir goes with the test).
    if let Some(to) = std::env::var_os("UI_SCREENSHOTS_TO") {
        for name in ["ui-1280.png", "ui-390.png"] {
            std::fs::copy(dir.path().join(name), Path::new(&to).join(name))
                .expect("copying a screenshot");
        }
    }
}
