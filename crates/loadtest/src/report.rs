//! What a load test measured: latency percentiles (HdrHistogram), statuses, the split by priority, priority
//! inversions; as text and as JSON.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::mix::PriorityMix;

/// Largest latency recorded exactly: one hour, in microseconds (larger values are clamped).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Most requests checked pairwise for priority inversions.
const MAX_INVERSION_CHECK: usize = 50_000;

/// Upper bounds (microseconds) of the delay buckets of [`Inversions::pairs_without_tolerance_by_delay`].
const DELAY_BUCKETS_US: [u64; 4] = [500, 1_000, 2_000, 5_000];

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// An HTTP answer, body read to the end.
    Status(u16),
    /// No complete answer within `--timeout`.
    Timeout,
    /// The connection could not be made.
    Connect,
    /// Any other transport failure (reset, broken body).
    Error,
}

impl Outcome {
    fn key(self) -> String {
        match self {
            Outcome::Status(code) => code.to_string(),
            Outcome::Timeout => "timeout".to_owned(),
            Outcome::Connect => "connect_error".to_owned(),
            Outcome::Error => "transport_error".to_owned(),
        }
    }

    fn is_ok(self) -> bool {
        matches!(self, Outcome::Status(200..=299))
    }
}

/// One request, times in microseconds since the start of the measured run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// The request's number in its run (0-based).
    pub(crate) index: u64,
    /// Index of the priority class (0 without a mix).
    pub(crate) class: usize,
    /// When the request was due: its arrival time in an open loop, its send time in a closed loop.
    pub(crate) scheduled_us: u64,
    /// When it was handed to the HTTP client.
    pub(crate) sent_us: u64,
    /// When its body was read to the end (or it failed).
    pub(crate) done_us: u64,
    pub(crate) outcome: Outcome,
    /// `x-llm-scheduler-queue-wait-ms`, when answered by llm-scheduler.
    pub(crate) queue_wait_us: Option<u64>,
    /// `x-llm-scheduler-overhead-ms`, when answered by llm-scheduler.
    pub(crate) overhead_us: Option<u64>,
}

/// Percentiles of one latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
}

/// Latency recorder in microseconds, 3 significant digits.
pub(crate) struct Recorder(Histogram<u64>);

impl Recorder {
    pub(crate) fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts (1 <= low, high >= 2 * low, sigfig <= 5).
        let histogram = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant histogram bounds are valid");
        Self(histogram)
    }

    pub(crate) fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros.clamp(1, MAX_LATENCY_US));
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        let h = &self.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            mean: h.mean() / 1000.0,
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// Figures of one priority class.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriorityReport {
    /// The class's priority.
    pub priority: u32,
    /// Its weight in the mix.
    pub weight: u32,
    /// Requests of this class that finished.
    pub count: u64,
    /// Of those, 2xx answers.
    pub ok: u64,
    /// Latency of every finished request of the class.
    pub latency_ms: LatencySummary,
    /// Queue wait reported by the gateway (2xx answers carrying the header).
    pub queue_wait_ms: LatencySummary,
    /// Answers by status.
    pub statuses: BTreeMap<String, u64>,
}

/// Priority inversions: a more urgent request admitted after a less urgent one while it was already waiting.
///
/// [`Report::inversions`] estimates admission times on the client's clock as send time +
/// `x-llm-scheduler-queue-wait-ms`; [`Report::upstream_inversions`] takes them from the upstream's arrival log
/// (arrival at the upstream, a moment after admission, in whole milliseconds). Either way both sides of a pair
/// carry timing noise; pairs closer than `tolerance_ms` are not counted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Inversions {
    /// Requests examined: 2xx answers with a queue-wait header, or (upstream arrivals) 2xx answers found in
    /// the upstream's log.
    pub checked: u64,
    /// Of those, requests that waited in the queue longer than the tolerance.
    pub waited: u64,
    /// Pairs (urgent `a`, less urgent `b`) with `a` sent more than the tolerance before `b` was admitted and
    /// admitted more than the tolerance after it.
    pub pairs: u64,
    /// Distinct urgent requests overtaken at least once.
    pub overtaken: u64,
    /// Pairs counted with no tolerance at all (an upper bound that includes client-side timing noise).
    pub pairs_without_tolerance: u64,
    /// Those pairs by how much later the urgent request was admitted: counts for delays up to 0.5, 1, 2, 5 ms
    /// and above 5 ms.
    pub pairs_without_tolerance_by_delay: [u64; 5],
    /// Largest admission delay of an overtaken request behind a less urgent one.
    pub max_delay_ms: f64,
    /// Tolerance in milliseconds.
    pub tolerance_ms: f64,
}

