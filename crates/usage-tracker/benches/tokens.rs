//! Cost of token estimation on the request path: BPE (o200k_base, cl100k_base) against the character
//! heuristic, for a typical chat prompt and a large one.

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

criterion_group!(benches, bench);
criterion_main!(benches);
