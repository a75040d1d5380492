//! `mock-upstream`: the mock OpenAI-compatible upstream as a process, for local clusters and benchmarks.
//!
//! Prints `mock-upstream listening on http://ADDR` once bound, then serves until SIGINT or SIGTERM.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use testkit::{Behavior, MockUpstream, MockUpstreamConfig, DEFAULT_REPLY};

/// A scriptable OpenAI-compatible upstream that answers every request with a fixed reply.
#[derive(Debug, Parser)]
#[command(name = "mock-upstream", version)]
struct Cli {
    /// Interface to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to bind (0 picks a free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Delay before every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Reply text of completions (one token per word).
    #[arg(long, default_value = DEFAULT_REPLY)]
    reply: String,
    /// Do not record requests (for benchmarks).
    #[arg(long)]
    no_record: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let upstream = MockUpstream::start_with(MockUpstreamConfig {
        host: cli.host,
        port: cli.port,
        reply: cli.reply,
        behavior: Behavior::ok().with_latency(Duration::from_millis(cli.latency_ms)),
        record: !cli.no_record,
    })
    .await?;
    println!("mock-upstream listening on {}", upstream.url());
    shutdown_signal().await?;
    upstream.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT or, on Unix, SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for SIGINT")?,
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for SIGINT")?;
    Ok(())
}
