//! [`ConfigError`]: why a config could not be loaded, naming the key path.

/// Why a config could not be loaded. Messages name the key path and never contain secret values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("config is not valid YAML: {0}")]
    Yaml(String),
    /// An `os.environ/VAR` reference names a variable that is not set.
    #[error(
        "environment variable {var} is not set (referenced by `{key_path}` as os.environ/{var})"
    )]
    MissingEnv {
        /// The variable.
        var: String,
        /// The key that references it.
        key_path: String,
    },
    /// A value has the wrong type or is out of range.
    #[error("invalid value at `{key_path}`: {message}")]
    Invalid {
        /// Where.
        key_path: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    pub(super) fn invalid(key_path: impl ToString, message: impl Into<String>) -> Self {
        Self::Invalid {
            key_path: key_path.to_string(),
            message: message.into(),
        }
    }
}
