//! LiteLLM's `os.environ/NAME` references: the one place a config value is recognised as one and resolved.

/// The prefix that marks a config string as a reference to an environment variable.
const ENV_PREFIX: &str = "os.environ/";

/// A config string after `os.environ/` resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnvValue<'a> {
    /// Not a reference: the value is the string itself.
    Literal,
    /// `os.environ/NAME` with `NAME` set: its value.
    Resolved(String),
    /// `os.environ/NAME` with `NAME` unset: the name, for the error.
    Unset(&'a str),
}

/// Resolves `value` when it is `os.environ/NAME` (surrounding blanks of `NAME` ignored), reading the variable
/// through `lookup`. Loaders pass the environment they resolve from: the process environment, a config's own
/// `environment_variables`, or fixed variables in tests.
pub fn resolve_env_reference(
    value: &str,
    lookup: impl FnOnce(&str) -> Option<String>,
) -> EnvValue<'_> {
    let Some(name) = value.strip_prefix(ENV_PREFIX) else {
        return EnvValue::Literal;
    };
    let name = name.trim();
    match lookup(name) {
        Some(v) => EnvValue::Resolved(v),
        None => EnvValue::Unset(name),
    }
}

/// The process environment as a lookup; unset and non-UTF-8 variables are `None`.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_resolved_through_the_lookup() {
        let lookup = |name: &str| (name == "KEY").then(|| "secret".to_owned());
        assert_eq!(
            resolve_env_reference("os.environ/KEY", lookup),
            EnvValue::Resolved("secret".into())
        );
        assert_eq!(
            resolve_env_reference("os.environ/ KEY ", lookup),
            EnvValue::Resolved("secret".into())
        );
        assert_eq!(
            resolve_env_reference("os.environ/NOPE", lookup),
            EnvValue::Unset("NOPE")
        );
        assert_eq!(resolve_env_reference("plain", lookup), EnvValue::Literal);
        assert_eq!(
            resolve_env_reference("x os.environ/KEY", lookup),
            EnvValue::Literal
        );
    }
}
