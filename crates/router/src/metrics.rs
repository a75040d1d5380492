//! Router counters and upstream latency histograms, as snapshots the proxy exports.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds (seconds) of the upstream latency histogram buckets.
pub const LATENCY_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Counters of one router. Cheap to update (one short lock per event); read with [`RouterMetrics::snapshot`].
#[derive(Debug, Default)]
pub struct RouterMetrics {
    state: Mutex<MetricsSnapshot>,
}

/// A copy of the counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Finished requests by (model group, HTTP status, deployment id; empty when none answered).
    pub requests: BTreeMap<(String, u16, String), u64>,
    /// Upstream attempts by (model group, deployment id, outcome: `ok` or the error status).
    pub attempts: BTreeMap<(String, String, String), u64>,
    /// Upstream latency of successful attempts by model group (to the first chunk for streams).
    pub upstream_latency: BTreeMap<String, Histogram>,
    /// Retries within a group.
    pub retries: u64,
    /// Fallbacks to another group.
    pub fallbacks: u64,
    /// Responses served from the cache.
    pub cache_hits: u64,
    /// Cacheable requests not found in the cache.
    pub cache_misses: u64,
}

/// A cumulative histogram: `buckets[i]` counts observations <= [`LATENCY_BUCKETS`]`[i]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`].
    pub buckets: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations in seconds.
    pub sum: f64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if self.buckets.len() != LATENCY_BUCKETS.len() {
            self.buckets = vec![0; LATENCY_BUCKETS.len()];
        }
        for (b, le) in self.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if v <= *le {
                *b += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }
}

impl RouterMetrics {
    /// A copy of the counters.
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.with(|s| s.clone())
    }

    fn with<T>(&self, f: impl FnOnce(&mut MetricsSnapshot) -> T) -> T {
        // Counters stay meaningful even if a holder panicked mid-update.
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut s)
    }

    pub(crate) fn request(&self, group: &str, status: u16, deployment: &str) {
        self.with(|s| {
            *s.requests
                .entry((group.to_owned(), status, deployment.to_owned()))
                .or_default() += 1;
        });
    }

    pub(crate) fn attempt(
        &self,
        group: &str,
        deployment: &str,
        outcome: &str,
        latency: Option<Duration>,
    ) {
        self.with(|s| {
            *s.attempts
                .entry((group.to_owned(), deployment.to_owned(), outcome.to_owned()))
                .or_default() += 1;
            if let Some(l) = latency {
                s.upstream_latency
                    .entry(group.to_owned())
                    .or_default()
                    .observe(l.as_secs_f64());
            }
        });
    }

    pub(crate) fn retry(&self) {
        self.with(|s| s.retries += 1);
    }

    pub(crate) fn fallback(&self) {
        self.with(|s| s.fallbacks += 1);
    }

    pub(crate) fn cache(&self, hit: bool) {
        self.with(|s| {
            if hit {
                s.cache_hits += 1;
            } else {
                s.cache_misses += 1;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let m = RouterMetrics::default();
        m.attempt("g", "d", "ok", Some(Duration::from_millis(70)));
        m.attempt("g", "d", "ok", Some(Duration::from_secs(3)));
        let s = m.snapshot();
        let h = &s.upstream_latency["g"];
        assert_eq!(h.count, 2);
        assert_eq!(h.buckets[0], 0);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(*h.buckets.last().unwrap(), 2);
        assert_eq!(s.attempts[&("g".into(), "d".into(), "ok".into())], 2);
    }
}
