//! Driving the load: one HTTP client, a closed loop of workers or an open loop paced by arrival time.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Url;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::report::{Outcome, Report, RunFacts, Sample};
use crate::{Load, LoadConfig, LoadtestError, HEADER_OVERHEAD_MS, HEADER_QUEUE_WAIT_MS};

/// Connections kept idle per host: enough for any concurrency this tool is used with.
const IDLE_CONNECTIONS_PER_HOST: usize = 4096;

/// Concurrency of the warm-up of an open-loop run.
const OPEN_LOOP_WARMUP_CONCURRENCY: usize = 8;

/// What every request task shares.
struct Shared {
    client: reqwest::Client,
    urls: Vec<Url>,
    /// One pre-serialised body per priority class.
    bodies: Vec<Bytes>,
    auth: Option<HeaderValue>,
    mix: Option<crate::PriorityMix>,
    timeout: Duration,
    start: Instant,
    progress: ProgressBar,
    /// With `--upstream-log`, the measured run's requests carry `"user": "<tag>-<number>"`, which the
    /// upstream records, so arrivals there can be matched to requests.
    tag: Option<String>,
    /// Durable jobs: submit, then long-poll to the end.
    queue: bool,
}

/// Seconds of one long poll of a job (`?wait=`).
const JOB_POLL_WAIT_SECS: u32 = 30;

/// What a job's submission and polls ended with.
enum JobEnd {
    /// The submission's status when it was refused, else the finished job's `status_code`.
    Status(u16),
    /// An answer that is not the API's JSON.
    Malformed,
}

impl Shared {
    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.start).as_micros()).unwrap_or(u64::MAX)
    }

    /// Sends request number `i`, due at `due`, and reads its answer to the end.
    async fn send(&self, i: u64, due: Instant) -> Sample {
        let class = self.mix.as_ref().map_or(0, |m| m.class_of(i));
        let url = self.urls[(i % self.urls.len() as u64) as usize].clone();
        // A job's poll URL is resolved against its submission's.
        let job_url = self.queue.then(|| url.clone());
        let body = match &self.tag {
            None => self.bodies[class].clone(),
            Some(tag) => tagged(&self.bodies[class], tag, i),
        };
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(body);
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let sent = Instant::now();
        if let Some(url) = job_url {
            let outcome = match tokio::time::timeout(self.timeout, self.job(request, &url)).await {
                Ok(Ok(JobEnd::Status(status))) => Outcome::Status(status),
                Ok(Ok(JobEnd::Malformed)) => Outcome::Error,
                Ok(Err(e)) if e.is_connect() => Outcome::Connect,
                Ok(Err(e)) if e.is_timeout() => Outcome::Timeout,
                Ok(Err(_)) => Outcome::Error,
                Err(_) => Outcome::Timeout,
            };
            let done = Instant::now();
            self.progress.inc(1);
            return Sample {
                index: i,
                class,
                scheduled_us: self.micros(due),
                sent_us: self.micros(sent),
                done_us: self.micros(done),
                outcome,
                queue_wait_us: None,
                overhead_us: None,
            };
        }
        let exchange = async {
            let mut response = request.send().await?;
            let status = response.status().as_u16();
            let queue_wait = header_micros(response.headers(), HEADER_QUEUE_WAIT_MS);
            let overhead = header_micros(response.headers(), HEADER_OVERHEAD_MS);
            while response.chunk().await?.is_some() {}
            Ok::<_, reqwest::Error>((status, queue_wait, overhead))
        };
        let (outcome, queue_wait_us, overhead_us) =
            match tokio::time::timeout(self.timeout, exchange).await {
                Ok(Ok((status, wait, overhead))) => (Outcome::Status(status), wait, overhead),
                Ok(Err(e)) if e.is_connect() => (Outcome::Connect, None, None),
                Ok(Err(e)) if e.is_timeout() => (Outcome::Timeout, None, None),
                Ok(Err(_)) => (Outcome::Error, None, None),
                Err(_) => (Outcome::Timeout, None, None),
            };
        let done = Instant::now();
        self.progress.inc(1);
        Sample {
            index: i,
            class,
            scheduled_us: self.micros(due),
            sent_us: self.micros(sent),
            done_us: self.micros(done),
            outcome,
            queue_wait_us,
            overhead_us,
        }
    }
}

