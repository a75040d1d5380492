//! The staged build: `model_list` and `router_settings` validated into a [`Topology`] (ids, groups, aliases).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::deployment::Deployment;
use super::entry::{deployment, Built, Env, SkippedDeployment};
use super::groups::{ModelGroup, Topology};
use super::settings::{default_params, policy};
use crate::config::{AliasTarget, RouterConfig};
use crate::environ;
use crate::error::RouterError;

/// Validates `config` into a [`Topology`], reading variables from the process environment.
pub(crate) fn build(config: &RouterConfig) -> Result<Topology, RouterError> {
    build_with_env(config, &environ::process_env)
}

/// Validates `config` into a [`Topology`], reading variables through `env`.
pub(super) fn build_with_env(config: &RouterConfig, env: Env<'_>) -> Result<Topology, RouterError> {
    let defaults = default_params(&config.settings)?;
    let mut groups: BTreeMap<String, Vec<Arc<Deployment>>> = BTreeMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut skipped = Vec::new();
    for (i, entry) in config.model_list.iter().enumerate() {
        let path = format!("model_list[{i}]");
        let d = match deployment(entry, defaults.as_ref(), &path, env)? {
            Built::Deployment(d) => *d,
            Built::Unsupported(s) => {
                skipped.push(s);
                continue;
            }
        };
        if let Some(prev) = ids.insert(d.id.clone(), i) {
            return Err(RouterError::config(
                format!("{path}.model_info.id"),
                format!(
                    "deployment id `{}` is also the id of model_list[{prev}] (identical entries, or a repeated \
                     model_info.id)",
                    d.id
                ),
            ));
        }
        groups.entry(d.group.clone()).or_default().push(Arc::new(d));
    }
    let groups: BTreeMap<String, ModelGroup> = groups
        .into_iter()
        .map(|(name, deployments)| {
            let shuffle_weights = shuffle_weights(&deployments);
            (
                name.clone(),
                ModelGroup {
                    name,
                    deployments,
                    shuffle_weights,
                },
            )
        })
        .collect();

    let mut direct: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for g in groups.values() {
        for d in &g.deployments {
            for key in [d.litellm_model.clone(), d.id.clone()] {
                if groups.contains_key(&key) {
                    continue;
                }
                let e = direct
                    .entry(key)
                    .or_insert_with(|| (g.name.clone(), Vec::new()));
                // A provider model shared by several groups routes to the first group only.
                if e.0 == g.name {
                    e.1.push(d.id.clone());
                }
            }
        }
    }

    let s = &config.settings;
    let skipped_groups: Vec<&str> = skipped
        .iter()
        .map(|d: &SkippedDeployment| d.model_name.trim())
        .filter(|g| !groups.contains_key(*g))
        .collect();
    let mut aliases = BTreeMap::new();
    for (alias, target) in s.model_group_alias.iter().flatten() {
        let path = format!("router_settings.model_group_alias.{alias}");
        let (group, hidden) = match target {
            AliasTarget::Group(g) => (g.clone(), false),
            AliasTarget::Detailed { model, hidden } => (model.clone(), hidden.unwrap_or(false)),
        };
        if skipped_groups.contains(&group.as_str()) {
            // Its group is not served: neither is the alias.
            continue;
        }
        if !groups.contains_key(&group) {
            return Err(RouterError::config(
                path,
                format!("unknown model group `{group}`"),
            ));
        }
        if groups.contains_key(alias) {
            return Err(RouterError::config(
                path,
                "an alias cannot have the name of a model group",
            ));
        }
        aliases.insert(alias.clone(), (group, hidden));
    }

    let policy = policy(s, &groups, &skipped_groups)?;
    Ok(Topology {
        groups,
        aliases,
        direct,
        policy,
        skipped,
    })
}

