//! [`LoadtestError`]: why a load test could not run, or failed.

use std::path::PathBuf;

use crate::PriorityMixError;

/// Why a load test could not run, or failed.
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
    /// The run went through, but more of its requests failed than `--max-error-rate` allows
    /// ([`Report::passed`](crate::Report::passed)).
    #[error(
        "{failed} of {finished} requests failed (no 2xx answer), more than --max-error-rate {max_error_rate} allows"
    )]
    TooManyErrors {
        /// Finished requests that got no 2xx answer.
        failed: u64,
        /// Requests of the measured run that finished.
        finished: u64,
        /// The threshold, a share from 0 to 1.
        max_error_rate: f64,
    },
    /// The JSON report could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
