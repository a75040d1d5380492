//! [`KeyError`]: what can go wrong with keys, for the caller to decide on.

use store::BackendError;

/// A key operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A field of a management body is wrong; `param` names it.
    #[error("{message}")]
    Invalid {
        /// The offending field.
        param: Option<&'static str>,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A key given to generate exists already.
    #[error("a key with this secret exists already")]
    Exists,
    /// A secret could not be encrypted or decrypted (wrong salt key, damaged value).
    #[error("sealed secret: {0}")]
    Sealing(&'static str),
    /// The store (Redis) failed or did not answer.
    #[error("key store: {0}")]
    Backend(#[from] BackendError),
}

impl KeyError {
    pub(crate) fn invalid(param: Option<&'static str>, message: impl Into<String>) -> Self {
        Self::Invalid {
            param,
            message: message.into(),
        }
    }

    /// The offending field of an [`KeyError::Invalid`].
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Self::Invalid { param, .. } => *param,
            Self::Exists => Some("key"),
            Self::Backend(_) | Self::Sealing(_) => None,
        }
    }

    /// Whether the store failed (503) rather than the request (400).
    pub fn is_backend(&self) -> bool {
        matches!(self, Self::Backend(_))
    }
}
