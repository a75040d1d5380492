//! Reading `/key/generate` and `/key/update` bodies: LiteLLM's field names, each value checked, errors naming
//! the field; fields we do not know are ignored and listed.

use serde_json::{Map, Value};

use crate::error::KeyError;
use crate::record::KeyRecord;

/// The most urgent-to-least range of priorities (`queue_core::Priority`'s, repeated to keep this crate low).
pub const MAX_PRIORITY: u32 = 1 << 20;

/// Fields of the body that set the record. Each outer `None` = not in the body; `Some(None)` = `null`
/// (cleared on update).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeySpec {
    /// The secret to use instead of a generated one (LiteLLM's `key` on generate).
    pub key: Option<String>,
    /// Lifetime from now; `Some(None)` = never expires.
    pub duration_secs: Option<Option<u64>>,
    /// `key_alias`.
    pub key_alias: Option<Option<String>>,
    /// `models`.
    pub models: Option<Vec<String>>,
    /// `rpm_limit`.
    pub rpm_limit: Option<Option<u64>>,
    /// `tpm_limit`.
    pub tpm_limit: Option<Option<u64>>,
    /// `max_parallel_requests`.
    pub max_parallel_requests: Option<Option<u64>>,
    /// `max_budget`.
    pub max_budget: Option<Option<f64>>,
    /// `budget_duration`.
    pub budget_duration_secs: Option<Option<u64>>,
    /// `metadata`.
    pub metadata: Option<Map<String, Value>>,
    /// `priority_floor`.
    pub priority_floor: Option<Option<u32>>,
    /// `default_priority`.
    pub default_priority: Option<Option<u32>>,
    /// `config`: a JSON object (its `model_list` is checked by the caller, who knows the deployments).
    pub config: Option<Option<Value>>,
    /// Body fields this server does not know (LiteLLM clients send `team_id`, `user_id`, ...).
    pub ignored_fields: Vec<String>,
}

/// Known fields that identify rather than set (update's `key`), or that we accept and do not act on.
const IDENTIFYING: &[&str] = &["key"];

impl KeySpec {
    /// Reads a generate (`for_update = false`) or update body.
    pub fn parse(body: &Value, for_update: bool) -> Result<Self, KeyError> {
        let Value::Object(map) = body else {
            return Err(KeyError::invalid(None, "the body must be a JSON object"));
        };
        let mut spec = KeySpec::default();
        for (name, value) in map {
            match name.as_str() {
                "key" if !for_update => {
                    spec.key = match value {
                        Value::Null => None,
                        Value::String(s) if s.trim().len() >= 16 => Some(s.trim().to_owned()),
                        _ => {
                            return Err(KeyError::invalid(
                                Some("key"),
                                "`key` must be a string of at least 16 characters",
                            ))
                        }
                    }
                }
                "duration" => {
                    spec.duration_secs = Some(nullable(value, "duration", parse_duration)?);
                }
                "budget_duration" => {
                    spec.budget_duration_secs =
                        Some(nullable(value, "budget_duration", parse_duration)?);
                }
                "key_alias" => {
                    spec.key_alias = Some(nullable(value, "key_alias", |v| match v {
                        Value::String(s) if !s.trim().is_empty() && s.len() <= 256 => {
                            Ok(s.trim().to_owned())
                        }
                        _ => Err("a non-empty string of at most 256 characters".to_owned()),
                    })?);
                }
                "models" => {
                    spec.models = Some(match value {
                        Value::Null => Vec::new(),
                        Value::Array(items) => items
                            .iter()
                            .map(|m| match m {
                                Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
                                _ => Err(KeyError::invalid(
                                    Some("models"),
                                    "`models` must be a list of model group names",
                                )),
                            })
                            .collect::<Result<_, _>>()?,
                        _ => {
                            return Err(KeyError::invalid(
                                Some("models"),
                                "`models` must be a list of model group names",
                            ))
                        }
                    });
                }
                "rpm_limit" => spec.rpm_limit = Some(nullable(value, "rpm_limit", count)?),
                "tpm_limit" => spec.tpm_limit = Some(nullable(value, "tpm_limit", count)?),
                "max_parallel_requests" => {
                    spec.max_parallel_requests = Some(nullable(
                        value,
                        "max_parallel_requests",
                        |v| match count(v)? {
                            0 => Err("at least 1 (0 would block every request)".to_owned()),
                            n => Ok(n),
                        },
                    )?);
                }
                "max_budget" => {
                    spec.max_budget = Some(nullable(value, "max_budget", |v| match v.as_f64() {
                        Some(x) if x.is_finite() && x >= 0.0 => Ok(x),
                        _ => Err("a non-negative number (USD)".to_owned()),
                    })?);
                }
                "metadata" => {
                    spec.metadata = Some(match value {
                        Value::Null => Map::new(),
                        Value::Object(m) => m.clone(),
                        _ => {
                            return Err(KeyError::invalid(
                                Some("metadata"),
                                "`metadata` must be a JSON object",
                            ))
                        }
                    });
                }
                "priority_floor" => {
                    spec.priority_floor = Some(nullable(value, "priority_floor", priority)?);
                }
                "default_priority" => {
                    spec.default_priority = Some(nullable(value, "default_priority", priority)?);
                }
                "config" => {
                    spec.config = Some(nullable(value, "config", |v| match v {
                        Value::Object(m) if m.get("model_list").is_some_and(Value::is_array) => {
                            Ok(v.clone())
                        }
                        _ => Err("an object with a `model_list` list".to_owned()),
                    })?);
                }
                other if for_update && IDENTIFYING.contains(&other) => {}
                other => spec.ignored_fields.push(other.to_owned()),
            }
        }
        spec.ignored_fields.sort();
        Ok(spec)
    }

