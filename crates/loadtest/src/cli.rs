//! The `llm-scheduler loadtest` subcommand: its arguments ([`LoadtestArgs`]) and [`run_cli`], which runs, prints
//! the summary and writes `--json`.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::local_url;
use crate::{run, Load, LoadConfig, LoadtestError, Report};

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
    /// Submit every request as a durable job (`POST /queue/request`, the default path of a base URL then)
    /// and long-poll `/queue/response/{id}` until it is finished, as LiteLLM's `--test_async` did: latency
    /// runs from the submission to the finished answer; the status is the job's `status_code`.
    #[arg(long, conflicts_with = "stream")]
    pub queue: bool,
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
    /// The largest share of the measured run's requests, from 0 to 1, that may fail (an answer other than 2xx, a
    /// timeout, a connection or transport error) for the run to pass. When more fail, the command prints its
    /// report, writes --json, and exits with status 1. The default 0 fails the run on any failed request; 1
    /// never fails it on answers (e.g. a run meant to be refused with 429).
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub max_error_rate: f64,
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
        config.queue = self.queue;
        if self.queue {
            for url in &mut config.urls {
                if url.path() == crate::config::DEFAULT_PATH {
                    url.set_path(crate::config::QUEUE_PATH);
                }
            }
        }
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
        config.max_error_rate = self.max_error_rate;
        config.validate()?;
        Ok(config)
    }
}

/// `llm-scheduler loadtest`: runs, prints the summary on stdout (a progress bar on stderr while it runs, when
/// stderr is a terminal), writes `--json`; then [`LoadtestError::TooManyErrors`] when the run did not pass
/// ([`Report::passed`]), so that the command exits non-zero.
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
    if !report.passed {
        return Err(LoadtestError::TooManyErrors {
            failed: report.failed,
            finished: report.finished,
            max_error_rate: report.max_error_rate,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let default = parse(&["--url", "http://127.0.0.1:1"]).unwrap();
        assert_eq!(default.to_config().unwrap().max_error_rate, 0.0);
        let half = parse(&["--url", "http://127.0.0.1:1", "--max-error-rate", "0.5"]).unwrap();
        assert_eq!(half.to_config().unwrap().max_error_rate, 0.5);
        for bad in ["1.5", "-0.1", "NaN", "inf"] {
            let args = parse(&[
                "--url",
                "http://127.0.0.1:1",
                &format!("--max-error-rate={bad}"),
            ])
            .unwrap();
            match args.to_config() {
                Err(LoadtestError::Argument(message)) => {
                    assert!(message.contains("--max-error-rate"), "{message}")
                }
                other => panic!("--max-error-rate {bad}: {other:?}"),
            }
        }
        assert!(parse(&["--url", "http://127.0.0.1:1", "--max-error-rate", "some"]).is_err());
    }
}