impl Shared {
    /// Submits a job with `request` (to `url`) and long-polls it until it is finished.
    async fn job(
        &self,
        request: reqwest::RequestBuilder,
        url: &Url,
    ) -> Result<JobEnd, reqwest::Error> {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let answer = response.bytes().await?;
        if status != 200 {
            return Ok(JobEnd::Status(status));
        }
        let Some(poll) = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v.get("url").and_then(|u| u.as_str()).map(str::to_owned))
            .and_then(|path| url.join(&path).ok())
        else {
            return Ok(JobEnd::Malformed);
        };
        loop {
            let mut get = self
                .client
                .get(poll.clone())
                .query(&[("wait", JOB_POLL_WAIT_SECS)]);
            if let Some(auth) = &self.auth {
                get = get.header(AUTHORIZATION, auth.clone());
            }
            let response = get.send().await?;
            let status = response.status().as_u16();
            let body = response.bytes().await?;
            if status != 200 {
                return Ok(JobEnd::Status(status));
            }
            let Ok(job) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return Ok(JobEnd::Malformed);
            };
            if job.get("status").and_then(|s| s.as_str()) == Some("finished") {
                let code = job.get("status_code").and_then(serde_json::Value::as_u64);
                return Ok(match code.and_then(|c| u16::try_from(c).ok()) {
                    Some(code) => JobEnd::Status(code),
                    None => JobEnd::Malformed,
                });
            }
        }
    }
}

/// `body` (a serialised JSON object) with `"user": "<tag>-<i>"` added.
fn tagged(body: &Bytes, tag: &str, i: u64) -> Bytes {
    let end = body
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    let trimmed = &body[..end];
    let open = trimmed.strip_suffix(b"}").unwrap_or(trimmed);
    let mut out = Vec::with_capacity(body.len() + tag.len() + 32);
    out.extend_from_slice(open);
    if open.iter().rev().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        out.push(b',');
    }
    out.extend_from_slice(format!("\"user\":\"{tag}-{i}\"}}").as_bytes());
    Bytes::from(out)
}

/// The first arrival of each of this run's requests in the upstream's log (`GET` of testkit's
/// `/__mock/requests`: `{"requests": [{"epoch_ms", "body"}, ...]}`), by request number.
async fn upstream_arrivals(
    client: &reqwest::Client,
    log: &Url,
    tag: &str,
    timeout: Duration,
) -> Result<HashMap<u64, u64>, LoadtestError> {
    let failed = |what: String| LoadtestError::UpstreamLog(format!("{log}: {what}"));
    let fetch = async {
        let response = client.get(log.clone()).send().await?.error_for_status()?;
        response.json::<Value>().await
    };
    let log_body = tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| failed(format!("no answer within {} s", timeout.as_secs_f64())))?
        .map_err(|e| failed(e.to_string()))?;
    let requests = log_body
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| failed("no `requests` array in the answer".into()))?;
    let prefix = format!("{tag}-");
    let mut arrivals = HashMap::new();
    for r in requests {
        let number = r
            .pointer("/body/user")
            .and_then(Value::as_str)
            .and_then(|user| user.strip_prefix(&prefix))
            .and_then(|n| n.parse::<u64>().ok());
        if let (Some(number), Some(at)) = (number, r.get("epoch_ms").and_then(Value::as_u64)) {
            arrivals
                .entry(number)
                .and_modify(|first: &mut u64| *first = (*first).min(at))
                .or_insert(at);
        }
    }
    Ok(arrivals)
}