/// simple-shuffle weights, considering every deployment's own values: `weight` if any deployment sets one,
/// else `rpm`, else `tpm` (a deployment without the value gets 0), else equal.
fn shuffle_weights(deployments: &[Arc<Deployment>]) -> Vec<f64> {
    let pick = |f: &dyn Fn(&Deployment) -> Option<f64>| -> Option<Vec<f64>> {
        let v: Vec<f64> = deployments.iter().map(|d| f(d).unwrap_or(0.0)).collect();
        (deployments.iter().any(|d| f(d).is_some()) && v.iter().any(|w| *w > 0.0)).then_some(v)
    };
    #[allow(clippy::cast_precision_loss)]
    let by_rpm = |d: &Deployment| d.rpm.map(|v| v as f64);
    #[allow(clippy::cast_precision_loss)]
    let by_tpm = |d: &Deployment| d.tpm.map(|v| v as f64);
    pick(&|d: &Deployment| d.weight)
        .or_else(|| pick(&by_rpm))
        .or_else(|| pick(&by_tpm))
        .unwrap_or_else(|| vec![1.0; deployments.len()])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::*;
    use crate::config::Secret;

    fn topology(v: Value) -> Result<Topology, RouterError> {
        build(&RouterConfig::from_json(v)?)
    }

    #[test]
    fn shuffle_weights_consider_every_deployment() {
        let t = topology(json!({"model_list": [
            {"model_name": "g", "litellm_params": {"model": "openai/a", "rpm": 10}},
            {"model_name": "g", "litellm_params": {"model": "openai/b", "weight": 3}},
            {"model_name": "h", "litellm_params": {"model": "openai/c"}, "rpm": 5},
            {"model_name": "h", "litellm_params": {"model": "openai/d", "rpm": 15}},
        ]}))
        .unwrap();
        // A weight on any deployment wins over rpm; missing weights count 0.
        assert_eq!(t.groups["g"].shuffle_weights, vec![0.0, 3.0]);
        // The entry's top-level rpm counts.
        assert_eq!(t.groups["h"].shuffle_weights, vec![5.0, 15.0]);
    }

    #[test]
    fn environment_variables_come_from_the_lookup() {
        let config = RouterConfig::from_json(json!({"model_list": [
            {"model_name": "g", "litellm_params": {
                "model": "azure/dep", "api_key": "os.environ/ AZ_KEY",
                "extra_headers": {"x-team": "os.environ/TEAM"},
            }},
            {"model_name": "h", "litellm_params": {"model": "openai/gpt-4o"}},
        ]}))
        .unwrap();
        let vars = [
            ("AZ_KEY", "az-secret"),
            ("TEAM", "blue"),
            ("AZURE_API_BASE", "https://r.openai.azure.com"),
            ("OPENAI_API_KEY", "sk-openai"),
        ];
        let env = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        let t = build_with_env(&config, &env).unwrap();
        let g = &t.groups["g"].deployments[0];
        assert_eq!(g.api_key.as_ref().map(Secret::expose), Some("az-secret"));
        assert_eq!(g.api_base, "https://r.openai.azure.com");
        assert_eq!(g.headers, vec![("x-team".to_owned(), "blue".to_owned())]);
        let h = &t.groups["h"].deployments[0];
        assert_eq!(h.api_key.as_ref().map(Secret::expose), Some("sk-openai"));

        let err = build_with_env(&config, &|_: &str| None).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("model_list[0].litellm_params.api_key") && text.contains("AZ_KEY"),
            "{text}"
        );
    }

    #[test]
    fn providers_take_their_default_base_and_key_variable() {
        let cases = [
            (
                "groq/llama-3.1-8b-instant",
                "https://api.groq.com/openai/v1",
                "GROQ_API_KEY",
            ),
            (
                "together_ai/meta/llama",
                "https://api.together.ai/v1",
                "TOGETHERAI_API_KEY",
            ),
            (
                "fireworks_ai/accounts/f/models/m",
                "https://api.fireworks.ai/inference/v1",
                "FIREWORKS_AI_API_KEY",
            ),
            (
                "deepseek/deepseek-chat",
                "https://api.deepseek.com/beta",
                "DEEPSEEK_API_KEY",
            ),
            (
                "mistral/mistral-small",
                "https://api.mistral.ai/v1",
                "MISTRAL_API_KEY",
            ),
            (
                "openrouter/a/b",
                "https://openrouter.ai/api/v1",
                "OPENROUTER_API_KEY",
            ),
            ("xai/grok-3", "https://api.x.ai/v1", "XAI_API_KEY"),
            (
                "perplexity/sonar",
                "https://api.perplexity.ai",
                "PERPLEXITYAI_API_KEY",
            ),
            (
                "gemini/gemini-2.0-flash",
                "https://generativelanguage.googleapis.com/v1beta/openai",
                "GEMINI_API_KEY",
            ),
            (
                "cohere/command-r",
                "https://api.cohere.ai/compatibility/v1",
                "COHERE_API_KEY",
            ),
            (
                "ollama_chat/llama3",
                "http://localhost:11434/v1",
                "OLLAMA_API_KEY",
            ),
            (
                "anthropic/claude-sonnet-4-5",
                "https://api.anthropic.com",
                "ANTHROPIC_API_KEY",
            ),
        ];
        for (model, base, var) in cases {
            let config = RouterConfig::from_json(json!({"model_list": [
                {"model_name": "g", "litellm_params": {"model": model}},
            ]}))
            .unwrap();
            let env = |name: &str| (name == var).then(|| format!("key-from-{name}"));
            let t = build_with_env(&config, &env).unwrap();
            let d = &t.groups["g"].deployments[0];
            assert_eq!(d.api_base, base, "{model}");
            assert_eq!(
                d.api_key.as_ref().map(Secret::expose),
                Some(format!("key-from-{var}").as_str()),
                "{model}"
            );
            assert_eq!(Some(d.model.as_str()), model.split_once('/').map(|x| x.1));
        }
        // A base variable wins over the default; a base naming the Messages path is accepted.
        let config = RouterConfig::from_json(json!({"model_list": [
            {"model_name": "g", "litellm_params": {"model": "groq/m"}},
            {"model_name": "h", "litellm_params": {"model": "anthropic/c", "api_base": "https://gw.example/v1/messages"}},
        ]}))
        .unwrap();
        let env =
            |name: &str| (name == "GROQ_API_BASE").then(|| "https://groq.gw.example/v1".to_owned());
        let t = build_with_env(&config, &env).unwrap();
        assert_eq!(
            t.groups["g"].deployments[0].api_base,
            "https://groq.gw.example/v1"
        );
        assert_eq!(
            t.groups["h"].deployments[0].url(crate::request::Endpoint::ChatCompletions),
            "https://gw.example/v1/messages"
        );
        // Prefixes without a default base need one.
        for model in ["hosted_vllm/m", "azure_ai/m"] {
            let config = RouterConfig::from_json(json!({"model_list": [
                {"model_name": "g", "litellm_params": {"model": model}},
            ]}))
            .unwrap();
            let err = build_with_env(&config, &|_: &str| None)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("model_list[0].litellm_params.api_base"),
                "{err}"
            );
        }
    }

    #[test]
    fn unsupported_prefixes_are_skipped_with_their_aliases() {
        let t = topology(json!({
            "model_list": [
                {"model_name": "g", "litellm_params": {"model": "openai/a"}},
                {"model_name": "b", "litellm_params": {"model": "bedrock/claude"}},
                {"model_name": "g", "litellm_params": {"model": "vertex_ai/gemini"}},
                {"model_name": "m", "litellm_params": {"model": "bedrock/x", "mock_response": "hi"}},
            ],
            "router_settings": {"model_group_alias": {"claude": "b"}, "fallbacks": [{"g": ["b"]}]},
        }))
        .unwrap();
        let skipped: Vec<&str> = t.skipped().iter().map(|s| s.path.as_str()).collect();
        assert_eq!(skipped, ["model_list[1]", "model_list[2]"]);
        assert!(t.skipped()[0].reason.contains("`bedrock`"));
        assert_eq!(t.groups["g"].deployments.len(), 1);
        assert!(t.resolve("b").is_none() && t.resolve("claude").is_none());
        assert!(t.resolve("m").is_some(), "a mock may name any provider");
    }

    #[test]
    fn defaults_aliases_and_ids() {
        let t = topology(json!({
            "model_list": [
                {"model_name": "g", "litellm_params": {"model": "openai/a"}, "model_info": {"id": "my-id"}},
                {"model_name": "g", "litellm_params": {"model": "openai/b", "timeout": 2}},
            ],
            "router_settings": {
                "default_litellm_params": {"timeout": 7, "temperature": 0.3},
                "model_group_alias": {"gpt-4": "g", "hidden": {"model": "g", "hidden": true}},
            },
        }))
        .unwrap();
        let g = &t.groups["g"];
        assert_eq!(g.deployments[0].id, "my-id");
        assert!(g.deployments[1].id.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(g.deployments[0].timeout, Some(Duration::from_secs(7)));
        assert_eq!(g.deployments[1].timeout, Some(Duration::from_secs(2)));
        assert_eq!(g.deployments[0].body_defaults["temperature"], json!(0.3));
        assert_eq!(t.resolve("gpt-4").map(|x| x.group.name.as_str()), Some("g"));
        assert_eq!(
            t.resolve("openai/b")
                .and_then(|x| x.only)
                .map(<[String]>::len),
            Some(1)
        );
        assert!(t.aliases["hidden"].1);
        let err = topology(json!({"model_list": [
            {"model_name": "g", "litellm_params": {"model": "openai/a"}, "model_info": {"id": "bad:id"}},
        ]}))
        .unwrap_err();
        assert!(
            err.to_string().contains("model_list[0].model_info.id"),
            "{err}"
        );
        let err = topology(json!({"model_list": [
            {"model_name": "g", "litellm_params": {"model": "openai/a"}},
            {"model_name": "g", "litellm_params": {"model": "openai/a"}},
        ]}))
        .unwrap_err();
        assert!(err.to_string().contains("model_list[1]"), "{err}");
    }
}
