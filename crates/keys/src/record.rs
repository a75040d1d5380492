//! The key record: what a virtual key may do and what it spent; the secret's hash that names it.

use std::fmt;

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

/// Characters of a generated secret after `sk-`.
const SECRET_LEN: usize = 32;

/// A key's id: the SHA-256 of its secret, 64 lowercase hex digits. It is what Redis, `/key/info` and logs
/// show (LiteLLM's `token`); the secret itself is never stored.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// The id of `secret`.
    pub fn of_secret(secret: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let mut hex = String::with_capacity(64);
        for byte in digest.as_ref() {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        Self(hex)
    }

    /// `text` when it is already an id (64 lowercase hex digits), else the id of `text` as a secret: the
    /// management routes accept either, as LiteLLM's do.
    pub fn from_secret_or_id(text: &str) -> Self {
        let text = text.trim();
        if Self::is_id(text) {
            Self(text.to_owned())
        } else {
            Self::of_secret(text)
        }
    }

    /// An id read back from the store (checked to be one).
    pub fn parse(text: &str) -> Option<Self> {
        Self::is_id(text).then(|| Self(text.to_owned()))
    }

    fn is_id(text: &str) -> bool {
        text.len() == 64 && text.bytes().all(|b| HEX.contains(&b))
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `secret` hashes to this id; the comparison takes the same time wherever the first difference is.
    pub fn matches(&self, secret: &str) -> bool {
        Self::of_secret(secret)
            .0
            .as_bytes()
            .ct_eq(self.0.as_bytes())
            .into()
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({})", self.0)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A fresh secret: `sk-` and 32 random alphanumeric characters (190 bits).
pub fn generate_secret() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let mut secret = String::with_capacity(3 + SECRET_LEN);
    secret.push_str("sk-");
    for _ in 0..SECRET_LEN {
        secret.push(char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]));
    }
    secret
}

/// `sk-...wxyz`: the printable name of a secret (LiteLLM's `key_name`).
pub fn key_name(secret: &str) -> String {
    let tail: String = {
        let chars: Vec<char> = secret.chars().collect();
        if chars.len() >= 12 {
            chars[chars.len() - 4..].iter().collect()
        } else {
            String::new()
        }
    };
    format!("sk-...{tail}")
}

/// A virtual key as stored: every field but `spend` is set by generate and update; `spend` only grows
/// with settled requests (and restarts at zero when its `budget_duration` period rolls over).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KeyRecord {
    /// The id (hash of the secret).
    pub token: Option<KeyId>,
    /// `sk-...wxyz`.
    pub key_name: String,
    /// A human name, also the label of the spend metric.
    pub key_alias: Option<String>,
    /// Model groups the key may call; empty = all.
    pub models: Vec<String>,
    /// Requests per minute.
    pub rpm_limit: Option<u64>,
    /// Tokens per minute (reserved from an estimate, settled with the usage the upstream reports).
    pub tpm_limit: Option<u64>,
    /// Requests in flight at once; more wait.
    pub max_parallel_requests: Option<u64>,
    /// USD; requests are refused once `spend` reaches it.
    pub max_budget: Option<f64>,
    /// Seconds after which spend starts again at zero.
    pub budget_duration_secs: Option<u64>,
    /// Epoch ms at which the current budget period ends.
    pub budget_reset_at_ms: Option<u64>,
    /// USD spent in the current budget period.
    pub spend: f64,
    /// Epoch ms after which the key is refused; `None` = never.
    pub expires_at_ms: Option<u64>,
    /// Epoch ms of creation.
    pub created_at_ms: u64,
    /// Epoch ms of the last update.
    pub updated_at_ms: u64,
    /// Free-form JSON.
    pub metadata: Map<String, Value>,
    /// The most urgent priority the key may ask for (lower is more urgent).
    pub priority_floor: Option<u32>,
    /// Priority of the key's requests that name none.
    pub default_priority: Option<u32>,
    /// The key's own deployments (`{"model_list": [...]}`), served to this key only; literal upstream
    /// `api_key`s in it are stored encrypted (see the proxy's `key_config`), `os.environ/` references as
    /// they are.
    pub config: Option<Value>,
}

