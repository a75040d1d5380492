//! `llm-scheduler loadtest` against an in-process mock upstream and an in-process proxy: counts, statuses, the
//! split by priority, the JSON report.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use proxy::loadtest::{self, Load, LoadConfig, LoadtestArgs};
use serde_json::Value;
use testkit::{Behavior, MockUpstream};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: LoadtestArgs,
}

fn args(argv: &[&str]) -> LoadtestArgs {
    let mut full = vec!["loadtest"];
    full.extend_from_slice(argv);
    Cli::try_parse_from(full).unwrap().args
}

#[tokio::test]
async fn a_closed_loop_sends_every_request_once_with_its_priority() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.push_behavior(Behavior::rate_limited(1));
    upstream.push_behavior(Behavior::rate_limited(1));
    let mut config = LoadConfig::new(&[&upstream.url()]).unwrap();
    config.num_requests = 60;
    config.load = Load::Closed { concurrency: 4 };
    config.priority_mix = Some("0:1,128:3".parse().unwrap());
    config.model = "gpt-test".into();

    let report = loadtest::run(&config).await.unwrap();

    assert_eq!(
        (report.requested, report.sent, report.finished),
        (60, 60, 60)
    );
    assert_eq!(report.ok, 58);
    assert_eq!(report.statuses.get("200"), Some(&58));
    assert_eq!(report.statuses.get("429"), Some(&2));
    assert_eq!(report.mode, "closed");
    assert_eq!(report.concurrency, Some(4));
    assert_eq!(report.latency_ms.count, 60);
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.max >= report.latency_ms.p99);
    assert!(report.throughput_rps > 0.0);
    // The mock is not llm-scheduler: no queue-wait or overhead headers.
    assert!(report.queue_wait_ms.is_none() && report.overhead_ms.is_none());

    // Each request reached the upstream once, carrying the priority of its class.
    assert_eq!(upstream.request_count(), 60);
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    for request in upstream.requests() {
        assert_eq!(request.path, "/v1/chat/completions");
        assert_eq!(request.body["model"], "gpt-test");
        *seen
            .entry(request.body["priority"].as_u64().unwrap())
            .or_default() += 1;
    }
    let reported: BTreeMap<u64, u64> = report
        .by_priority
        .iter()
        .map(|p| (u64::from(p.priority), p.count))
        .collect();
    assert_eq!(seen, reported);
    assert_eq!(reported.values().sum::<u64>(), 60);
    assert!(reported[&128] > reported[&0], "{reported:?}");
}

#[tokio::test]
async fn an_open_loop_run_writes_its_report_as_json() {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    let url = upstream.url();
    let json_path = path.display().to_string();
    let args = args(&[
        "--url",
        &url,
        "--rate",
        "400",
        "--num-requests",
        "40",
        "--warmup",
        "5",
        "--stream",
        "--label",
        "open",
        "--json",
        &json_path,
    ]);

    let report = loadtest::run_cli(&args).await.unwrap();

    assert_eq!((report.sent, report.finished, report.ok), (40, 40, 40));
    // Warm-up requests reach the server but not the figures.
    assert_eq!(upstream.request_count(), 45);
    assert!(upstream.requests().iter().all(|r| r.body["stream"] == true));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["label"], "open");
    assert_eq!(json["mode"], "open");
    assert_eq!(json["rate"], 400.0);
    assert_eq!(json["stream"], true);
    assert_eq!(json["finished"], 40);
    assert_eq!(json["statuses"]["200"], 40);
    assert_eq!(json["latency_ms"]["count"], 40);
    assert!(json["service_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(json["targets"][0]
        .as_str()
        .unwrap()
        .ends_with("/v1/chat/completions"));
    // 40 requests at 400/s take about 0.1 s: the pacing is by the clock, not as fast as possible.
    assert!(report.elapsed_s >= 0.09, "{}", report.elapsed_s);
}

#[tokio::test]
async fn requests_that_take_too_long_count_as_timeouts() {
    let upstream = MockUpstream::start().await.unwrap();
    upstream.push_behavior(Behavior::hang());
    let mut config = LoadConfig::new(&[&upstream.url()]).unwrap();
    config.num_requests = 5;
    config.load = Load::Closed { concurrency: 1 };
    config.timeout = Duration::from_millis(300);

    let report = loadtest::run(&config).await.unwrap();

    assert_eq!(report.statuses.get("timeout"), Some(&1));
    assert_eq!(report.statuses.get("200"), Some(&4));
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
fn targets_off_this_machine_are_refused() {
    let err = args(&["--url", "http://192.0.2.1:4000"])
        .to_config()
        .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
}