/// A millisecond header value (`"1.234"`) in microseconds.
fn header_micros(headers: &HeaderMap, name: &str) -> Option<u64> {
    let ms: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| (ms * 1000.0).round() as u64)
}

/// The request body of each priority class.
fn bodies(config: &LoadConfig) -> Vec<Bytes> {
    let base = || {
        let mut body = json!({
            "model": config.model,
            "messages": [{"role": "user", "content": config.message}],
        });
        if let Value::Object(map) = &mut body {
            if let Some(max_tokens) = config.max_tokens {
                map.insert("max_tokens".into(), max_tokens.into());
            }
            if config.stream {
                map.insert("stream".into(), true.into());
            }
        }
        body
    };
    match &config.priority_mix {
        None => vec![Bytes::from(base().to_string())],
        Some(mix) => mix
            .classes()
            .iter()
            .map(|class| {
                let mut body = base();
                if let Value::Object(map) = &mut body {
                    map.insert("priority".into(), class.priority.into());
                }
                Bytes::from(body.to_string())
            })
            .collect(),
    }
}

fn client(config: &LoadConfig) -> Result<reqwest::Client, LoadtestError> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(IDLE_CONNECTIONS_PER_HOST)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        .tcp_nodelay(true)
        .no_proxy()
        .build()
        .map_err(|e| LoadtestError::Client(e.to_string()))
}

fn progress_bar(config: &LoadConfig, len: u64) -> ProgressBar {
    if !config.progress || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Runs the warm-up (answers discarded), then the measured load, and builds the report.
pub(crate) async fn run(config: &LoadConfig) -> Result<Report, LoadtestError> {
    let client = client(config)?;
    let auth = match &config.key {
        Some(key) => Some(
            HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| LoadtestError::Argument("--key is not a valid header value".into()))?,
        ),
        None => None,
    };
    let shared = |start: Instant, progress: ProgressBar, tag: Option<String>| {
        Arc::new(Shared {
            client: client.clone(),
            urls: config.urls.clone(),
            bodies: bodies(config),
            auth: auth.clone(),
            mix: config.priority_mix.clone(),
            timeout: config.timeout,
            start,
            progress,
            tag,
            queue: config.queue,
        })
    };

    if config.warmup > 0 {
        let concurrency = match config.load {
            Load::Closed { concurrency } => concurrency,
            Load::Open { .. } => OPEN_LOOP_WARMUP_CONCURRENCY,
        };
        let warm = shared(Instant::now(), ProgressBar::hidden(), None);
        closed_loop(warm, config.warmup, concurrency, config.duration).await;
    }

    let started_epoch_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    // Unique per run: earlier runs' requests may still be in the upstream's log.
    let tag = config
        .upstream_log
        .as_ref()
        .map(|_| format!("loadtest-{}-{started_epoch_us}", std::process::id()));
    let measured = shared(
        Instant::now(),
        progress_bar(config, config.num_requests),
        tag.clone(),
    );
    let progress = measured.progress.clone();
    let (samples, sent) = match config.load {
        Load::Closed { concurrency } => {
            closed_loop(measured, config.num_requests, concurrency, config.duration).await
        }
        Load::Open { rate } => {
            open_loop(measured, config.num_requests, rate, config.duration).await
        }
    };
    progress.finish_and_clear();
    // The run's figures stand without the log: a log that cannot be read or holds none of this run's
    // requests (a mock started with --no-record) is reported, not fatal.
    let upstream_arrivals = match (&config.upstream_log, &tag) {
        (Some(log), Some(tag)) => {
            let log_timeout = config.timeout.min(Duration::from_secs(60));
            match upstream_arrivals(&client, log, tag, log_timeout).await {
                Ok(arrivals) if arrivals.is_empty() => {
                    eprintln!(
                        "warning: none of this run's requests is in the upstream's log {log} \
                         (does it record requests?)"
                    );
                    None
                }
                Ok(arrivals) => Some(arrivals),
                Err(e) => {
                    eprintln!("warning: {e}");
                    None
                }
            }
        }
        _ => None,
    };

    let (rate, concurrency) = match config.load {
        Load::Closed { concurrency } => (None, Some(concurrency)),
        Load::Open { rate } => (Some(rate), None),
    };
    let facts = RunFacts {
        label: config.label.clone(),
        targets: config.urls.iter().map(ToString::to_string).collect(),
        rate,
        concurrency,
        stream: config.stream,
        mix: config.priority_mix.clone(),
        started_epoch_ms: started_epoch_us / 1000,
        requested: config.num_requests,
        sent,
        inversion_tolerance_us: u64::try_from(config.inversion_tolerance.as_micros())
            .unwrap_or(u64::MAX),
        max_error_rate: config.max_error_rate,
        started_epoch_us,
        upstream_arrivals,
    };
    Ok(Report::build(facts, &samples))
}

