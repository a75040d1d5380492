//! The cooldown policy: which upstream failures put a deployment in cooldown, and for how long.
//!
//! The rules follow LiteLLM's router:
//! - `cooldown_time` 0 disables cooldowns; a group with a single deployment never cools (cooling the only
//!   deployment would fail every request instead of some).
//! - 429 cools at once; 401 and 404 cool at once (retrying will not help).
//! - Other 4xx (bad request, content policy, context window) never cool: the request is at fault.
//! - 5xx, timeouts (including upstream 408) and connection failures cool when the deployment's failures in
//!   the current window exceed `allowed_fails`, or when more than half of at least
//!   [`MIN_REQUESTS_FOR_FAILURE_RATE`] settled requests in the window failed.
//! - An [`AllowedFailsPolicy`] entry for the failure's class replaces the rule above for that class: the
//!   deployment cools when its failures in the window exceed the entry.
//! - The duration is the upstream's `Retry-After` when present, else `cooldown_time`.

use std::time::Duration;

use serde::Deserialize;

use crate::types::{FailureKind, SettleReport};

/// Failure rate (failures / settled requests in the window) above which 5xx and timeouts cool.
pub const FAILURE_RATE_THRESHOLD: f64 = 0.5;

/// Settled requests in the window needed before the failure rate counts.
pub const MIN_REQUESTS_FOR_FAILURE_RATE: u64 = 5;

/// Per-error-class failures allowed in a window before the deployment cools (LiteLLM's
/// `allowed_fails_policy`). Unset classes keep the default rule.
///
/// Deserialises from LiteLLM's keys, e.g. `{"RateLimitErrorAllowedFails": 100}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub struct AllowedFailsPolicy {
    /// 400-class failures (also context-window, and content-policy when that class is unset).
    #[serde(rename = "BadRequestErrorAllowedFails", default)]
    pub bad_request: Option<u32>,
    /// 401 failures.
    #[serde(rename = "AuthenticationErrorAllowedFails", default)]
    pub authentication: Option<u32>,
    /// Timeouts.
    #[serde(rename = "TimeoutErrorAllowedFails", default)]
    pub timeout: Option<u32>,
    /// 429 failures.
    #[serde(rename = "RateLimitErrorAllowedFails", default)]
    pub rate_limit: Option<u32>,
    /// Content-policy refusals.
    #[serde(rename = "ContentPolicyViolationErrorAllowedFails", default)]
    pub content_policy_violation: Option<u32>,
    /// 5xx and connection failures.
    #[serde(rename = "InternalServerErrorAllowedFails", default)]
    pub internal_server_error: Option<u32>,
}

impl AllowedFailsPolicy {
    /// The allowed failures for `kind`'s class, if the policy sets one.
    pub fn for_kind(&self, kind: FailureKind) -> Option<u32> {
        match kind {
            FailureKind::RateLimited => self.rate_limit,
            FailureKind::Authentication => self.authentication,
            FailureKind::NotFound => None,
            FailureKind::Timeout => self.timeout,
            FailureKind::BadRequest | FailureKind::ContextWindowExceeded => self.bad_request,
            FailureKind::ContentPolicy => self.content_policy_violation.or(self.bad_request),
            FailureKind::Server | FailureKind::Connection => self.internal_server_error,
        }
    }
}

/// Router-wide cooldown settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CooldownPolicy {
    /// Cooldown length when the upstream gives no `Retry-After`; zero disables cooldowns. Default 5 s.
    pub cooldown_time: Duration,
    /// Failures (5xx, timeouts) allowed per window before cooling. Default 3.
    pub allowed_fails: u32,
    /// Per-class overrides.
    pub allowed_fails_policy: AllowedFailsPolicy,
}

impl Default for CooldownPolicy {
    fn default() -> CooldownPolicy {
        CooldownPolicy {
            cooldown_time: Duration::from_secs(5),
            allowed_fails: 3,
            allowed_fails_policy: AllowedFailsPolicy::default(),
        }
    }
}

/// One failure, with what the cooldown decision needs to know about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureContext {
    /// What failed.
    pub kind: FailureKind,
    /// Deployments in the model group.
    pub group_size: usize,
    /// The deployment's window counters after settling this failure.
    pub report: SettleReport,
    /// The upstream's `Retry-After`, if it sent one.
    pub retry_after: Option<Duration>,
}