/// The result of a load test.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `--label`, if given.
    pub label: Option<String>,
    /// URLs the requests went to, round robin.
    pub targets: Vec<String>,
    /// `open` (fixed arrival rate) or `closed` (fixed concurrency).
    pub mode: String,
    /// Arrival rate of an open loop (requests per second).
    pub rate: Option<f64>,
    /// Concurrency of a closed loop.
    pub concurrency: Option<usize>,
    /// Whether responses were streamed.
    pub stream: bool,
    /// `--priority-mix`, if given.
    pub priority_mix: Option<String>,
    /// Unix epoch milliseconds when the measured run started (after the warm-up).
    pub started_epoch_ms: u64,
    /// `--num-requests`.
    pub requested: u64,
    /// Requests sent (fewer than requested when `--duration` ran out).
    pub sent: u64,
    /// Requests that got an answer or failed.
    pub finished: u64,
    /// Of those, 2xx answers.
    pub ok: u64,
    /// Of those, the ones that failed: another status, a timeout, a connection or transport error.
    pub failed: u64,
    /// `failed / finished` (0 when nothing finished).
    pub error_rate: f64,
    /// `--max-error-rate`: the largest `error_rate` the run passes with.
    pub max_error_rate: f64,
    /// Whether the run passed: some request finished and `error_rate` is at most `max_error_rate`.
    /// `llm-scheduler loadtest` exits with status 1 when it did not.
    pub passed: bool,
    /// From the start to the last request's end, in seconds.
    pub elapsed_s: f64,
    /// Finished requests per second.
    pub throughput_rps: f64,
    /// 2xx answers per second.
    pub ok_rps: f64,
    /// Latency of every finished request: from its scheduled arrival (open loop, so a slow server cannot
    /// hide queueing behind the generator) or its send (closed loop) to the end of its body or its failure.
    pub latency_ms: LatencySummary,
    /// Open loop only: from the actual send to the end (the generator's own lag excluded).
    pub service_ms: Option<LatencySummary>,
    /// Queue wait reported by llm-scheduler (`x-llm-scheduler-queue-wait-ms`), when present.
    pub queue_wait_ms: Option<LatencySummary>,
    /// Overhead reported by llm-scheduler (`x-llm-scheduler-overhead-ms`: response head minus upstream
    /// latency), when present.
    pub overhead_ms: Option<LatencySummary>,
    /// Answers by status (`200`, `429`, ..., `timeout`, `connect_error`, `transport_error`).
    pub statuses: BTreeMap<String, u64>,
    /// The same split by priority class (with a mix).
    pub by_priority: Vec<PriorityReport>,
    /// Priority inversions (with a mix of two or more classes and queue-wait headers), admission estimated on
    /// the client's clock.
    pub inversions: Option<Inversions>,
    /// Priority inversions by arrival at the upstream (with `--upstream-log` and a mix of two or more classes).
    pub upstream_inversions: Option<Inversions>,
}

/// What one priority class collected while the report is built.
struct ClassTally {
    latency: Recorder,
    queue_wait: Recorder,
    statuses: BTreeMap<String, u64>,
    count: u64,
    ok: u64,
}

impl ClassTally {
    fn new() -> Self {
        Self {
            latency: Recorder::new(),
            queue_wait: Recorder::new(),
            statuses: BTreeMap::new(),
            count: 0,
            ok: 0,
        }
    }
}

