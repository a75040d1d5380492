//! `os.environ/VAR` references in `config.yaml`: where variables come from, and the walk over the document that
//! resolves each value with [`router::resolve_env_reference`].

use std::collections::BTreeMap;

use router::EnvValue;
use serde_yaml::Value;

use super::error::ConfigError;
use super::keypath::KeyPath;

/// Where variables come from: the config's own `environment_variables` section first (LiteLLM exports that section
/// into the environment, so it wins), then the process environment.
#[derive(Clone, Debug, Default)]
pub(crate) struct Environment {
    overrides: BTreeMap<String, String>,
    process: bool,
}

impl Environment {
    /// The process environment plus the config's `environment_variables`.
    pub(crate) fn process(overrides: BTreeMap<String, String>) -> Self {
        Self {
            overrides,
            process: true,
        }
    }

    /// Only the given variables (tests).
    #[cfg(test)]
    pub(crate) fn fixed(vars: &[(&str, &str)]) -> Self {
        Self {
            overrides: vars
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            process: false,
        }
    }

    /// The same environment with `name` set (tests).
    #[cfg(test)]
    pub(crate) fn with(mut self, name: &str, value: &str) -> Self {
        self.overrides.insert(name.to_owned(), value.to_owned());
        self
    }

    /// The value of `name`; unset and non-UTF-8 variables are `None`.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        if let Some(value) = self.overrides.get(name) {
            return Some(value.clone());
        }
        if self.process {
            std::env::var(name).ok()
        } else {
            None
        }
    }
}

/// Replaces every `os.environ/VAR` string in `value` by the variable's value and returns the paths it replaced.
///
/// A missing variable is an error naming it and the key that referenced it.
pub(crate) fn resolve(
    value: &mut Value,
    path: &KeyPath,
    env: &Environment,
    resolved: &mut Vec<KeyPath>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(text) => match router::resolve_env_reference(text, |name| env.get(name)) {
            EnvValue::Literal => {}
            EnvValue::Resolved(var) => {
                *text = var;
                resolved.push(path.clone());
            }
            EnvValue::Unset(name) => {
                return Err(ConfigError::MissingEnv {
                    var: name.to_owned(),
                    key_path: path.to_string(),
                })
            }
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                resolve(item, &path.index(i), env, resolved)?;
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                resolve(item, &path.key(key_text(key)), env, resolved)?;
            }
        }
        Value::Tagged(tagged) => resolve(&mut tagged.value, path, env, resolved)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// A mapping key as text, for paths and messages.
pub(crate) fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_replaced_anywhere() {
        let mut doc: Value = serde_yaml::from_str(
            "a:\n  - k: os.environ/KEY\n  - plain\nb: os.environ/ PORT\nc: 3\n",
        )
        .unwrap();
        let env = Environment::fixed(&[("KEY", "secret"), ("PORT", "6380")]);
        let mut resolved = Vec::new();
        resolve(&mut doc, &KeyPath::root(), &env, &mut resolved).unwrap();
        assert_eq!(doc["a"][0]["k"], Value::from("secret"));
        assert_eq!(doc["a"][1], Value::from("plain"));
        assert_eq!(doc["b"], Value::from("6380"));
        let paths: Vec<String> = resolved.iter().map(ToString::to_string).collect();
        assert_eq!(paths, vec!["a[0].k", "b"]);
    }

    #[test]
    fn a_missing_variable_names_itself_and_the_key() {
        let mut doc: Value = serde_yaml::from_str(
            "model_list:\n  - litellm_params:\n      api_key: os.environ/NOPE_KEY\n",
        )
        .unwrap();
        let err = resolve(
            &mut doc,
            &KeyPath::root(),
            &Environment::fixed(&[]),
            &mut Vec::new(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("NOPE_KEY"), "{text}");
        assert!(
            text.contains("model_list[0].litellm_params.api_key"),
            "{text}"
        );
    }
}
