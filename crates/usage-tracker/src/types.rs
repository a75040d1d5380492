//! The values exchanged with a usage store: deployments, limits, reservations, outcomes (with failure kinds) and
//! statistics.

use std::sync::Arc;
use std::time::Duration;

use crate::error::UsageError;

/// One deployment of a model group, as the store keys it.
///
/// Ids are ASCII without whitespace and without `{`, `}`, `:` and `|` (the key layout and the grant
/// payload use those); group names may be any UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeploymentRef {
    /// The model group (the Redis hash tag: all keys of a group share one Cluster slot).
    pub group: Arc<str>,
    /// The deployment id within the group.
    pub id: Arc<str>,
}

impl DeploymentRef {
    /// A reference to deployment `id` of `group`.
    pub fn new(group: impl Into<Arc<str>>, id: impl Into<Arc<str>>) -> DeploymentRef {
        DeploymentRef {
            group: group.into(),
            id: id.into(),
        }
    }
}

/// Per-deployment limits. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Requests admitted per window. `Some(0)` means the deployment takes no requests.
    pub rpm: Option<u64>,
    /// Tokens (estimates, corrected on settle) per window. A request whose estimate alone exceeds it never
    /// fits this deployment.
    pub tpm: Option<u64>,
    /// Requests in flight at once (live leases). `Some(0)` means the deployment takes no requests.
    pub max_parallel: Option<u32>,
    /// Largest prompt the deployment accepts; requests with more prompt tokens skip it.
    pub max_input_tokens: Option<u64>,
    /// Preference tier for the sorted orders: lower tiers are tried first.
    pub tier: u32,
}

/// A deployment offered to the admission step (or [`crate::UsageOps::reserve`]) with its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The deployment.
    pub deployment: DeploymentRef,
    /// Its limits.
    pub limits: Limits,
}

/// The order in which `reserve` walks the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CandidateOrder {
    /// In the order given (the caller's preference).
    #[default]
    AsGiven,
    /// Lowest current-window TPM first; stable by (tier, TPM, given index).
    LowestTpm,
    /// Fewest live in-flight leases first; stable by (tier, in flight, given index).
    FewestInFlight,
}

impl CandidateOrder {
    /// The `order_mode` number of the Lua fragment.
    pub fn mode(self) -> u8 {
        match self {
            CandidateOrder::AsGiven => 0,
            CandidateOrder::LowestTpm => 1,
            CandidateOrder::FewestInFlight => 2,
        }
    }
}

/// What to reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// Unique id of this reservation (a uuid in simple form); it names the in-flight lease.
    pub reservation_id: String,
    /// Tokens to count against TPM now (prompt + expected completion); settled later with the real usage.
    pub est_tokens: u64,
    /// Prompt tokens, checked against `max_input_tokens`.
    pub prompt_tokens: u64,
    /// How long the in-flight lease lives unless renewed or settled.
    pub lease: Duration,
    /// The order in which candidates are tried.
    pub order: CandidateOrder,
}

impl ReserveRequest {
    /// A request with a fresh reservation id, candidates tried as given.
    pub fn new(est_tokens: u64, prompt_tokens: u64, lease: Duration) -> ReserveRequest {
        ReserveRequest {
            reservation_id: uuid::Uuid::new_v4().simple().to_string(),
            est_tokens,
            prompt_tokens,
            lease,
            order: CandidateOrder::AsGiven,
        }
    }

    /// The same request with candidates tried in `order`.
    pub fn with_order(mut self, order: CandidateOrder) -> ReserveRequest {
        self.order = order;
        self
    }
}

/// Capacity held on one deployment: RPM and TPM in window `window_start_ms` and an in-flight lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The reservation id (names the in-flight lease).
    pub id: String,
    /// The deployment the capacity is held on.
    pub deployment: DeploymentRef,
    /// Start (epoch ms) of the window whose counters were charged.
    pub window_start_ms: u64,
    /// Tokens charged to TPM.
    pub est_tokens: u64,
    /// Index of the chosen deployment in the candidate slice passed to `reserve`.
    pub candidate_index: usize,
}

/// The answer of `reserve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// Capacity was reserved.
    Reserved(Reservation),
    /// No candidate has headroom now.
    Unavailable {
        /// When capacity may return at the latest without other events (a window roll, a lease expiry, a
        /// cooldown end; settles free capacity earlier). `None` when no candidate can ever take the
        /// request (prompt too long, estimate above TPM, zero limits) or there were no candidates.
        retry_in: Option<Duration>,
    },
}

/// Why an upstream call failed, as far as cooldowns and failure counts care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// 429: the deployment is rate limited.
    RateLimited,
    /// 401: the deployment's credentials are rejected.
    Authentication,
    /// 404: the deployment's model or route does not exist.
    NotFound,
    /// The upstream did not answer in time (our timeout or an upstream 408).
    Timeout,
    /// Another 4xx (400, 403, 409, 413, 422, ...): the request is at fault.
    BadRequest,
    /// The request was refused by the provider's content policy.
    ContentPolicy,
    /// The prompt does not fit the model's context window.
    ContextWindowExceeded,
    /// 5xx from the upstream.
    Server,
    /// The upstream could not be reached (connect, TLS, reset).
    Connection,
}