/// How the run was set up, for the report.
pub(crate) struct RunFacts {
    pub(crate) label: Option<String>,
    pub(crate) targets: Vec<String>,
    pub(crate) rate: Option<f64>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) stream: bool,
    pub(crate) mix: Option<PriorityMix>,
    pub(crate) started_epoch_ms: u64,
    pub(crate) requested: u64,
    pub(crate) sent: u64,
    pub(crate) inversion_tolerance_us: u64,
    /// See [`Report::max_error_rate`].
    pub(crate) max_error_rate: f64,
    /// Unix epoch microseconds at the run's start (time 0 of the samples).
    pub(crate) started_epoch_us: u64,
    /// With `--upstream-log`: the first arrival at the upstream (Unix epoch ms) by request number.
    pub(crate) upstream_arrivals: Option<HashMap<u64, u64>>,
}

impl Report {
    pub(crate) fn build(facts: RunFacts, samples: &[Sample]) -> Report {
        let classes = facts.mix.as_ref().map_or(1, |m| m.classes().len());
        let mut latency = Recorder::new();
        let mut service = Recorder::new();
        let mut queue_wait = Recorder::new();
        let mut overhead = Recorder::new();
        let mut statuses = BTreeMap::new();
        let mut per_class: Vec<ClassTally> = (0..classes).map(|_| ClassTally::new()).collect();
        let (mut ok, mut end_us, mut waits, mut overheads) = (0u64, 0u64, 0u64, 0u64);
        for s in samples {
            let total = s.done_us.saturating_sub(s.scheduled_us);
            latency.record(total);
            service.record(s.done_us.saturating_sub(s.sent_us));
            end_us = end_us.max(s.done_us);
            *statuses.entry(s.outcome.key()).or_insert(0) += 1;
            let class = &mut per_class[s.class.min(classes - 1)];
            class.latency.record(total);
            *class.statuses.entry(s.outcome.key()).or_insert(0) += 1;
            class.count += 1;
            if s.outcome.is_ok() {
                ok += 1;
                class.ok += 1;
                if let Some(w) = s.queue_wait_us {
                    queue_wait.record(w);
                    class.queue_wait.record(w);
                    waits += 1;
                }
                if let Some(o) = s.overhead_us {
                    overhead.record(o);
                    overheads += 1;
                }
            }
        }
        let finished = samples.len() as u64;
        let failed = finished - ok;
        // A quotient, not `max * finished`: a share given in decimals (0.2) then compares equal to the same
        // share of requests (2 of 10), both being the double nearest to it.
        let error_rate = if finished > 0 {
            failed as f64 / finished as f64
        } else {
            0.0
        };
        let elapsed_s = end_us as f64 / 1e6;
        let per_second = |n: u64| {
            if elapsed_s > 0.0 {
                n as f64 / elapsed_s
            } else {
                0.0
            }
        };
        let by_priority = match &facts.mix {
            None => Vec::new(),
            Some(mix) => mix
                .classes()
                .iter()
                .zip(per_class)
                .map(|(class, tally)| PriorityReport {
                    priority: class.priority,
                    weight: class.weight,
                    count: tally.count,
                    ok: tally.ok,
                    latency_ms: tally.latency.summary(),
                    queue_wait_ms: tally.queue_wait.summary(),
                    statuses: tally.statuses,
                })
                .collect(),
        };
        let priorities: Option<Vec<u32>> = match &facts.mix {
            Some(mix) if mix.classes().len() > 1 => {
                Some(mix.classes().iter().map(|c| c.priority).collect())
            }
            _ => None,
        };
        let inversions = match &priorities {
            Some(priorities) if waits > 0 => count_inversions(
                by_queue_wait(samples, priorities),
                facts.inversion_tolerance_us,
            ),
            _ => None,
        };
        let upstream_inversions = match (&priorities, &facts.upstream_arrivals) {
            (Some(priorities), Some(arrivals)) => count_inversions(
                by_upstream_arrival(samples, priorities, arrivals, facts.started_epoch_us),
                facts.inversion_tolerance_us,
            ),
            _ => None,
        };
        Report {
            label: facts.label,
            targets: facts.targets,
            mode: if facts.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .to_owned(),
            rate: facts.rate,
            concurrency: facts.concurrency,
            stream: facts.stream,
            priority_mix: facts.mix.as_ref().map(ToString::to_string),
            started_epoch_ms: facts.started_epoch_ms,
            requested: facts.requested,
            sent: facts.sent,
            finished,
            ok,
            failed,
            error_rate,
            max_error_rate: facts.max_error_rate,
            passed: finished > 0 && error_rate <= facts.max_error_rate,
            elapsed_s,
            throughput_rps: per_second(finished),
            ok_rps: per_second(ok),
            latency_ms: latency.summary(),
            service_ms: facts.rate.map(|_| service.summary()),
            queue_wait_ms: (waits > 0).then(|| queue_wait.summary()),
            overhead_ms: (overheads > 0).then(|| overhead.summary()),
            statuses,
            by_priority,
            inversions,
            upstream_inversions,
        }
    }
}

