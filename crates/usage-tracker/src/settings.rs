//! Settings shared by both usage-store backends.

use std::time::Duration;

use store::Keyspace;

use crate::error::UsageError;

/// How a usage store counts and talks to Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageSettings {
    /// Key names (prefix and group hash tags), shared with the queue.
    pub keyspace: Keyspace,
    /// Length of the RPM/TPM window. Default 60 s.
    pub window: Duration,
    /// Count rpm and tpm over a rolling window (no stretch of `window` holds more than a limit) instead of
    /// fixed windows aligned to the clock. Default false here; the router's `usage_window_mode` defaults
    /// to rolling.
    pub rolling: bool,
    /// Deadline for each Redis call, including getting a pooled connection. Default 1 s.
    pub command_timeout: Duration,
    /// Weight of a new sample in the latency EWMAs, in (0, 1]. Default 0.2.
    pub latency_ewma_alpha: f64,
}

impl Default for UsageSettings {
    fn default() -> UsageSettings {
        UsageSettings {
            keyspace: Keyspace::default(),
            window: Duration::from_secs(60),
            rolling: false,
            command_timeout: Duration::from_secs(1),
            latency_ewma_alpha: 0.2,
        }
    }
}

impl UsageSettings {
    /// Default settings with a window of `window`.
    pub fn with_window(window: Duration) -> UsageSettings {
        UsageSettings {
            window,
            ..UsageSettings::default()
        }
    }

    /// Checks the ranges: window whole milliseconds of at least 1 ms and at most a year, a non-zero
    /// timeout, an EWMA weight in (0, 1].
    pub fn validate(&self) -> Result<(), UsageError> {
        const YEAR: Duration = Duration::from_secs(366 * 24 * 3600);
        if self.window < Duration::from_millis(1) || self.window > YEAR {
            return Err(UsageError::InvalidSettings(format!(
                "window {:?} must be between 1 ms and a year",
                self.window
            )));
        }
        if !self.window.subsec_nanos().is_multiple_of(1_000_000) {
            return Err(UsageError::InvalidSettings(format!(
                "window {:?} must be a whole number of milliseconds",
                self.window
            )));
        }
        if self.command_timeout.is_zero() {
            return Err(UsageError::InvalidSettings(
                "command_timeout must be non-zero".to_owned(),
            ));
        }
        if !(self.latency_ewma_alpha > 0.0 && self.latency_ewma_alpha <= 1.0) {
            return Err(UsageError::InvalidSettings(format!(
                "latency_ewma_alpha {} must be in (0, 1]",
                self.latency_ewma_alpha
            )));
        }
        Ok(())
    }

    /// The scripts' window argument: `<ms>` (fixed windows) or `<ms>r` (rolling).
    pub(crate) fn window_spec(&self) -> String {
        let ms = self.window_ms();
        if self.rolling {
            format!("{ms}r")
        } else {
            ms.to_string()
        }
    }

    pub(crate) fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }
}