impl FailureKind {
    /// The failure kind of an upstream HTTP error status, `None` for non-error statuses.
    ///
    /// Content-policy and context-window failures arrive as 400 and are told apart by the provider
    /// client from the body, not from the status.
    pub fn from_status(status: u16) -> Option<FailureKind> {
        Some(match status {
            429 => FailureKind::RateLimited,
            401 => FailureKind::Authentication,
            404 => FailureKind::NotFound,
            408 => FailureKind::Timeout,
            400..=499 => FailureKind::BadRequest,
            500..=599 => FailureKind::Server,
            _ => return None,
        })
    }
}

/// How a reserved request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The deployment answered successfully.
    Success,
    /// The deployment failed; counted in the window's failures.
    Failure(FailureKind),
    /// The caller gave up (client went away, deadline): neither success nor failure.
    Cancelled,
}

/// Latency of one completed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySample {
    /// Time from sending the request to the last byte.
    pub total: Duration,
    /// Time to the first token, for streams.
    pub ttft: Option<Duration>,
    /// Output tokens produced; the per-token latency is recorded only when this is non-zero.
    pub output_tokens: u64,
}

impl LatencySample {
    /// Milliseconds per output token, if any tokens were produced.
    pub fn ms_per_token(&self) -> Option<f64> {
        (self.output_tokens > 0)
            .then(|| self.total.as_secs_f64() * 1000.0 / self.output_tokens as f64)
    }

    /// Time to first token in milliseconds.
    pub fn ttft_ms(&self) -> Option<f64> {
        self.ttft.map(|d| d.as_secs_f64() * 1000.0)
    }
}

/// The deployment's counters in the current window right after a settle, for the cooldown policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SettleReport {
    /// Requests settled as success or failure in the current window, this one included.
    pub requests_in_window: u64,
    /// Requests settled as failure in the current window, this one included.
    pub failures_in_window: u64,
}

/// Usage and health of one deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentStats {
    /// The deployment id.
    pub id: Arc<str>,
    /// Requests admitted in the current window.
    pub rpm_used: u64,
    /// Tokens charged in the current window.
    pub tpm_used: u64,
    /// Live in-flight leases.
    pub in_flight: u64,
    /// EWMA of milliseconds per output token, if any sample is known.
    pub latency_ms_per_token: Option<f64>,
    /// EWMA of time to first token in milliseconds, if any sample is known.
    pub ttft_ms: Option<f64>,
    /// Remaining cooldown, if the deployment is cooling down.
    pub cooldown_remaining: Option<Duration>,
    /// Requests settled as success in the current window.
    pub successes_in_window: u64,
    /// Requests settled as failure in the current window.
    pub failures_in_window: u64,
}

impl DeploymentStats {
    pub(crate) fn empty(id: Arc<str>) -> DeploymentStats {
        DeploymentStats {
            id,
            rpm_used: 0,
            tpm_used: 0,
            in_flight: 0,
            latency_ms_per_token: None,
            ttft_ms: None,
            cooldown_remaining: None,
            successes_in_window: 0,
            failures_in_window: 0,
        }
    }
}

/// Rejects deployment ids the key layout cannot hold.
pub(crate) fn check_deployment_id(id: &str) -> Result<(), UsageError> {
    let bad = |c: char| !c.is_ascii_graphic() || matches!(c, '{' | '}' | ':' | '|');
    if id.is_empty() || id.chars().any(bad) {
        return Err(UsageError::invalid(format!(
            "deployment id {id:?}: must be non-empty printable ASCII without '{{', '}}', ':' or '|'"
        )));
    }
    Ok(())
}

/// Checks that candidates are valid and belong to one group (one Redis Cluster slot).
pub(crate) fn check_candidates(candidates: &[Candidate]) -> Result<(), UsageError> {
    let Some(first) = candidates.first() else {
        return Ok(());
    };
    for c in candidates {
        check_deployment_id(&c.deployment.id)?;
        if c.deployment.group != first.deployment.group {
            return Err(UsageError::invalid(format!(
                "candidates of groups {:?} and {:?} in one reserve call",
                first.deployment.group, c.deployment.group
            )));
        }
    }
    Ok(())
}

/// Longest duration the store keeps (about 35 000 years), far inside the exact range of Lua numbers.
const MAX_DURATION_MS: u64 = 1 << 50;

/// Milliseconds of a duration, rounding a non-zero sub-millisecond duration up to 1 ms.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_DURATION_MS);
    if ms == 0 && !d.is_zero() {
        1
    } else {
        ms
    }
}