/// (priority, sent, admitted) of the 2xx answers that carry a queue wait: admitted = sent + queue wait.
fn by_queue_wait(samples: &[Sample], priorities: &[u32]) -> Vec<(u32, u64, u64)> {
    samples
        .iter()
        .filter(|s| s.outcome.is_ok())
        .filter_map(|s| {
            let wait = s.queue_wait_us?;
            Some((priorities[s.class], s.sent_us, s.sent_us + wait))
        })
        .collect()
}

/// (priority, sent, admitted) of the 2xx answers found in the upstream's arrival log: admitted = first
/// arrival at the upstream, on the run's timeline.
fn by_upstream_arrival(
    samples: &[Sample],
    priorities: &[u32],
    arrivals: &HashMap<u64, u64>,
    started_epoch_us: u64,
) -> Vec<(u32, u64, u64)> {
    samples
        .iter()
        .filter(|s| s.outcome.is_ok())
        .filter_map(|s| {
            let arrived_us = arrivals.get(&s.index)?.saturating_mul(1000);
            Some((
                priorities[s.class],
                s.sent_us,
                arrived_us.saturating_sub(started_epoch_us),
            ))
        })
        .collect()
}

/// Counts inversions among requests given as (priority, sent, admitted) in microseconds; `None` when there
/// are none or too many to check pairwise.
fn count_inversions(mut admitted: Vec<(u32, u64, u64)>, tolerance_us: u64) -> Option<Inversions> {
    if admitted.is_empty() || admitted.len() > MAX_INVERSION_CHECK {
        return None;
    }
    admitted.sort_by_key(|&(_, _, at)| at);
    let waited = admitted
        .iter()
        .filter(|&&(_, sent, at)| at.saturating_sub(sent) > tolerance_us)
        .count() as u64;
    let (mut pairs, mut raw_pairs, mut max_delay_us) = (0u64, 0u64, 0u64);
    let mut by_delay = [0u64; 5];
    let mut overtaken = vec![false; admitted.len()];
    for (j, &(pb, _, at_b)) in admitted.iter().enumerate() {
        // Only requests admitted after b can have been overtaken by it.
        for (i, &(pa, sent_a, at_a)) in admitted.iter().enumerate().skip(j + 1) {
            if pa < pb && sent_a < at_b && at_a > at_b {
                raw_pairs += 1;
                let bucket = DELAY_BUCKETS_US
                    .iter()
                    .position(|&limit| at_a - at_b <= limit)
                    .unwrap_or(DELAY_BUCKETS_US.len());
                by_delay[bucket] += 1;
            }
            if pa < pb && sent_a + tolerance_us < at_b && at_a > at_b + tolerance_us {
                pairs += 1;
                overtaken[i] = true;
                max_delay_us = max_delay_us.max(at_a - at_b);
            }
        }
    }
    Some(Inversions {
        checked: admitted.len() as u64,
        waited,
        pairs,
        overtaken: overtaken.iter().filter(|o| **o).count() as u64,
        pairs_without_tolerance: raw_pairs,
        pairs_without_tolerance_by_delay: by_delay,
        max_delay_ms: max_delay_us as f64 / 1000.0,
        tolerance_ms: tolerance_us as f64 / 1000.0,
    })
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match (self.rate, self.concurrency) {
            (Some(rate), _) => format!("open loop, {rate} req/s scheduled"),
            (None, Some(c)) => format!("closed loop, concurrency {c}"),
            (None, None) => self.mode.clone(),
        };
        let stream = if self.stream { ", streaming" } else { "" };
        if let Some(label) = &self.label {
            writeln!(f, "run          {label}")?;
        }
        writeln!(f, "target       {}", self.targets.join(" "))?;
        writeln!(f, "mode         {mode}{stream}")?;
        writeln!(
            f,
            "requests     {} sent of {}, {} finished, {} ok, in {:.3} s",
            self.sent, self.requested, self.finished, self.ok, self.elapsed_s
        )?;
        writeln!(
            f,
            "throughput   {:.1} req/s ({:.1} ok/s)",
            self.throughput_rps, self.ok_rps
        )?;
        writeln!(f, "latency ms   {}", percentiles(&self.latency_ms))?;
        if let Some(s) = &self.service_ms {
            writeln!(f, "service ms   {}  (from the actual send)", percentiles(s))?;
        }
        if let Some(s) = &self.queue_wait_ms {
            writeln!(
                f,
                "queue ms     {}  (x-llm-scheduler-queue-wait-ms)",
                percentiles(s)
            )?;
        }
        if let Some(s) = &self.overhead_ms {
            writeln!(
                f,
                "overhead ms  {}  (x-llm-scheduler-overhead-ms)",
                percentiles(s)
            )?;
        }
        writeln!(f, "statuses     {}", statuses(&self.statuses))?;
        if !self.by_priority.is_empty() {
            writeln!(f, "by priority")?;
            writeln!(
                f,
                "  {:>8} {:>6} {:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}  statuses",
                "priority",
                "weight",
                "finished",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "max ms",
                "wait p50",
                "wait p99"
            )?;
            for p in &self.by_priority {
                let l = &p.latency_ms;
                writeln!(
                    f,
                    "  {:>8} {:>6} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>10.3} {:>10.3}  {}",
                    p.priority,
                    p.weight,
                    p.count,
                    l.p50,
                    l.p90,
                    l.p99,
                    l.max,
                    p.queue_wait_ms.p50,
                    p.queue_wait_ms.p99,
                    statuses(&p.statuses)
                )?;
            }
        }
        for (name, inversions) in [
            ("inversions", &self.inversions),
            ("upstream    ", &self.upstream_inversions),
        ] {
            if let Some(i) = inversions {
                writeln!(
                    f,
                    "{name:<12} {} pairs, {} requests overtaken (of {} checked, {} waited; tolerance {} ms; max delay {:.3} ms; {} pairs without tolerance){}",
                    i.pairs, i.overtaken, i.checked, i.waited, i.tolerance_ms, i.max_delay_ms, i.pairs_without_tolerance,
                    if name == "inversions" { "" } else { "  (by arrival at the upstream)" }
                )?;
            }
        }
        let (verdict, limit) = if self.passed {
            ("passed", "within")
        } else {
            ("FAILED", "above")
        };
        writeln!(
            f,
            "result       {verdict}: {} of {} requests failed ({:.1}%), {limit} --max-error-rate {}",
            self.failed,
            self.finished,
            self.error_rate * 100.0,
            self.max_error_rate
        )
    }
}

