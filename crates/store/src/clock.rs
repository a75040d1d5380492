//! Epoch-millisecond time for the in-memory backends, steerable by tokio's paused clock in tests.

use std::time::{SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Epoch milliseconds = wall clock when the clock was created + tokio [`Instant`] time elapsed since.
///
/// In-memory backends read time only through a `Clock`, so tests can drive leases and windows with
/// `tokio::time::pause()` / `advance()`. Redis scripts use the server's `TIME` instead.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin_ms: u64,
    origin: Instant,
}

impl Clock {
    /// A clock reading the current wall time.
    pub fn new() -> Self {
        let origin_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Self::starting_at(origin_ms)
    }

    /// A clock that reads `epoch_ms` now and advances with tokio time.
    pub fn starting_at(epoch_ms: u64) -> Self {
        Self {
            origin_ms: epoch_ms,
            origin: Instant::now(),
        }
    }

    /// Current time in epoch milliseconds.
    pub fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.origin_ms.saturating_add(elapsed)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
