//! The load generator behind `llm-scheduler loadtest`: chat completions against OpenAI-compatible endpoints on
//! this machine, with a latency summary.
//!
//! Sends `--num-requests` chat completions to one or more loopback URLs (round robin), either as a closed loop
//! (`--concurrency` workers, each sending when its previous request ended) or as an open loop (`--rate`:
//! request `i` is due at `i / rate` seconds whatever happened before, and its latency counts from then, so a
//! slow server cannot hide its queue). Priorities come from `--priority-mix`. The summary gives throughput,
//! latency percentiles (HdrHistogram), statuses, the same split by priority, the queue wait and overhead that
//! llm-scheduler reports in its response headers, and priority inversions; `--json` writes it as JSON. A run
//! passes when no more of its requests fail (no 2xx answer) than `--max-error-rate` allows, by default none;
//! [`run_cli`] answers [`LoadtestError::TooManyErrors`] when it did not, so the command exits non-zero.
//!
//! Layout:
//! - `config`: [`LoadConfig`], what a load test is: endpoints (loopback only, [`endpoint_url`]), [`Load`] (open
//!   or closed loop), the requests.
//! - `mix`: [`PriorityMix`], parsing `--priority-mix` and choosing each request's priority.
//! - `runner`: the HTTP client (one pool), the closed and open loops, the warm-up.
//! - `report`: [`Report`], the figures as text and JSON.
//! - `cli`: [`LoadtestArgs`], the subcommand's arguments, and [`run_cli`].
//! - `error`: [`LoadtestError`].
//!
//! The proxy's binary wires [`LoadtestArgs`] in as its `loadtest` subcommand and calls [`run_cli`]; the library
//! is usable on its own:
//!
//! ```no_run
//! # async fn demo() -> Result<(), loadtest::LoadtestError> {
//! use loadtest::{Load, LoadConfig};
//!
//! let mut config = LoadConfig::new(&["http://127.0.0.1:4000"])?;
//! config.key = Some("sk-local-dev-key".into());
//! config.num_requests = 5_000;
//! config.load = Load::Open { rate: 1_000.0 };
//! config.priority_mix = Some("0:10,128:90".parse()?);
//! let report = loadtest::run(&config).await?;
//! println!("{report}");
//! # Ok(()) }
//! ```

mod cli;
mod config;
mod error;
mod mix;
mod report;
mod runner;

pub use self::cli::{run_cli, LoadtestArgs};
pub use self::config::{endpoint_url, Load, LoadConfig, DEFAULT_PATH};
pub use self::error::LoadtestError;
pub use self::mix::{PriorityClass, PriorityMix, PriorityMixError};
pub use self::report::{Inversions, LatencySummary, PriorityReport, Report};

/// The response header in which llm-scheduler reports a request's queue wait in milliseconds (the proxy's
/// `HEADER_QUEUE_WAIT_MS`; its tests check the two agree).
pub const HEADER_QUEUE_WAIT_MS: &str = "x-llm-scheduler-queue-wait-ms";

/// The response header in which llm-scheduler reports its overhead in milliseconds (the proxy's
/// `HEADER_OVERHEAD_MS`).
pub const HEADER_OVERHEAD_MS: &str = "x-llm-scheduler-overhead-ms";

/// Runs the load test described by `config` and returns its figures.
pub async fn run(config: &LoadConfig) -> Result<Report, LoadtestError> {
    config.validate()?;
    runner::run(config).await
}
