//! What the mock upstream saw: recorded requests and the in-flight request count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One request as the mock upstream received it.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedRequest {
    /// Arrival time on the tokio clock.
    pub at: Instant,
    /// Arrival time as Unix epoch milliseconds.
    pub epoch_ms: u64,
    /// HTTP method, e.g. `POST`.
    pub method: String,
    /// Path with the query string, e.g. `/openai/deployments/gpt/chat/completions?api-version=2024-06-01`.
    pub path: String,
    /// Headers by lowercased name; repeated headers are joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The body parsed as JSON: `Null` when empty, a JSON string holding the raw text when it is not JSON.
    pub body: Value,
}

impl RecordedRequest {
    /// The value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

/// Append-only log of requests plus a counter that also runs when recording is off.
#[derive(Debug)]
pub(crate) struct Recorder {
    enabled: AtomicBool,
    count: AtomicUsize,
    requests: Mutex<Vec<RecordedRequest>>,
    arrived: Notify,
}

impl Recorder {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            enabled: AtomicBool::new(enabled),
            count: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            arrived: Notify::new(),
        }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Relaxed);
    }

    /// Counts an arrival and, when recording, stores it; `build` runs only when recording.
    pub(crate) fn arrive(&self, build: impl FnOnce() -> RecordedRequest) {
        if self.is_enabled() {
            let request = build();
            self.log().push(request);
        }
        self.count.fetch_add(1, Ordering::SeqCst);
        self.arrived.notify_waiters();
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.log().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub(crate) fn clear(&self) {
        let mut log = self.log();
        log.clear();
        self.count.store(0, Ordering::SeqCst);
    }

    pub(crate) async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        wait_until(&self.arrived, timeout, || self.count() >= n).await
    }

    fn log(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        // The log is only ever pushed to or cleared, so a panic elsewhere cannot leave it inconsistent.
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Current and peak number of requests between arrival and the end (or drop) of their response body.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    current: AtomicUsize,
    peak: AtomicUsize,
    changed: Notify,
}

impl InFlight {
    /// Counts a request as in flight until the returned guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> InFlightGuard {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.changed.notify_waiters();
        InFlightGuard(self.clone())
    }

    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }

    pub(crate) fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    pub(crate) fn reset_peak(&self) {
        self.peak.store(self.current(), Ordering::SeqCst);
    }

    pub(crate) async fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        wait_until(&self.changed, timeout, || self.current() == n).await
    }
}

/// Keeps one request counted in [`InFlight`] while alive.
#[derive(Debug)]
pub(crate) struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// Waits until `done()` holds, re-checking on every notification, for at most `timeout`.
async fn wait_until(notify: &Notify, timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        // Register before checking so a change between the check and the await is not missed.
        notified.as_mut().enable();
        if done() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return done();
        }
    }
}

/// Wall-clock time as Unix epoch milliseconds (0 if the clock is before 1970).
pub(crate) fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
