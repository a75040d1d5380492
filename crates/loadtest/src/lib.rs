//! The load generator behind `llm-scheduler loadtest`: chat completions against OpenAI-compatible endpoints on
//! this machine, with a latency summary.
//!
//! Sends `--num-requests` chat completions to one or more loopback URLs (round robin), either as a closed loop
//! (`--concurrency` workers, each sending when its previous request ended) or as an open loop (`--rate`:
//! request `i` is due at `i / rate` seconds whatever happened before, and its latency counts from then, so a
//! slow server cannot hide its queue). Priorities come from `--priority-mix`. The summary gives throughput,
//! latency percentiles (HdrHistogram), statuses, the same split by priority, the queue wait and overhead that
//! llm-scheduler reports in its response headers, and priority inversions; `--json` writes it as JSON.
//!
//! Layout:
//! - `mix`: [`PriorityMix`], parsing `--priority-mix` and choosing each request's priority.
//! - `runner`: the HTTP client (one pool), the closed and open loops, the warm-up.
//! - `report`: [`Report`], the figures as text and JSON.
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

mod mix;
mod report;
mod runner;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::Url;

pub use self::mix::{PriorityClass, PriorityMix, PriorityMixError};
pub use self::report::{Inversions, LatencySummary, PriorityReport, Report};

/// The endpoint a bare base URL is completed with.
pub const DEFAULT_PATH: &str = "/v1/chat/completions";

/// The response header in which llm-scheduler reports a request's queue wait in milliseconds (the proxy's
/// `HEADER_QUEUE_WAIT_MS`; its tests check the two agree).
pub const HEADER_QUEUE_WAIT_MS: &str = "x-llm-scheduler-queue-wait-ms";

/// The response header in which llm-scheduler reports its overhead in milliseconds (the proxy's
/// `HEADER_OVERHEAD_MS`).
pub const HEADER_OVERHEAD_MS: &str = "x-llm-scheduler-overhead-ms";

/// How requests are issued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// `concurrency` requests in flight at all times.
    Closed {
        /// Workers, each with one request in flight.
        concurrency: usize,
    },
    /// A fixed arrival rate, whatever the answers' latency.
    Open {
        /// Requests per second.
        rate: f64,
    },
}

/// A load test.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Endpoint URLs, used round robin. Loopback hosts only.
    pub urls: Vec<Url>,
    /// Sent as `Authorization: Bearer <key>`.
    pub key: Option<String>,
    /// The `model` of every request.
    pub model: String,
    /// Requests in the measured run.
    pub num_requests: u64,
    /// Closed or open loop.
    pub load: Load,
    /// Priorities (the body's `priority`); none sends no `priority` field.
    pub priority_mix: Option<PriorityMix>,
    /// Ask for server-sent events and read the stream to its end.
    pub stream: bool,
    /// Longest a request may take, answer body included.
    pub timeout: Duration,
    /// No request is started after this long (the measured run and the warm-up each).
    pub duration: Duration,
    /// Requests sent and discarded before the measured run (connections, caches).
    pub warmup: u64,
    /// The user message.
    pub message: String,
    /// `max_tokens` of every request, if set.
    pub max_tokens: Option<u32>,
    /// A name for the run, repeated in the report.
    pub label: Option<String>,
    /// See [`Inversions`].
    pub inversion_tolerance: Duration,
    /// The upstream's arrival log (testkit's mock upstream: `http://127.0.0.1:PORT/__mock/requests`). When
    /// set, every request of the measured run carries `"user": "<run tag>-<number>"` and, after the run,
    /// inversions are also counted by arrival at the upstream ([`Report::upstream_inversions`]).
    pub upstream_log: Option<Url>,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

impl LoadConfig {
    /// Defaults (1,000 requests, concurrency 16, model `gpt-4o`, 60 s timeout, 600 s duration) for `urls`.
    pub fn new(urls: &[&str]) -> Result<Self, LoadtestError> {
        Ok(Self {
            urls: urls
                .iter()
                .map(|u| endpoint_url(u))
                .collect::<Result<_, _>>()?,
            key: None,
            model: "gpt-4o".to_owned(),
            num_requests: 1_000,
            load: Load::Closed { concurrency: 16 },
            priority_mix: None,
            stream: false,
            timeout: Duration::from_secs(60),
            duration: Duration::from_secs(600),
            warmup: 0,
            message: "Say hello.".to_owned(),
            max_tokens: None,
            label: None,
            inversion_tolerance: Duration::from_millis(2),
            upstream_log: None,
            progress: false,
        })
    }

