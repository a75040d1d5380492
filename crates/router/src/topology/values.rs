//! Config numbers into runtime values: seconds into durations, counts into u32, errors naming the key path.

use std::time::Duration;

use crate::error::RouterError;

/// Positive seconds -> Duration.
pub(super) fn secs(v: Option<f64>, path: &str) -> Result<Option<Duration>, RouterError> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(RouterError::config(
            path,
            format!("must be a positive number of seconds, got {s}"),
        )),
    }
}

/// Non-negative seconds -> Duration (0 allowed: "disabled").
pub(super) fn secs_or_zero(v: Option<f64>, path: &str) -> Result<Option<Duration>, RouterError> {
    if v == Some(0.0) {
        return Ok(Some(Duration::ZERO));
    }
    secs(v, path)
}

/// A count that must fit a u32.
pub(super) fn count(v: Option<u64>, path: &str) -> Result<Option<u32>, RouterError> {
    v.map(|v| u32::try_from(v).map_err(|_| RouterError::config(path, format!("{v} is too large"))))
        .transpose()
}
