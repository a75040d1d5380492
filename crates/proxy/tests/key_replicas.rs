//! Virtual keys across three `llm-scheduler` processes on one Redis: a key generated on A works on B at once,
//! deleted on B it is refused on A within a second, an expired key is refused; `rpm_limit: 5` lets exactly 5 of
//! 15 concurrent requests over the three replicas reach the upstream; `max_parallel_requests: 1` runs a key's
//! requests one at a time while another key's run alongside; no secret in any log line or Redis value.

mod common;

use std::time::{Duration, Instant};

use common::{client, mock_answering_after, shared_group_config, Proxy, KEY};
use serde_json::{json, Value};
use testkit::{Behavior, RedisServer};

/// How long each upstream call takes.
const LATENCY: Duration = Duration::from_millis(400);

async fn generate(http: &reqwest::Client, proxy: &Proxy, body: Value) -> String {
    let v: Value = http
        .post(proxy.url("/key/generate"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["key"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"))
        .to_owned()
}

/// A chat request with `key` to `proxy`: (status, when it was answered).
async fn chat(proxy: &Proxy, key: &str) -> (u16, Instant) {
    let status = reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "shared", "messages": [{"role": "user", "content": "hi"}], "timeout": 20}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16());
    (status, Instant::now())
}

#[tokio::test]
async fn keys_hold_across_replicas() {
    let redis = RedisServer::start().await.unwrap();
    // Answers at once until the parallel part.
    let upstream = mock_answering_after(Duration::ZERO).await;
    let config = shared_group_config(&upstream.base_url(), &redis, "d1", 100, "");
    let replicas: Vec<Proxy> = (0..3)
        .map(|_| Proxy::start(&config, &[]).unwrap())
        .collect();
    let (a, b, c) = (&replicas[0], &replicas[1], &replicas[2]);
    let http = client();
    let mut secrets = Vec::new();

    // Generated on A: works on B at once. Deleted on B: refused on A within a second.
    let key = generate(&http, a, json!({"key_alias": "roaming"})).await;
    secrets.push(key.clone());
    assert_eq!(chat(a, &key).await.0, 200, "A warms its cache");
    assert_eq!(chat(b, &key).await.0, 200, "B at once");
    let deleted = http
        .post(b.url("/key/delete"))
        .json(&json!({"keys": [key]}))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let deleted_at = Instant::now();
    loop {
        let (status, at) = chat(a, &key).await;
        if status == 401 {
            assert!(
                at - deleted_at < Duration::from_secs(1),
                "refused after {:?}",
                at - deleted_at
            );
            break;
        }
        assert_eq!(status, 200);
        assert!(
            deleted_at.elapsed() < Duration::from_secs(1),
            "A still serves the deleted key"
        );
    }

    // duration "2s": refused once it expired, on every replica.
    let short = generate(&http, c, json!({"duration": "2s"})).await;
    secrets.push(short.clone());
    let made = Instant::now();
    assert_eq!(chat(a, &short).await.0, 200);

    // rpm_limit 5, 15 concurrent requests over the three replicas: exactly 5 reach the upstream.
    let limited = generate(&http, a, json!({"rpm_limit": 5})).await;
    secrets.push(limited.clone());
    upstream.clear();
    let tries = (0..15).map(|i| {
        let proxy = &replicas[i % 3];
        let key = limited.clone();
        async move { chat(proxy, &key).await.0 }
    });
    let statuses = futures::future::join_all(tries).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(upstream.request_count(), 5);

    // max_parallel_requests 1: its three requests run one after another while another key's three run
    // alongside them.
    let serial = generate(&http, b, json!({"max_parallel_requests": 1})).await;
    let free = generate(&http, b, json!({})).await;
    secrets.extend([serial.clone(), free.clone()]);
    upstream.set_behavior(Behavior::ok().with_latency(LATENCY));
    upstream.reset_peak();
    let started = Instant::now();
    let serial_runs = futures::future::join_all((0..3).map(|i| chat(&replicas[i], &serial)));
    let free_runs = futures::future::join_all((0..3).map(|i| chat(&replicas[i], &free)));
    let (serial_done, free_done) = tokio::join!(serial_runs, free_runs);
    assert!(
        serial_done.iter().chain(&free_done).all(|(s, _)| *s == 200),
        "{serial_done:?} {free_done:?}"
    );
    let mut ends: Vec<Duration> = serial_done.iter().map(|(_, at)| *at - started).collect();
    ends.sort();
    for pair in ends.windows(2) {
        assert!(
            pair[1] - pair[0] >= LATENCY - Duration::from_millis(50),
            "overlapping: {ends:?}"
        );
    }
    let free_last = free_done.iter().map(|(_, at)| *at - started).max().unwrap();
    assert!(
        free_last < ends[2],
        "the other key waited: {free_last:?} vs {ends:?}"
    );
    assert!(
        upstream.peak_in_flight() <= 4,
        "peak {}",
        upstream.peak_in_flight()
    );

    // The short key expired by now (or soon): refused everywhere.
    while made.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for proxy in &replicas {
        assert_eq!(chat(proxy, &short).await.0, 401);
    }

    // No secret in Redis or in any log line.
    let stored = redis.dump_text().await.unwrap();
    for secret in &secrets {
        assert!(!stored.contains(&secret[3..]), "a secret is in Redis");
        for proxy in &replicas {
            assert!(
                !proxy.output().contains(&secret[3..]),
                "a secret is in a log"
            );
        }
    }
    assert!(!stored.contains(KEY) && replicas.iter().all(|p| !p.output().contains(KEY)));
}

#[tokio::test]
async fn the_keys_command_manages_a_running_proxy() {
    let config = format!(
        "model_list:\n  - model_name: m\n    litellm_params: {{ model: openai/m, mock_response: hi }}\n\
         general_settings:\n  master_key: {KEY}\n"
    );
    let proxy = Proxy::start(&config, &[]).unwrap();
    let url = proxy.url("");
    let keys = |args: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut all = vec!["keys".to_owned(), "--url".to_owned(), url];
            all.extend(args);
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            common::run(&refs, &[("LITELLM_MASTER_KEY", KEY)])
        })
    };
    let (code, out, err) = keys(vec![
        "generate".into(),
        "--alias".into(),
        "cli".into(),
        "--rpm-limit".into(),
        "7".into(),
    ])
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let generated: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            generated["key_alias"].as_str(),
            generated["rpm_limit"].as_u64()
        ),
        (Some("cli"), Some(7))
    );
    let secret = generated["key"].as_str().unwrap().to_owned();
    let token = generated["token"].as_str().unwrap().to_owned();
    assert_eq!(chat_model(&proxy, &secret, "m").await, 200);

    let (code, out, _) = keys(vec!["list".into()]).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains(&token) && !out.contains(&secret), "{out}");
    let (code, out, _) = keys(vec!["delete".into(), secret.clone()]).await.unwrap();
    assert_eq!(code, 0);
    assert!(out.contains(&token), "{out}");
    assert_eq!(chat_model(&proxy, &secret, "m").await, 401);

    // A wrong master key: a non-zero exit naming the refusal, without the key.
    let (code, _, err) = tokio::task::spawn_blocking({
        let url = proxy.url("");
        move || {
            common::run(
                &[
                    "keys",
                    "--url",
                    &url,
                    "--master-key",
                    "sk-wrong-master-key-1",
                    "list",
                ],
                &[],
            )
        }
    })
    .await
    .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("401") && !err.contains("sk-wrong-master-key-1"),
        "{err}"
    );
}

async fn chat_model(proxy: &Proxy, key: &str, model: &str) -> u16 {
    reqwest::Client::new()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}