    fn validate(&self) -> Result<(), LoadtestError> {
        let bad = |msg: &str| Err(LoadtestError::Argument(msg.to_owned()));
        if self.urls.is_empty() {
            return bad("at least one --url is needed");
        }
        if self.num_requests == 0 {
            return bad("--num-requests must be at least 1");
        }
        match self.load {
            Load::Closed { concurrency: 0 } => return bad("--concurrency must be at least 1"),
            Load::Open { rate } if !(rate.is_finite() && rate > 0.0) => {
                return bad("--rate must be a positive number of requests per second")
            }
            _ => {}
        }
        if self.timeout.is_zero() || self.duration.is_zero() {
            return bad("--timeout and --duration must be positive");
        }
        Ok(())
    }
}

/// Why a load test could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadtestError {
    /// A URL that does not parse or is not http(s).
    #[error("invalid --url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A URL whose host is not a loopback address: this tool only loads the local machine.
    #[error("--url `{0}` is not on this machine: the load generator only targets loopback addresses (127.0.0.1, ::1, localhost)")]
    NotLoopback(String),
    /// An argument out of range.
    #[error("{0}")]
    Argument(String),
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The priority mix does not parse.
    #[error("invalid --priority-mix: {0}")]
    Mix(#[from] PriorityMixError),
    /// The upstream's arrival log could not be read.
    #[error("cannot read the upstream's arrival log {0}")]
    UpstreamLog(String),
    /// The JSON report could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A base URL (`http://127.0.0.1:4000`, completed with [`DEFAULT_PATH`]) or a full endpoint URL, checked to be
/// on this machine.
pub fn endpoint_url(given: &str) -> Result<Url, LoadtestError> {
    let mut url = local_url(given)?;
    if url.path().is_empty() || url.path() == "/" {
        url.set_path(DEFAULT_PATH);
    }
    Ok(url)
}

/// An http(s) URL on this machine, as given.
fn local_url(given: &str) -> Result<Url, LoadtestError> {
    let invalid = |reason: &str| LoadtestError::InvalidUrl {
        url: given.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(given.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    let host = url.host_str().ok_or_else(|| invalid("no host"))?;
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        return Err(LoadtestError::NotLoopback(given.to_owned()));
    }
    Ok(url)
}

/// Runs the load test described by `config` and returns its figures.
pub async fn run(config: &LoadConfig) -> Result<Report, LoadtestError> {
    config.validate()?;
    runner::run(config).await
}

/// Command-line arguments of `llm-scheduler loadtest` (the equivalent of LiteLLM's `--test_async`).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadtestArgs {
    /// Where to send requests: a base URL (`http://127.0.0.1:4000`, completed with /v1/chat/completions) or a
    /// full endpoint URL. Repeat (or separate with commas) to spread requests round robin over replicas.
    /// Loopback addresses only.
    #[arg(long = "url", required = true, value_delimiter = ',')]
    pub urls: Vec<String>,
    /// API key, sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "LLM_SCHEDULER_KEY", hide_env_values = true)]
    pub key: Option<String>,
    /// The `model` of every request.
    #[arg(long, default_value = "gpt-4o")]
    pub model: String,
    /// Requests in the measured run.
    #[arg(long, default_value_t = 1_000)]
    pub num_requests: u64,
    /// Closed loop: requests in flight at all times (default 16 when --rate is not given).
    #[arg(long, conflicts_with = "rate")]
    pub concurrency: Option<usize>,
    /// Open loop: requests per second, sent on schedule whatever the latency; latency counts from each
    /// request's scheduled time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Priorities as PRIORITY:WEIGHT pairs, e.g. `0:10,128:90` (10% at priority 0, 90% at 128).
    #[arg(long)]
    pub priority_mix: Option<String>,
    /// Stream the answers (server-sent events), read to the end.
    #[arg(long)]
    pub stream: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Seconds a request may take, answer included, before it counts as a timeout.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Seconds after which no new request is started (bounds the run whatever --num-requests says).
    #[arg(long, default_value_t = 600.0)]
    pub duration: f64,
    /// Requests sent first and left out of the figures (warms connections and caches).
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// The user message of every request.
    #[arg(long, default_value = "Say hello.")]
    pub message: String,
    /// `max_tokens` of every request.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// A name for the run, repeated in the summary and the JSON.
    #[arg(long)]
    pub label: Option<String>,
    /// Priority inversions closer than this many milliseconds are not counted (client-side timing noise).
    #[arg(long, default_value_t = 2.0)]
    pub inversion_tolerance_ms: f64,
    /// The upstream's arrival log, e.g. `http://127.0.0.1:PORT/__mock/requests` of `mock-upstream`: requests
    /// then carry a `user` tag, and inversions are also counted by arrival at the upstream.
    #[arg(long, value_name = "URL")]
    pub upstream_log: Option<String>,
}

impl LoadtestArgs {
    /// The load test these arguments describe.
    pub fn to_config(&self) -> Result<LoadConfig, LoadtestError> {
        let secs = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 1e9 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(LoadtestError::Argument(format!(
                    "{name} must be a positive number of seconds"
                )))
            }
        };
        let urls: Vec<&str> = self.urls.iter().map(String::as_str).collect();
        let mut config = LoadConfig::new(&urls)?;
        config.key = self.key.clone().filter(|k| !k.is_empty());
        config.model.clone_from(&self.model);
        config.num_requests = self.num_requests;
        config.load = match (self.rate, self.concurrency) {
            (Some(rate), _) => Load::Open { rate },
            (None, Some(concurrency)) => Load::Closed { concurrency },
            (None, None) => Load::Closed { concurrency: 16 },
        };
        config.priority_mix = self.priority_mix.as_deref().map(str::parse).transpose()?;
        config.stream = self.stream;
        config.timeout = secs("--timeout", self.timeout)?;
        config.duration = secs("--duration", self.duration)?;
        config.warmup = self.warmup;
        config.message.clone_from(&self.message);
        config.max_tokens = self.max_tokens;
        config.label.clone_from(&self.label);
        config.inversion_tolerance = if self.inversion_tolerance_ms >= 0.0 {
            secs(
                "--inversion-tolerance-ms",
                self.inversion_tolerance_ms / 1000.0 + 1e-9,
            )?
        } else {
            return Err(LoadtestError::Argument(
                "--inversion-tolerance-ms must not be negative".into(),
            ));
        };
        config.upstream_log = self.upstream_log.as_deref().map(local_url).transpose()?;
        config.progress = true;
        config.validate()?;
        Ok(config)
    }
}

