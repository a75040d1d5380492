//! `litellm_settings` keys that configure routing, moved into `router_settings` (which wins on conflicts).

use serde_yaml::{Mapping, Value};

use super::error::ConfigError;
use super::keypath::KeyPath;

/// `litellm_settings` key -> `router_settings` key.
///
/// LiteLLM reads these from either section; the router only knows `router_settings`.
pub(crate) const ROUTER_KEYS: &[(&str, &str)] = &[
    ("num_retries", "num_retries"),
    ("request_timeout", "timeout"),
    ("stream_timeout", "stream_timeout"),
    ("drop_params", "drop_params"),
    ("allowed_fails", "allowed_fails"),
    ("cooldown_time", "cooldown_time"),
    ("disable_cooldowns", "disable_cooldowns"),
    ("fallbacks", "fallbacks"),
    ("default_fallbacks", "default_fallbacks"),
    ("context_window_fallbacks", "context_window_fallbacks"),
    ("content_policy_fallbacks", "content_policy_fallbacks"),
    ("max_fallbacks", "max_fallbacks"),
    ("cache", "cache_responses"),
    ("cache_params", "cache_kwargs"),
];

/// Which keys moved where, to translate key paths between the merged document and the user's file.
#[derive(Clone, Debug, Default)]
pub(crate) struct Moves {
    /// (path in the file, path in the merged document)
    moved: Vec<(KeyPath, KeyPath)>,
    /// `litellm_settings` keys dropped because `router_settings` sets the same thing.
    overridden: Vec<KeyPath>,
}

impl Moves {
    /// The merged-document path of a path of the file.
    pub(crate) fn to_merged(&self, path: &KeyPath) -> KeyPath {
        self.moved
            .iter()
            .find_map(|(original, merged)| path.rebase(original, merged))
            .unwrap_or_else(|| path.clone())
    }

    /// The file's path of a path of the merged document.
    pub(crate) fn to_original(&self, path: &KeyPath) -> KeyPath {
        self.moved
            .iter()
            .find_map(|(original, merged)| path.rebase(merged, original))
            .unwrap_or_else(|| path.clone())
    }

    /// The file's path of a merged-document path written out (`router_settings.fallbacks[0].g`), as the
    /// router's config errors name them.
    pub(crate) fn to_original_text(&self, path: &str) -> String {
        self.moved
            .iter()
            .find_map(|(original, merged)| {
                let rest = path.strip_prefix(merged.to_string().as_str())?;
                (rest.is_empty() || rest.starts_with(['.', '[']))
                    .then(|| format!("{original}{rest}"))
            })
            .unwrap_or_else(|| path.to_owned())
    }

    /// `litellm_settings` keys that `router_settings` overrode.
    pub(crate) fn overridden(&self) -> &[KeyPath] {
        &self.overridden
    }
}

/// Moves the routing keys of `litellm_settings` into `router_settings` unless that already sets them.
pub(crate) fn litellm_into_router_settings(doc: &mut Value) -> Result<Moves, ConfigError> {
    let mut moves = Moves::default();
    let Value::Mapping(root) = doc else {
        return Ok(moves);
    };
    let taken: Vec<(&str, &str, Value)> = match root.get_mut("litellm_settings") {
        Some(Value::Mapping(litellm)) => ROUTER_KEYS
            .iter()
            .filter_map(|(from, to)| litellm.remove(*from).map(|v| (*from, *to, v)))
            .collect(),
        // Anything else is reported by deserialization with its path.
        _ => return Ok(moves),
    };
    if taken.is_empty() {
        return Ok(moves);
    }
    let router = root
        .entry(Value::from("router_settings"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if router.is_null() {
        *router = Value::Mapping(Mapping::new());
    }
    let Value::Mapping(router) = router else {
        return Err(ConfigError::invalid(
            "router_settings",
            "expected a mapping of router settings",
        ));
    };
    let litellm_path = KeyPath::root().key("litellm_settings");
    let router_path = KeyPath::root().key("router_settings");
    for (from, to, value) in taken {
        if router.contains_key(to) {
            moves.overridden.push(litellm_path.key(from));
            continue;
        }
        router.insert(Value::from(to), value);
        moves
            .moved
            .push((litellm_path.key(from), router_path.key(to)));
    }
    Ok(moves)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_settings_win_and_paths_translate_both_ways() {
        let mut doc: Value = serde_yaml::from_str(
            "litellm_settings:\n  num_retries: 5\n  request_timeout: 30\n  set_verbose: true\nrouter_settings:\n  num_retries: 1\n",
        )
        .unwrap();
        let moves = litellm_into_router_settings(&mut doc).unwrap();
        assert_eq!(doc["router_settings"]["num_retries"], Value::from(1));
        assert_eq!(doc["router_settings"]["timeout"], Value::from(30));
        assert!(doc["litellm_settings"].get("request_timeout").is_none());
        assert_eq!(doc["litellm_settings"]["set_verbose"], Value::from(true));
        let merged = KeyPath::root().key("router_settings").key("timeout");
        assert_eq!(
            moves.to_original(&merged).to_string(),
            "litellm_settings.request_timeout"
        );
        assert_eq!(moves.to_merged(&moves.to_original(&merged)), merged);
        let overridden: Vec<String> = moves.overridden().iter().map(ToString::to_string).collect();
        assert_eq!(overridden, vec!["litellm_settings.num_retries"]);
    }

    #[test]
    fn written_out_paths_translate_at_key_boundaries_only() {
        let mut doc: Value = serde_yaml::from_str(
            "litellm_settings:\n  fallbacks: [{a: [b]}]\n  cache_params: {type: redis}\n",
        )
        .unwrap();
        let moves = litellm_into_router_settings(&mut doc).unwrap();
        for (merged, original) in [
            (
                "router_settings.fallbacks[0].a[0]",
                "litellm_settings.fallbacks[0].a[0]",
            ),
            ("router_settings.fallbacks", "litellm_settings.fallbacks"),
            (
                "router_settings.cache_kwargs.type",
                "litellm_settings.cache_params.type",
            ),
            // Not moved: a key that only starts like a moved one, and the router's own keys.
            (
                "router_settings.fallbacks_extra",
                "router_settings.fallbacks_extra",
            ),
            (
                "router_settings.default_fallbacks[0]",
                "router_settings.default_fallbacks[0]",
            ),
            (
                "model_list[0].litellm_params.rpm",
                "model_list[0].litellm_params.rpm",
            ),
        ] {
            assert_eq!(moves.to_original_text(merged), original, "{merged}");
        }
    }

    #[test]
    fn a_missing_router_section_is_created() {
        let mut doc: Value =
            serde_yaml::from_str("litellm_settings:\n  fallbacks: [{a: [b]}]\nrouter_settings:\n")
                .unwrap();
        litellm_into_router_settings(&mut doc).unwrap();
        assert!(doc["router_settings"]["fallbacks"].is_sequence());
    }
}