impl KeyRecord {
    /// Whether the key has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }

    /// Spend in the current budget period at `now_ms` (zero once the period ended and no request settled
    /// since).
    pub fn current_spend(&self, now_ms: u64) -> f64 {
        match self.budget_reset_at_ms {
            Some(at) if now_ms >= at => 0.0,
            _ => self.spend,
        }
    }

    /// Whether spend has reached `max_budget` at `now_ms`.
    pub fn over_budget(&self, now_ms: u64) -> bool {
        self.max_budget
            .is_some_and(|max| self.current_spend(now_ms) >= max)
    }

    /// Whether the key may call `model`.
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m == model || m == "*")
    }

    /// The limits the key's requests reserve against.
    pub fn limits(&self) -> KeyLimits {
        KeyLimits {
            rpm: self.rpm_limit,
            tpm: self.tpm_limit,
            parallel: self.max_parallel_requests,
        }
    }

    /// The stored fields, one JSON value each (`spend` and the id excluded).
    pub(crate) fn fields(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Ok(Value::Object(map)) = serde_json::to_value(self) {
            for (name, value) in map {
                if name == "spend" || name == "token" || value.is_null() {
                    continue;
                }
                out.push((name, value.to_string()));
            }
        }
        out
    }

    /// A record from stored fields (each a JSON value); unknown fields are skipped, so older replicas read
    /// newer records.
    pub(crate) fn from_fields(
        token: &KeyId,
        fields: impl IntoIterator<Item = (String, String)>,
    ) -> Option<Self> {
        let mut map = Map::new();
        for (name, text) in fields {
            if let Ok(value) = serde_json::from_str::<Value>(&text) {
                map.insert(name, value);
            }
        }
        if map.is_empty() {
            return None;
        }
        let mut record: KeyRecord = serde_json::from_value(Value::Object(map)).ok()?;
        record.token = Some(token.clone());
        Some(record)
    }
}

/// A key's limits (each `None` = unlimited).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyLimits {
    /// Requests per window.
    pub rpm: Option<u64>,
    /// Tokens per window.
    pub tpm: Option<u64>,
    /// Requests in flight.
    pub parallel: Option<u64>,
}

impl KeyLimits {
    /// Whether any limit is set (else no reservation is needed).
    pub fn any(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.parallel.is_some()
    }
}

/// `epoch_ms` as an ISO 8601 UTC timestamp (`2026-01-02T03:04:05.678Z`), as LiteLLM answers `expires`.
pub fn iso8601(epoch_ms: u64) -> String {
    let secs = epoch_ms / 1000;
    let millis = epoch_ms % 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sha256_hex_and_never_the_secret() {
        let id = KeyId::of_secret("abc");
        assert_eq!(
            id.as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(id.matches("abc"));
        assert!(!id.matches("abd"));
        assert_eq!(KeyId::from_secret_or_id(id.as_str()), id);
        assert_eq!(KeyId::from_secret_or_id("abc"), id);
        let secret = generate_secret();
        assert!(secret.starts_with("sk-") && secret.len() == 35);
        assert_ne!(generate_secret(), secret);
        assert_eq!(key_name("sk-abcdefghijklmnop"), "sk-...mnop");
    }

    #[test]
    fn records_round_trip_through_their_fields() {
        let token = KeyId::of_secret("s");
        let record = KeyRecord {
            token: Some(token.clone()),
            key_alias: Some("team-a".into()),
            models: vec!["gpt-4o".into()],
            rpm_limit: Some(5),
            max_budget: Some(0.5),
            spend: 0.0,
            priority_floor: Some(50),
            ..KeyRecord::default()
        };
        let back = KeyRecord::from_fields(&token, record.fields()).unwrap();
        assert_eq!(back, record);
        assert!(back.allows_model("gpt-4o") && !back.allows_model("other"));
    }

    #[test]
    fn timestamps_are_iso8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_709_251_200_123), "2024-03-01T00:00:00.123Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
