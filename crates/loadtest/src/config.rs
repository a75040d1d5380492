//! What a load test is ([`LoadConfig`]): its endpoints (on this machine only), its load, its requests.

use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;

use crate::{LoadtestError, PriorityMix};

/// The endpoint a bare base URL is completed with.
pub const DEFAULT_PATH: &str = "/v1/chat/completions";

/// The path of a base URL with `--queue`: durable jobs' submission.
pub(crate) const QUEUE_PATH: &str = "/queue/request";

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
    /// Submit durable jobs (`/queue/request`) and poll each to its end (`/queue/response/{id}`).
    pub queue: bool,
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
    /// See [`Inversions`](crate::Inversions).
    pub inversion_tolerance: Duration,
    /// The upstream's arrival log (testkit's mock upstream: `http://127.0.0.1:PORT/__mock/requests`). When
    /// set, every request of the measured run carries `"user": "<run tag>-<number>"` and, after the run,
    /// inversions are also counted by arrival at the upstream ([`Report::upstream_inversions`](crate::Report::upstream_inversions)).
    pub upstream_log: Option<Url>,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// The largest share (0 to 1) of the measured run's requests that may fail, that is get no 2xx answer
    /// (another status, a timeout, a connection or transport error), for the run to pass
    /// ([`Report::passed`](crate::Report::passed)). 0: any failure fails the run.
    pub max_error_rate: f64,
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
            queue: false,
            timeout: Duration::from_secs(60),
            duration: Duration::from_secs(600),
            warmup: 0,
            message: "Say hello.".to_owned(),
            max_tokens: None,
            label: None,
            inversion_tolerance: Duration::from_millis(2),
            upstream_log: None,
            progress: false,
            max_error_rate: 0.0,
        })
    }

    pub(crate) fn validate(&self) -> Result<(), LoadtestError> {
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
        if !(0.0..=1.0).contains(&self.max_error_rate) {
            return bad(
                "--max-error-rate must be a share of the requests from 0 to 1 (e.g. 0.05 for 5%)",
            );
        }
        Ok(())
    }
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
pub(crate) fn local_url(given: &str) -> Result<Url, LoadtestError> {
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
}