/// How long to cool the deployment after `failure`, or `None` to keep it in rotation.
pub fn cooldown_decision(policy: &CooldownPolicy, failure: &FailureContext) -> Option<Duration> {
    if policy.cooldown_time.is_zero() || failure.group_size <= 1 {
        return None;
    }
    let fails = failure.report.failures_in_window;
    let cool = match policy.allowed_fails_policy.for_kind(failure.kind) {
        Some(allowed) => fails > u64::from(allowed),
        None => match failure.kind {
            FailureKind::RateLimited | FailureKind::Authentication | FailureKind::NotFound => true,
            FailureKind::BadRequest
            | FailureKind::ContentPolicy
            | FailureKind::ContextWindowExceeded => false,
            FailureKind::Timeout | FailureKind::Server | FailureKind::Connection => {
                let requests = failure.report.requests_in_window;
                fails > u64::from(policy.allowed_fails)
                    || (requests >= MIN_REQUESTS_FOR_FAILURE_RATE
                        && fails as f64 / requests as f64 > FAILURE_RATE_THRESHOLD)
            }
        },
    };
    if !cool {
        return None;
    }
    let duration = failure.retry_after.unwrap_or(policy.cooldown_time);
    (!duration.is_zero()).then_some(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(kind: FailureKind, group_size: usize, requests: u64, failures: u64) -> FailureContext {
        FailureContext {
            kind,
            group_size,
            report: SettleReport {
                requests_in_window: requests,
                failures_in_window: failures,
            },
            retry_after: None,
        }
    }

    const FIVE: Option<Duration> = Some(Duration::from_secs(5));

    #[test]
    fn policy_table() {
        use FailureKind::*;
        let p = CooldownPolicy::default();
        // (case, failure, expected)
        let table: Vec<(&str, FailureContext, Option<Duration>)> = vec![
            (
                "429 in a multi-deployment group cools at once",
                ctx(RateLimited, 2, 1, 1),
                FIVE,
            ),
            (
                "429 in a single-deployment group never cools",
                ctx(RateLimited, 1, 100, 100),
                None,
            ),
            ("401 cools at once", ctx(Authentication, 3, 1, 1), FIVE),
            ("404 cools at once", ctx(NotFound, 3, 1, 1), FIVE),
            (
                "401 in a single-deployment group never cools",
                ctx(Authentication, 1, 1, 1),
                None,
            ),
            ("400 never cools", ctx(BadRequest, 3, 100, 100), None),
            (
                "content policy never cools",
                ctx(ContentPolicy, 3, 100, 100),
                None,
            ),
            (
                "context window never cools",
                ctx(ContextWindowExceeded, 3, 100, 100),
                None,
            ),
            ("5xx within allowed_fails", ctx(Server, 3, 100, 3), None),
            ("5xx above allowed_fails", ctx(Server, 3, 100, 4), FIVE),
            ("timeout above allowed_fails", ctx(Timeout, 3, 100, 4), FIVE),
            (
                "timeout within allowed_fails",
                ctx(Timeout, 3, 100, 2),
                None,
            ),
            (
                "connection failure above allowed_fails",
                ctx(Connection, 2, 100, 4),
                FIVE,
            ),
            ("5xx rate 3/5 > 50%", ctx(Server, 2, 5, 3), FIVE),
            (
                "5xx rate 3/4 with too few requests",
                ctx(Server, 2, 4, 3),
                None,
            ),
            (
                "5xx rate exactly 50% does not pass",
                ctx(Server, 2, 6, 3),
                None,
            ),
            (
                "5xx single-deployment group",
                ctx(Server, 1, 100, 100),
                None,
            ),
            (
                "408 is a timeout: threshold rule",
                ctx(FailureKind::from_status(408).unwrap(), 2, 1, 1),
                None,
            ),
        ];
        for (case, failure, expected) in table {
            assert_eq!(cooldown_decision(&p, &failure), expected, "{case}");
        }
    }

    #[test]
    fn zero_cooldown_time_disables() {
        let p = CooldownPolicy {
            cooldown_time: Duration::ZERO,
            ..CooldownPolicy::default()
        };
        for kind in [
            FailureKind::RateLimited,
            FailureKind::Authentication,
            FailureKind::Server,
        ] {
            assert_eq!(cooldown_decision(&p, &ctx(kind, 5, 100, 100)), None);
        }
    }

    #[test]
    fn retry_after_sets_duration() {
        let p = CooldownPolicy::default();
        let mut f = ctx(FailureKind::RateLimited, 2, 1, 1);
        f.retry_after = Some(Duration::from_secs(17));
        assert_eq!(cooldown_decision(&p, &f), Some(Duration::from_secs(17)));
        f.retry_after = Some(Duration::ZERO);
        assert_eq!(
            cooldown_decision(&p, &f),
            None,
            "Retry-After: 0 means no wait"
        );
        // Retry-After does not make a non-cooling failure cool.
        let mut bad = ctx(FailureKind::BadRequest, 2, 1, 1);
        bad.retry_after = Some(Duration::from_secs(17));
        assert_eq!(cooldown_decision(&p, &bad), None);
        // Custom cooldown_time without Retry-After.
        let p = CooldownPolicy {
            cooldown_time: Duration::from_secs(30),
            ..CooldownPolicy::default()
        };
        assert_eq!(
            cooldown_decision(&p, &ctx(FailureKind::NotFound, 2, 1, 1)),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn allowed_fails_setting() {
        let p = CooldownPolicy {
            allowed_fails: 0,
            ..CooldownPolicy::default()
        };
        assert_eq!(
            cooldown_decision(&p, &ctx(FailureKind::Server, 2, 10, 1)),
            FIVE
        );
    }

    #[test]
    fn allowed_fails_policy_overrides_class_rules() {
        let policy: AllowedFailsPolicy = serde_json::from_str(
            r#"{"BadRequestErrorAllowedFails": 10, "AuthenticationErrorAllowedFails": 2,
                "TimeoutErrorAllowedFails": 12, "RateLimitErrorAllowedFails": 100,
                "ContentPolicyViolationErrorAllowedFails": 4, "InternalServerErrorAllowedFails": 20}"#,
        )
        .unwrap();
        assert_eq!(policy.bad_request, Some(10));
        assert_eq!(policy.internal_server_error, Some(20));
        let p = CooldownPolicy {
            allowed_fails_policy: policy,
            ..CooldownPolicy::default()
        };
        use FailureKind::*;
        let table = [
            (RateLimited, 100, None),
            (RateLimited, 101, FIVE),
            (Authentication, 2, None),
            (Authentication, 3, FIVE),
            (BadRequest, 10, None),
            (BadRequest, 11, FIVE),
            (ContextWindowExceeded, 11, FIVE),
            (ContentPolicy, 4, None),
            (ContentPolicy, 5, FIVE),
            (Timeout, 12, None),
            (Timeout, 13, FIVE),
            // The policy replaces the failure-rate rule too.
            (Server, 20, None),
            (Server, 21, FIVE),
            (Connection, 21, FIVE),
            // No class for 404: it keeps cooling at once.
            (NotFound, 1, FIVE),
        ];
        for (kind, fails, expected) in table {
            assert_eq!(
                cooldown_decision(&p, &ctx(kind, 2, fails, fails)),
                expected,
                "{kind:?} with {fails} failures"
            );
        }
        // Content policy falls back to the bad-request class when its own is unset.
        let only_bad: AllowedFailsPolicy =
            serde_json::from_str(r#"{"BadRequestErrorAllowedFails": 1}"#).unwrap();
        assert_eq!(only_bad.for_kind(ContentPolicy), Some(1));
        assert_eq!(AllowedFailsPolicy::default().for_kind(Server), None);
    }

    #[test]
    fn status_classification() {
        use FailureKind::*;
        let table = [
            (200, None),
            (302, None),
            (400, Some(BadRequest)),
            (401, Some(Authentication)),
            (403, Some(BadRequest)),
            (404, Some(NotFound)),
            (408, Some(Timeout)),
            (422, Some(BadRequest)),
            (429, Some(RateLimited)),
            (500, Some(Server)),
            (503, Some(Server)),
        ];
        for (status, kind) in table {
            assert_eq!(FailureKind::from_status(status), kind, "{status}");
        }
    }
}
