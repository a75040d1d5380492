//! `llm-scheduler loadtest` with the proxy: the headers the load generator reads are the ones the proxy writes,
//! read through an in-process proxy; the subcommand's exit status as a process, against the real binary.

mod common;

use std::time::Duration;

use common::{run, Proxy, KEY};
use loadtest::{Load, LoadConfig};
use testkit::{Behavior, MockUpstream};

/// A proxy whose one group answers from `mock_response`, behind the master key [`KEY`].
fn mock_config() -> String {
    format!(
        r#"
model_list:
  - model_name: m
    litellm_params: {{ model: openai/gpt-4o, mock_response: "hello" }}
general_settings:
  master_key: {KEY}
"#
    )
}

/// `llm-scheduler loadtest --url URL --model m --concurrency 4 ARGS...` to completion: (exit code, stdout,
/// stderr).
fn loadtest_process(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut argv = vec![
        "loadtest",
        "--url",
        url,
        "--model",
        "m",
        "--concurrency",
        "4",
    ];
    argv.extend_from_slice(args);
    run(&argv, &[])
}

#[test]
fn the_load_generator_reads_the_headers_the_proxy_writes() {
    assert_eq!(loadtest::HEADER_QUEUE_WAIT_MS, proxy::HEADER_QUEUE_WAIT_MS);
    assert_eq!(loadtest::HEADER_OVERHEAD_MS, proxy::HEADER_OVERHEAD_MS);
}

#[tokio::test]
async fn through_the_proxy_the_queue_wait_and_overhead_headers_are_read() {
    let upstream = MockUpstream::start().await.unwrap();
    let config = proxy::Config::from_yaml_str(&format!(
        r#"
model_list:
  - model_name: bench
    litellm_params:
      model: openai/gpt-4o
      api_base: {}
      api_key: sk-upstream
      max_parallel_requests: 2
general_settings:
  master_key: sk-loadtest-test-key-0123456789
"#,
        upstream.base_url()
    ))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(proxy::run(listener, config, async {
        let _ = stopped.await;
    }));
    upstream.set_behavior(Behavior::ok().with_latency(Duration::from_millis(5)));

    let mut config = LoadConfig::new(&[&format!("http://{addr}")]).unwrap();
    config.key = Some("sk-loadtest-test-key-0123456789".into());
    config.model = "bench".into();
    config.num_requests = 40;
    config.load = Load::Closed { concurrency: 8 };
    config.priority_mix = Some("0:1,100:1".parse().unwrap());
    config.upstream_log = Some(
        format!("{}/__mock/requests", upstream.url())
            .parse()
            .unwrap(),
    );
    let report = loadtest::run(&config).await.unwrap();

    assert_eq!(report.statuses.get("200"), Some(&40), "{report}");
    // Every request reached the upstream with its tag, so each was matched to its arrival there.
    let tags: std::collections::BTreeSet<String> = upstream
        .requests()
        .iter()
        .filter_map(|r| r.body["user"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(tags.len(), 40, "{tags:?}");
    assert_eq!(report.upstream_inversions.unwrap().checked, 40);
    let wait = report.queue_wait_ms.unwrap();
    assert_eq!(wait.count, 40);
    // 8 clients, 2 slots: most requests waited.
    assert!(wait.p90 > 0.0, "{wait:?}");
    assert_eq!(report.overhead_ms.unwrap().count, 40);
    let inversions = report.inversions.unwrap();
    assert_eq!(inversions.checked, 40);
    assert!(upstream.peak_in_flight() <= 2);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[test]
fn a_run_whose_requests_all_fail_exits_non_zero() {
    let proxy = Proxy::start(&mock_config(), &[]).unwrap();
    let url = proxy.url("");

    // Without the key every request gets 401: the run fails, after printing its report.
    let (code, out, err) = loadtest_process(&url, &["--num-requests", "20"]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("401: 20"), "{out}");
    assert!(err.contains("20 of 20 requests failed"), "{err}");

    // The same with a threshold that lets every request fail: the run passes.
    let (code, out, err) =
        loadtest_process(&url, &["--num-requests", "20", "--max-error-rate", "1"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("401: 20"), "{out}");

    // With the key every request is answered: the default threshold passes, and the JSON says so.
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    let json_arg = json.display().to_string();
    let (code, out, err) = loadtest_process(
        &url,
        &["--num-requests", "20", "--key", KEY, "--json", &json_arg],
    );
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["statuses"]["200"], 20, "{report}");
    assert_eq!(report["passed"], true, "{report}");
}

#[test]
fn queue_mode_submits_jobs_and_polls_them_to_their_answer() {
    let proxy = Proxy::start(&mock_config(), &[]).unwrap();
    let url = proxy.url("");
    let (code, out, err) =
        loadtest_process(&url, &["--num-requests", "30", "--key", KEY, "--queue"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("/queue/request"), "{out}");
    assert!(out.contains("200: 30"), "{out}");
    // A refused submission is the run's status: no key, 401.
    let (code, out, _) = loadtest_process(&url, &["--num-requests", "5", "--queue"]);
    assert_eq!(code, 1);
    assert!(out.contains("401: 5"), "{out}");
}

#[tokio::test]
async fn the_error_threshold_is_a_share_of_the_finished_requests() {
    let upstream = MockUpstream::start().await.unwrap();
    let url = upstream.url();
    // 2 of 10 requests answered 429: a share of 0.2.
    let failing_run = |max_error_rate: &'static str| {
        upstream.push_behavior(Behavior::rate_limited(1));
        upstream.push_behavior(Behavior::rate_limited(1));
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            loadtest_process(
                &url,
                &["--num-requests", "10", "--max-error-rate", max_error_rate],
            )
        })
    };

    let (code, out, err) = failing_run("0.2").await.unwrap();
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("429: 2"), "{out}");

    let (code, out, err) = failing_run("0.1").await.unwrap();
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("2 of 10 requests failed"), "{err}");

    // A threshold that is not a share is refused before anything is sent.
    let before = upstream.request_count();
    for bad in ["1.5", "-0.1", "NaN", "five"] {
        let (url, flag) = (url.clone(), format!("--max-error-rate={bad}"));
        let (code, _, err) = tokio::task::spawn_blocking(move || {
            loadtest_process(&url, &["--num-requests", "10", &flag])
        })
        .await
        .unwrap();
        assert_ne!(code, 0, "--max-error-rate {bad} accepted");
        assert!(err.contains("--max-error-rate"), "{bad}: {err}");
    }
    assert_eq!(upstream.request_count(), before);
}
