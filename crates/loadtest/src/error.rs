//! [`LoadtestError`]: why a load test could not run.

use std::path::PathBuf;

use crate::PriorityMixError;

/// Why a load test could not run.
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
    /// The JSON report could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}
