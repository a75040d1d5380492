//! The master key: parsing, the refusal of publicly known keys, the constant-time comparison, masking.

use std::fmt;

use serde::Deserialize;
use subtle::ConstantTimeEq;

/// Master keys that appear in public docs and examples; a proxy using one is open to anybody who read them.
const PUBLICLY_KNOWN_KEYS: &[&str] = &[
    "sk-1234",
    "sk-12345",
    "sk-123456",
    "sk-1234567890",
    "sk-admin",
    "sk-master",
    "sk-master-key",
    "sk-test",
    "sk-secret",
    "sk-litellm",
    "changeme",
    "change-me",
    "password",
    "secret",
    "admin",
    "master",
    "test",
];

/// The proxy's master key (`general_settings.master_key`). `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct MasterKey(String);

impl MasterKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// Whether the key is empty or blank.
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }

    /// Whether the key is one of the handful that documentation and examples use.
    pub fn is_publicly_known(&self) -> bool {
        let key = self.0.trim();
        PUBLICLY_KNOWN_KEYS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(key))
    }

    /// Whether `candidate` is this key; the comparison takes the same time wherever the first difference is.
    pub fn matches(&self, candidate: &str) -> bool {
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }

    /// A form safe to print: the first three and last four characters of long keys, else `***`.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

/// A printable form of a secret: `sk-…wxyz` for secrets of 12 characters or more, else `***`.
pub(crate) fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() < 12 {
        return "***".to_owned();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_are_recognised_and_never_printed() {
        assert!(MasterKey::new("sk-1234").is_publicly_known());
        assert!(MasterKey::new("ChangeMe").is_publicly_known());
        assert!(!MasterKey::new("sk-local-dev-key").is_publicly_known());
        let key = MasterKey::new("sk-a-long-secret-value");
        assert_eq!(format!("{key:?}"), "MasterKey(***)");
        assert_eq!(key.masked(), "sk-…alue");
        assert_eq!(mask("short"), "***");
    }
}
