//! `llm-scheduler loadtest` with the proxy: the headers the load generator reads are the ones the proxy writes,
//! read through an in-process proxy.

use std::time::Duration;

use loadtest::{Load, LoadConfig};
use testkit::{Behavior, MockUpstream};

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
