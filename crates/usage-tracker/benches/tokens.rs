//! Cost of token estimation on the request path: BPE (o200k_base, cl100k_base) against the character
//! heuristic, for a typical chat prompt and a large one, and whole estimates of 2 MiB messages.

// `criterion_group!` generates an undocumented `pub fn benches`.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use std::hint::black_box;
use usage_tracker::{preload_tokenizers, TokenCounter, TokenEstimator};

const PARAGRAPH: &str = "The router admits each request by priority, reserves capacity on a deployment \
with headroom and settles the real usage when the upstream answers. Limits hold across replicas because \
every check-and-reserve runs as one script in Redis. ";

fn typical_chat() -> serde_json::Value {
    // About 2 KB of prose over a system prompt and three turns.
    json!({
        "model": "gpt-4o",
        "max_tokens": 512,
        "messages": [
            {"role": "system", "content": PARAGRAPH.repeat(2)},
            {"role": "user", "content": PARAGRAPH.repeat(3)},
            {"role": "assistant", "content": PARAGRAPH.repeat(2)},
            {"role": "user", "content": PARAGRAPH},
        ]
    })
}

fn bench(c: &mut Criterion) {
    let started = std::time::Instant::now();
    preload_tokenizers();
    println!(
        "loading o200k_base and cl100k_base: {:?}",
        started.elapsed()
    );
    let chat = typical_chat();
    let chars: usize = chat["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["content"].as_str())
                .map(str::len)
                .sum()
        })
        .unwrap_or(0);
    println!("typical chat prompt: {chars} characters");
    let estimator = TokenEstimator::default();
    for model in ["gpt-4o", "gpt-4", "claude-3-5-sonnet"] {
        c.bench_function(&format!("estimate typical chat ({model})"), |b| {
            b.iter(|| estimator.estimate(black_box(model), black_box(&chat)))
        });
    }
    let large = PARAGRAPH.repeat(400);
    println!("large prompt: {} characters", large.len());
    for counter in [
        TokenCounter::O200kBase,
        TokenCounter::Cl100kBase,
        TokenCounter::CharHeuristic,
    ] {
        c.bench_function(&format!("count large prompt ({counter:?})"), |b| {
            b.iter(|| counter.count(black_box(&large)))
        });
    }
}

/// 2 MiB of base64-like text (letters, digits, `+`, `/`) from a fixed xorshift sequence: no whitespace.
fn base64_like(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(ALPHABET[(x % 64) as usize])
        })
        .collect()
}

/// Bodies near the request size limit: ordinary prose, and one message of 2 MiB without whitespace (a pasted
/// blob), whose BPE count used to take over a second.
fn bench_large_bodies(c: &mut Criterion) {
    preload_tokenizers();
    let mut group = c.benchmark_group("2 MiB message");
    group.sample_size(10);
    let size = 2 << 20;
    let prose = PARAGRAPH.repeat(size / PARAGRAPH.len());
    let blobs = [
        ("prose", prose),
        ("one repeated letter", "x".repeat(size)),
        ("base64-like", base64_like(size)),
    ];
    let estimator = TokenEstimator::default();
    for (name, text) in &blobs {
        let body = json!({"messages": [{"role": "user", "content": text}]});
        for model in ["gpt-4o", "gpt-4"] {
            let e = estimator.estimate(model, &body);
            println!(
                "{name} ({model}): {} prompt tokens estimated",
                e.prompt_tokens
            );
            group.bench_function(format!("estimate {name} ({model})"), |b| {
                b.iter(|| estimator.estimate(black_box(model), black_box(&body)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench, bench_large_bodies);
criterion_main!(benches);
