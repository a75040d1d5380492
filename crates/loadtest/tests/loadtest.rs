//! The load generator against testkit's mock upstream: counts, statuses, the split by priority, timeouts, the JSON
//! report, the command-line arguments.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use loadtest::{Load, LoadConfig, LoadtestArgs};
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

#[test]
fn targets_off_this_machine_are_refused() {
    let err = args(&["--url", "http://192.0.2.1:4000"])
        .to_config()
        .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
}