fn percentiles(s: &LatencySummary) -> String {
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}",
        s.p50, s.p90, s.p99, s.max
    )
}

fn statuses(map: &BTreeMap<String, u64>) -> String {
    let mut out = String::new();
    for (i, (status, count)) in map.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(out, "{status}: {count}");
    }
    if out.is_empty() {
        out.push_str("none");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(class: usize, sent_us: u64, wait_us: u64) -> Sample {
        Sample {
            index: sent_us,
            class,
            scheduled_us: sent_us,
            sent_us,
            done_us: sent_us + wait_us + 1_000,
            outcome: Outcome::Status(200),
            queue_wait_us: Some(wait_us),
            overhead_us: Some(100),
        }
    }

    #[test]
    fn inversions_count_only_overtaken_waiting_requests() {
        // Priorities: class 0 -> 0 (urgent), class 1 -> 128.
        let priorities = [0, 128];
        // a (urgent) sent at 0, admitted at 50 ms; b (less urgent) sent at 1 ms, admitted at 10 ms: inversion.
        let samples = [sample(0, 0, 50_000), sample(1, 1_000, 9_000)];
        let i = count_inversions(by_queue_wait(&samples, &priorities), 2_000).unwrap();
        assert_eq!((i.pairs, i.overtaken, i.checked, i.waited), (1, 1, 2, 2));
        assert!((i.max_delay_ms - 40.0).abs() < 1e-9);

        // The urgent request arrived after b was admitted: no inversion.
        let samples = [sample(0, 20_000, 30_000), sample(1, 1_000, 9_000)];
        assert_eq!(
            count_inversions(by_queue_wait(&samples, &priorities), 2_000)
                .unwrap()
                .pairs,
            0
        );

        // Within the tolerance: not counted.
        let samples = [sample(0, 0, 11_000), sample(1, 1_000, 9_000)];
        assert_eq!(
            count_inversions(by_queue_wait(&samples, &priorities), 2_000)
                .unwrap()
                .pairs,
            0
        );

        // The less urgent one first is the right order.
        let samples = [sample(1, 0, 50_000), sample(0, 1_000, 9_000)];
        assert_eq!(
            count_inversions(by_queue_wait(&samples, &priorities), 2_000)
                .unwrap()
                .pairs,
            0
        );
    }

    #[test]
    fn upstream_arrivals_give_admission_times() {
        let mix: PriorityMix = "0:1,128:1".parse().unwrap();
        let start_ms = 1_700_000_000_000u64;
        // a (urgent, number 0) sent at 0, b (number 1) sent at 1 ms. At the upstream b arrived 10 ms into the
        // run and a at 50 ms: an inversion, whatever the queue-wait headers say.
        let mut a = sample(0, 0, 0);
        let mut b = sample(1, 1_000, 0);
        (a.index, b.index) = (0, 1);
        let arrivals = HashMap::from([(0, start_ms + 50), (1, start_ms + 10)]);
        let facts = |arrivals: Option<HashMap<u64, u64>>| RunFacts {
            label: None,
            targets: vec![],
            rate: Some(10.0),
            concurrency: None,
            stream: false,
            mix: Some(mix.clone()),
            started_epoch_ms: start_ms,
            requested: 2,
            sent: 2,
            inversion_tolerance_us: 2_000,
            max_error_rate: 0.0,
            started_epoch_us: start_ms * 1000,
            upstream_arrivals: arrivals,
        };
        let report = Report::build(facts(Some(arrivals)), &[a, b]);
        let up = report.upstream_inversions.expect("counted from arrivals");
        assert_eq!((up.pairs, up.overtaken, up.checked), (1, 1, 2));
        assert!((up.max_delay_ms - 40.0).abs() < 1e-9);
        assert_eq!(report.inversions.map(|i| i.pairs), Some(0));
        assert!(report.to_string().contains("by arrival at the upstream"));

        // In order at the upstream: none. Requests missing from the log are left out.
        let report = Report::build(
            facts(Some(HashMap::from([(0, start_ms + 5), (7, start_ms + 10)]))),
            &[a, b],
        );
        let up = report.upstream_inversions.expect("counted");
        assert_eq!((up.pairs, up.checked), (0, 1));
        assert!(Report::build(facts(None), &[a, b])
            .upstream_inversions
            .is_none());
    }

    #[test]
    fn report_counts_statuses_and_classes() {
        let mix: PriorityMix = "0:1,128:1".parse().unwrap();
        let mut samples = vec![sample(0, 0, 0), sample(1, 10, 0), sample(1, 20, 0)];
        samples[2].outcome = Outcome::Status(429);
        samples.push(Sample {
            outcome: Outcome::Timeout,
            queue_wait_us: None,
            ..sample(0, 30, 0)
        });
        let report = Report::build(
            RunFacts {
                label: Some("t".into()),
                targets: vec!["http://127.0.0.1:1/v1/chat/completions".into()],
                rate: None,
                concurrency: Some(2),
                stream: false,
                mix: Some(mix),
                started_epoch_ms: 0,
                requested: 4,
                sent: 4,
                inversion_tolerance_us: 1_000,
                max_error_rate: 0.5,
                started_epoch_us: 0,
                upstream_arrivals: None,
            },
            &samples,
        );
        assert_eq!((report.finished, report.ok), (4, 2));
        assert_eq!(report.statuses.get("200"), Some(&2));
        assert_eq!(report.statuses.get("429"), Some(&1));
        assert_eq!(report.statuses.get("timeout"), Some(&1));
        assert_eq!(report.by_priority[0].count, 2);
        assert_eq!(report.by_priority[1].statuses.get("429"), Some(&1));
        assert_eq!(report.latency_ms.count, 4);
        let text = report.to_string();
        assert!(text.contains("by priority"), "{text}");
        assert!(text.contains("429: 1"), "{text}");
        // Half failed (the 429 and the timeout), as many as --max-error-rate 0.5 allows.
        assert_eq!((report.failed, report.error_rate), (2, 0.5));
        assert!(report.passed);
    }

    #[test]
    fn a_run_passes_while_its_share_of_failed_requests_is_within_the_threshold() {
        let facts = |max_error_rate: f64| RunFacts {
            label: None,
            targets: vec![],
            rate: None,
            concurrency: Some(1),
            stream: false,
            mix: None,
            started_epoch_ms: 0,
            requested: 10,
            sent: 10,
            inversion_tolerance_us: 1_000,
            max_error_rate,
            started_epoch_us: 0,
            upstream_arrivals: None,
        };
        // 2 of 10 failed: a 401 and a connection error.
        let mut samples: Vec<Sample> = (0..10).map(|i| sample(0, i * 10, 0)).collect();
        samples[3].outcome = Outcome::Status(401);
        samples[7].outcome = Outcome::Connect;

        let at = Report::build(facts(0.2), &samples);
        assert_eq!((at.failed, at.error_rate, at.passed), (2, 0.2, true));
        let text = at.to_string();
        assert!(
            text.contains(
                "result       passed: 2 of 10 requests failed (20.0%), within --max-error-rate 0.2"
            ),
            "{text}"
        );

        let below = Report::build(facts(0.1), &samples);
        assert!(!below.passed);
        let text = below.to_string();
        assert!(
            text.contains(
                "result       FAILED: 2 of 10 requests failed (20.0%), above --max-error-rate 0.1"
            ),
            "{text}"
        );
        assert!(!Report::build(facts(0.0), &samples).passed);
        assert!(Report::build(facts(1.0), &samples).passed);
        assert!(Report::build(facts(0.0), &samples[..3]).passed);
        // Nothing finished: nothing passed.
        let empty = Report::build(facts(1.0), &[]);
        assert_eq!(
            (empty.failed, empty.error_rate, empty.passed),
            (0, 0.0, false)
        );
        // 2xx of any kind counts as answered.
        samples[3].outcome = Outcome::Status(204);
        samples[7].outcome = Outcome::Status(200);
        assert!(Report::build(facts(0.0), &samples).passed);
    }
}
