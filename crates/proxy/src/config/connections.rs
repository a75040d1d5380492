//! `general_settings` keys of the HTTP server's connection hygiene: header, keep-alive and body timeouts and the
//! cap on open connections.

use std::time::Duration;

use super::error::ConfigError;

/// Longest accepted timeout: a day (larger values overflow clocks and protect nothing).
const MAX_TIMEOUT_SECS: f64 = 86_400.0;

/// How the server treats client connections. Only the client's silence counts: a request waiting in the queue or
/// an answer streaming for minutes is server-side time and is never cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// A request head must arrive whole within this time, counted from the connection's opening or from the
    /// first byte of a later request on a kept-alive connection (`general_settings.header_read_timeout`).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight is closed after this much silence
    /// (`general_settings.keepalive_timeout`, CLI `--keepalive-timeout`).
    pub keepalive_timeout: Duration,
    /// A request body must arrive whole within this time from its head, else the request is answered 408 and the
    /// connection closed (`general_settings.body_read_timeout`).
    pub body_read_timeout: Duration,
    /// Open client connections at most; beyond it new connections wait in the listen backlog until one closes
    /// (`general_settings.max_connections`).
    pub max_connections: usize,
}

impl ConnectionSettings {
    /// 10 s for a request head: headers are a few hundred bytes, and a slow-header client holds a connection
    /// for nothing.
    pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// 75 s of keep-alive silence (nginx's default). Longer than the idle timeouts of common load balancers
    /// (AWS ALB: 60 s) and client pools (httpx: 5 s), so the client side closes first and never sends a request
    /// into a connection this side is closing; uvicorn's 5 s (LiteLLM's default) loses that race.
    pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
    /// 30 s for a whole body: a body of the default 10 MiB limit needs 350 KB/s.
    pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
    /// 10,000 open connections (hyper keeps an 8 KiB read buffer for each). Keep it below the process's
    /// open-file limit (`ulimit -n`), which also has to cover upstream and Redis connections.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

    /// Sets the keep-alive timeout from a number of seconds (the CLI's `--keepalive-timeout`); `key` names the
    /// setting in the error.
    pub fn set_keepalive_secs(&mut self, key: &str, secs: f64) -> Result<(), ConfigError> {
        self.keepalive_timeout = timeout_secs(key, Some(secs), self.keepalive_timeout)?;
        Ok(())
    }
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            header_read_timeout: Self::DEFAULT_HEADER_READ_TIMEOUT,
            keepalive_timeout: Self::DEFAULT_KEEPALIVE_TIMEOUT,
            body_read_timeout: Self::DEFAULT_BODY_READ_TIMEOUT,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The `general_settings` values as written, checked into [`ConnectionSettings`].
#[derive(Debug, Default)]
pub(crate) struct ConnectionKeys {
    pub(crate) header_read_timeout: Option<f64>,
    pub(crate) keepalive_timeout: Option<f64>,
    pub(crate) body_read_timeout: Option<f64>,
    pub(crate) max_connections: Option<u64>,
}

impl ConnectionKeys {
    pub(crate) fn validate(&self) -> Result<ConnectionSettings, ConfigError> {
        let d = ConnectionSettings::default();
        let max_connections = match self.max_connections {
            None => d.max_connections,
            // tokio's semaphore holds at most usize::MAX >> 3 permits; a million is beyond any open-file limit.
            Some(n @ 1..=1_000_000) => usize::try_from(n).unwrap_or(d.max_connections),
            Some(n) => {
                return Err(ConfigError::invalid(
                    "general_settings.max_connections",
                    format!("expected a number of connections in 1..=1000000, got {n}"),
                ))
            }
        };
        Ok(ConnectionSettings {
            header_read_timeout: timeout_secs(
                "general_settings.header_read_timeout",
                self.header_read_timeout,
                d.header_read_timeout,
            )?,
            keepalive_timeout: timeout_secs(
                "general_settings.keepalive_timeout",
                self.keepalive_timeout,
                d.keepalive_timeout,
            )?,
            body_read_timeout: timeout_secs(
                "general_settings.body_read_timeout",
                self.body_read_timeout,
                d.body_read_timeout,
            )?,
            max_connections,
        })
    }
}

/// A timeout in seconds, in (0, one day]; `key` names it in the error.
fn timeout_secs(key: &str, secs: Option<f64>, default: Duration) -> Result<Duration, ConfigError> {
    match secs {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s <= MAX_TIMEOUT_SECS => {
            Ok(Duration::from_secs_f64(s))
        }
        Some(s) => Err(ConfigError::invalid(
            key,
            format!("expected a number of seconds in (0, {MAX_TIMEOUT_SECS}], got {s}"),
        )),
    }
}
