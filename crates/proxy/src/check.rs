//! `llm-scheduler check-config FILE`: validate a config and describe what it serves, secrets masked.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use router::{Router, SkippedDeployment};

use crate::config::Config;
use crate::master_key::mask;

/// What `check-config` found.
#[derive(Debug)]
pub struct ConfigReport {
    /// The description: backend, auth, model groups and deployments, fallbacks, warnings.
    pub text: String,
    /// Entries the server would skip (unsupported provider prefix): `check-config` fails on them.
    pub skipped: Vec<SkippedDeployment>,
}

/// Loads `path`, validates it as the server would (the router builds its model groups and backend; Redis is not
/// contacted) and returns a report: backend, auth, model groups and deployments, fallbacks, warnings, and the
/// entries the server would skip.
pub async fn check_config(path: impl AsRef<Path>) -> anyhow::Result<ConfigReport> {
    let path = path.as_ref();
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let router = config
        .build_router()
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let skipped = router.skipped_deployments();
    let text = describe(path, &config, &router, &skipped);
    router.shutdown().await;
    Ok(ConfigReport { text, skipped })
}

fn describe(
    path: &Path,
    config: &Config,
    router: &Router,
    skipped: &[SkippedDeployment],
) -> String {
    let mut out = String::new();
    if skipped.is_empty() {
        let _ = writeln!(out, "config: {} is valid", path.display());
    } else {
        let _ = writeln!(
            out,
            "config: {} has {} deployment{} that would not be served",
            path.display(),
            skipped.len(),
            if skipped.len() == 1 { "" } else { "s" }
        );
    }
    let _ = writeln!(out, "backend: {}", config.backend.describe());
    let _ = match &config.master_key {
        Some(key) => writeln!(out, "master key: {}", key.masked()),
        None => writeln!(out, "master key: none (the API is open)"),
    };
    // Keys are only in the config; the router lists a group's deployments in config order.
    let mut keys: BTreeMap<&str, Vec<Option<String>>> = BTreeMap::new();
    for entry in &config.router.model_list {
        let key = entry
            .litellm_params
            .api_key
            .as_ref()
            .map(|k| mask(k.expose()));
        keys.entry(entry.model_name.as_str()).or_default().push(key);
    }
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for info in router.deployments() {
        let lines = groups.entry(info.group.clone()).or_default();
        let key = keys
            .get(info.group.as_str())
            .and_then(|k| k.get(lines.len()))
            .cloned()
            .flatten();
        let mut line = format!("{} -> {}", info.id, info.model);
        if info.mock {
            line.push_str(" (mock_response)");
        } else if !info.api_base.is_empty() {
            let _ = write!(line, " at {}", info.api_base);
        }
        if let Some(key) = key {
            let _ = write!(line, ", api_key {key}");
        }
        for (name, value) in [
            ("rpm", info.rpm),
            ("tpm", info.tpm),
            (
                "max_parallel_requests",
                info.max_parallel_requests.map(u64::from),
            ),
            ("max_input_tokens", info.max_input_tokens),
        ] {
            if let Some(v) = value {
                let _ = write!(line, ", {name} {v}");
            }
        }
        lines.push(line);
    }
    let _ = writeln!(out, "model groups:");
    for (group, deployments) in &groups {
        let _ = writeln!(
            out,
            "  {group} ({} deployment{})",
            deployments.len(),
            if deployments.len() == 1 { "" } else { "s" }
        );
        for d in deployments {
            let _ = writeln!(out, "    - {d}");
        }
    }
    let settings = &config.router.settings;
    for (name, rules) in [
        ("fallbacks", &settings.fallbacks),
        (
            "context_window_fallbacks",
            &settings.context_window_fallbacks,
        ),
        (
            "content_policy_fallbacks",
            &settings.content_policy_fallbacks,
        ),
    ] {
        for rule in rules.iter().flatten() {
            for (group, targets) in rule {
                let _ = writeln!(out, "{name}: {group} -> {}", targets.groups().join(", "));
            }
        }
    }
    for s in skipped {
        let _ = writeln!(
            out,
            "error: {} ({} -> {}) is skipped: {}",
            s.path, s.model_name, s.model, s.reason
        );
    }
    if !config.unimplemented_keys.is_empty() {
        let _ = writeln!(
            out,
            "warning: keys not implemented by llm-scheduler (ignored): {}",
            config.unimplemented_keys.join(", ")
        );
    }
    if !config.overridden_keys.is_empty() {
        let _ = writeln!(
            out,
            "note: overridden by router_settings: {}",
            config.overridden_keys.join(", ")
        );
    }
    out
}