    /// Applies the spec to `record` at `now_ms` (a new record on generate), then checks the fields
    /// against each other.
    pub fn apply(&self, record: &mut KeyRecord, now_ms: u64) -> Result<(), KeyError> {
        if let Some(d) = self.duration_secs {
            record.expires_at_ms = d.map(|secs| now_ms.saturating_add(secs.saturating_mul(1000)));
        }
        if let Some(a) = &self.key_alias {
            record.key_alias.clone_from(a);
        }
        if let Some(m) = &self.models {
            record.models.clone_from(m);
        }
        if let Some(v) = self.rpm_limit {
            record.rpm_limit = v;
        }
        if let Some(v) = self.tpm_limit {
            record.tpm_limit = v;
        }
        if let Some(v) = self.max_parallel_requests {
            record.max_parallel_requests = v;
        }
        if let Some(v) = self.max_budget {
            record.max_budget = v;
        }
        if let Some(v) = self.budget_duration_secs {
            record.budget_duration_secs = v;
            record.budget_reset_at_ms =
                v.map(|secs| now_ms.saturating_add(secs.saturating_mul(1000)));
        }
        if let Some(m) = &self.metadata {
            record.metadata.clone_from(m);
        }
        if let Some(v) = self.priority_floor {
            record.priority_floor = v;
        }
        if let Some(v) = self.default_priority {
            record.default_priority = v;
        }
        if let Some(v) = &self.config {
            record.config.clone_from(v);
        }
        record.updated_at_ms = now_ms;
        if let (Some(floor), Some(default)) = (record.priority_floor, record.default_priority) {
            if default < floor {
                return Err(KeyError::invalid(
                    Some("default_priority"),
                    format!(
                        "`default_priority` {default} is more urgent than the key's `priority_floor` {floor} \
                         (lower is more urgent)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn nullable<T>(
    value: &Value,
    field: &'static str,
    parse: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<Option<T>, KeyError> {
    if value.is_null() {
        return Ok(None);
    }
    parse(value).map(Some).map_err(|expected| {
        KeyError::invalid(
            Some(field),
            format!("`{field}` must be {expected}, got {value}"),
        )
    })
}

fn count(value: &Value) -> Result<u64, String> {
    value
        .as_u64()
        .ok_or_else(|| "a non-negative integer".to_owned())
}

fn priority(value: &Value) -> Result<u32, String> {
    value
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| *p <= MAX_PRIORITY)
        .ok_or_else(|| format!("an integer from 0 to {MAX_PRIORITY} (lower is more urgent)"))
}

/// LiteLLM's durations: `30s`, `30m`, `30h`, `30d`, `2w`, `1mo` (30 days); a bare number is seconds.
pub fn parse_duration(value: &Value) -> Result<u64, String> {
    const EXPECTED: &str = "a duration such as \"30s\", \"30m\", \"30h\", \"30d\" or null";
    let text = match value {
        Value::String(s) => s.trim(),
        Value::Number(n) => return n.as_u64().ok_or_else(|| EXPECTED.to_owned()),
        _ => return Err(EXPECTED.to_owned()),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| EXPECTED.to_owned())?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "mo" => 30 * 86_400,
        _ => return Err(EXPECTED.to_owned()),
    };
    n.checked_mul(factor).ok_or_else(|| EXPECTED.to_owned())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn durations_follow_litellm() {
        assert_eq!(parse_duration(&json!("30s")), Ok(30));
        assert_eq!(parse_duration(&json!("30m")), Ok(1800));
        assert_eq!(parse_duration(&json!("2h")), Ok(7200));
        assert_eq!(parse_duration(&json!("30d")), Ok(2_592_000));
        for bad in [json!("30x"), json!("x"), json!(""), json!(-1), json!(true)] {
            assert!(parse_duration(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_fields_are_named_and_unknown_ones_listed() {
        for (body, field) in [
            (json!({"duration": "30x"}), "duration"),
            (json!({"rpm_limit": -1}), "rpm_limit"),
            (json!({"tpm_limit": "many"}), "tpm_limit"),
            (json!({"max_parallel_requests": 0}), "max_parallel_requests"),
            (json!({"max_budget": -0.5}), "max_budget"),
            (json!({"models": "gpt-4o"}), "models"),
            (json!({"metadata": [1]}), "metadata"),
            (json!({"priority_floor": 1.5}), "priority_floor"),
            (json!({"default_priority": 2_000_000}), "default_priority"),
            (json!({"key_alias": 3}), "key_alias"),
        ] {
            let err = KeySpec::parse(&body, false).unwrap_err();
            assert_eq!(err.param(), Some(field), "{body}");
            assert!(err.to_string().contains(field), "{err}");
        }
        let spec = KeySpec::parse(
            &json!({"team_id": "t", "user_id": "u", "rpm_limit": 5, "duration": null}),
            false,
        )
        .unwrap();
        assert_eq!(spec.ignored_fields, ["team_id", "user_id"]);
        assert_eq!(spec.rpm_limit, Some(Some(5)));
        assert_eq!(spec.duration_secs, Some(None));
    }

    #[test]
    fn a_default_more_urgent_than_the_floor_is_refused() {
        let spec = KeySpec::parse(
            &json!({"priority_floor": 50, "default_priority": 10}),
            false,
        )
        .unwrap();
        let err = spec.apply(&mut KeyRecord::default(), 0).unwrap_err();
        assert_eq!(err.param(), Some("default_priority"));
    }
}