/// `llm-scheduler loadtest`: runs, prints the summary on stdout (a progress bar on stderr while it runs, when
/// stderr is a terminal), writes `--json`.
pub async fn run_cli(args: &LoadtestArgs) -> Result<Report, LoadtestError> {
    let config = args.to_config()?;
    let report = run(&config).await?;
    print!("{report}");
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| LoadtestError::Write {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(path, json + "\n").map_err(|source| LoadtestError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_completed_and_must_be_local() {
        assert_eq!(
            endpoint_url("http://127.0.0.1:4000").unwrap().as_str(),
            "http://127.0.0.1:4000/v1/chat/completions"
        );
        assert_eq!(
            endpoint_url("http://localhost:4000/chat/completions")
                .unwrap()
                .as_str(),
            "http://localhost:4000/chat/completions"
        );
        assert!(endpoint_url("http://[::1]:9/").is_ok());
        assert!(matches!(
            endpoint_url("http://10.0.0.1:4000"),
            Err(LoadtestError::NotLoopback(_))
        ));
        assert!(matches!(
            endpoint_url("https://api.openai.com/v1/chat/completions"),
            Err(LoadtestError::NotLoopback(_))
        ));
        assert!(matches!(
            endpoint_url("ftp://127.0.0.1/x"),
            Err(LoadtestError::InvalidUrl { .. })
        ));
        assert!(matches!(
            endpoint_url("not a url"),
            Err(LoadtestError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn arguments_are_checked() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: LoadtestArgs,
        }
        let parse = |argv: &[&str]| {
            let mut full = vec!["loadtest"];
            full.extend_from_slice(argv);
            Cli::try_parse_from(full).map(|c| c.args)
        };
        let args = parse(&[
            "--url",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--rate",
            "50",
        ])
        .unwrap();
        let config = args.to_config().unwrap();
        assert_eq!(config.urls.len(), 2);
        assert_eq!(config.load, Load::Open { rate: 50.0 });
        assert!(parse(&[
            "--url",
            "http://127.0.0.1:1",
            "--rate",
            "5",
            "--concurrency",
            "2"
        ])
        .is_err());
        let bad_mix =
            parse(&["--url", "http://127.0.0.1:1", "--priority-mix", "0:10,x:90"]).unwrap();
        assert!(matches!(bad_mix.to_config(), Err(LoadtestError::Mix(_))));
        let zero = parse(&["--url", "http://127.0.0.1:1", "--concurrency", "0"]).unwrap();
        assert!(matches!(zero.to_config(), Err(LoadtestError::Argument(_))));
        let rate = parse(&["--url", "http://127.0.0.1:1", "--rate=-3"]).unwrap();
        assert!(rate.to_config().is_err());
    }
}