/// `concurrency` workers, each sending its next request as soon as the previous one ended, until `n` were
/// sent or `duration` passed. Returns the samples and the number sent.
async fn closed_loop(
    shared: Arc<Shared>,
    n: u64,
    concurrency: usize,
    duration: Duration,
) -> (Vec<Sample>, u64) {
    let stop_at = shared.start + duration;
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let workers = usize::try_from(n).unwrap_or(usize::MAX).min(concurrency);
    for _ in 0..workers {
        let (shared, next, sent, tx) = (shared.clone(), next.clone(), sent.clone(), tx.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if i >= n || now >= stop_at {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                if tx.send(shared.send(i, now).await).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut samples = Vec::with_capacity(usize::try_from(n.min(1 << 20)).unwrap_or(0));
    while let Some(sample) = rx.recv().await {
        samples.push(sample);
    }
    (samples, sent.load(Ordering::Relaxed))
}

/// Request `i` is due at `start + i / rate`, whatever happened to earlier ones; a pacing thread (sleeping
/// with the OS timer, finer than the runtime's millisecond wheel) hands each to its own task when due.
/// Latency counts from the due time, so a server that falls behind cannot hide it (no coordinated
/// omission). Stops after `n` requests or `duration`.
async fn open_loop(
    shared: Arc<Shared>,
    n: u64,
    rate: f64,
    duration: Duration,
) -> (Vec<Sample>, u64) {
    let runtime = tokio::runtime::Handle::current();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sent = Arc::new(AtomicU64::new(0));
    let pacer = {
        let (shared, sent) = (shared.clone(), sent.clone());
        let interval = 1.0 / rate;
        std::thread::spawn(move || {
            let stop_at = shared.start + duration;
            for i in 0..n {
                let due = shared.start + Duration::from_secs_f64(i as f64 * interval);
                if due >= stop_at {
                    break;
                }
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let (shared, tx) = (shared.clone(), tx.clone());
                runtime.spawn(async move {
                    let _ = tx.send(shared.send(i, due).await);
                });
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut samples = Vec::with_capacity(usize::try_from(n.min(1 << 20)).unwrap_or(0));
    while let Some(sample) = rx.recv().await {
        samples.push(sample);
    }
    // Every sender is gone, so the pacing thread has returned.
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    (samples, sent.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_keep_the_body_valid_json() {
        let body = Bytes::from(json!({"model": "m", "priority": 3}).to_string());
        let with_tag: Value = serde_json::from_slice(&tagged(&body, "run", 7)).unwrap();
        assert_eq!(
            with_tag,
            json!({"model": "m", "priority": 3, "user": "run-7"})
        );
        let empty: Value = serde_json::from_slice(&tagged(&Bytes::from("{}"), "run", 0)).unwrap();
        assert_eq!(empty, json!({"user": "run-0"}));
        let spaced: Value =
            serde_json::from_slice(&tagged(&Bytes::from("{\"a\": 1}\n"), "run", 2)).unwrap();
        assert_eq!(spaced, json!({"a": 1, "user": "run-2"}));
    }
}
