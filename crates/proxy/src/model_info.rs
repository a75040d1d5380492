//! LiteLLM's `/model/info` and `/model_group/info`: the deployments and model groups in LiteLLM's shapes,
//! without credentials.

use std::collections::BTreeMap;

use router::{openai_params, DeploymentInfo, Endpoint};
use serde_json::{json, Map, Value};

/// `GET /model/info`: one entry per deployment, `{"model_name", "litellm_params", "model_info"}`. The
/// parameters carry no `api_key` and no headers (LiteLLM removes credentials the same way).
pub(crate) fn model_info(deployments: &[DeploymentInfo]) -> Value {
    let data: Vec<Value> = deployments.iter().map(deployment_entry).collect();
    json!({ "data": data })
}

fn deployment_entry(d: &DeploymentInfo) -> Value {
    let mut params = Map::new();
    params.insert("model".into(), json!(d.model));
    let mut put = |key: &str, value: Value| {
        if !value.is_null() {
            params.insert(key.to_owned(), value);
        }
    };
    if !d.api_base.is_empty() {
        put("api_base", json!(d.api_base));
    }
    put("api_version", json!(d.api_version));
    put("rpm", json!(d.rpm));
    put("tpm", json!(d.tpm));
    put("max_parallel_requests", json!(d.max_parallel_requests));
    put("order", json!(d.order));
    put("weight", json!(d.weight));
    put("timeout", json!(d.timeout.map(|t| t.as_secs_f64())));
    put(
        "stream_timeout",
        json!(d.stream_timeout.map(|t| t.as_secs_f64())),
    );
    if !d.tags.is_empty() {
        put("tags", json!(d.tags));
    }

    let mut info = d.model_info.clone();
    info.insert("id".into(), json!(d.id));
    info.insert("db_model".into(), json!(false));
    info.insert(
        "key".into(),
        json!(d.model.split_once('/').map_or(d.model.as_str(), |(_, m)| m)),
    );
    info.insert("litellm_provider".into(), json!(d.provider));
    info.insert("max_input_tokens".into(), json!(d.max_input_tokens));
    info.entry("mode").or_insert_with(|| json!("chat"));
    info.insert(
        "supported_openai_params".into(),
        json!(openai_params(mode_endpoint(&info))),
    );
    json!({ "model_name": d.group, "litellm_params": params, "model_info": info })
}

/// The endpoint of a deployment's `model_info.mode` (`chat`, `completion`, `embedding`).
fn mode_endpoint(info: &Map<String, Value>) -> Endpoint {
    match info.get("mode").and_then(Value::as_str) {
        Some("embedding") => Endpoint::Embeddings,
        Some("completion") => Endpoint::Completions,
        _ => Endpoint::ChatCompletions,
    }
}

/// `GET /model_group/info`: one entry per model group (only `only` when given), LiteLLM's `ModelGroupInfo`:
/// providers, the largest context, the groups' summed `rpm`/`tpm` (null when a deployment has none), costs
/// and capabilities from `model_info`.
pub(crate) fn model_group_info(deployments: &[DeploymentInfo], only: Option<&str>) -> Value {
    let mut groups: BTreeMap<&str, Vec<&DeploymentInfo>> = BTreeMap::new();
    for d in deployments {
        if only.is_none_or(|g| g == d.group) {
            groups.entry(d.group.as_str()).or_default().push(d);
        }
    }
    let data: Vec<Value> = groups
        .into_iter()
        .map(|(group, ds)| group_entry(group, &ds))
        .collect();
    json!({ "data": data })
}

fn group_entry(group: &str, ds: &[&DeploymentInfo]) -> Value {
    let mut providers: Vec<&str> = ds.iter().map(|d| d.provider.as_str()).collect();
    providers.sort_unstable();
    providers.dedup();
    let sum = |f: fn(&DeploymentInfo) -> Option<u64>| -> Option<u64> {
        ds.iter().map(|d| f(d)).sum::<Option<u64>>()
    };
    let first = |key: &str| -> Value {
        ds.iter()
            .find_map(|d| d.model_info.get(key).cloned())
            .unwrap_or(Value::Null)
    };
    let flag = |key: &str| -> bool {
        ds.iter()
            .any(|d| d.model_info.get(key).and_then(Value::as_bool) == Some(true))
    };
    let mode = first("mode");
    let endpoint = match mode.as_str() {
        Some("embedding") => Endpoint::Embeddings,
        Some("completion") => Endpoint::Completions,
        _ => Endpoint::ChatCompletions,
    };
    let max_output = ds
        .iter()
        .filter_map(|d| {
            d.model_info
                .get("max_output_tokens")
                .or_else(|| d.model_info.get("max_tokens"))
                .and_then(Value::as_u64)
        })
        .max();
    json!({
        "model_group": group,
        "providers": providers,
        "max_input_tokens": ds.iter().filter_map(|d| d.max_input_tokens).max(),
        "max_output_tokens": max_output,
        "input_cost_per_token": first("input_cost_per_token"),
        "output_cost_per_token": first("output_cost_per_token"),
        "mode": if mode.is_null() { json!("chat") } else { mode },
        "tpm": sum(|d| d.tpm),
        "rpm": sum(|d| d.rpm),
        "supports_parallel_function_calling": flag("supports_parallel_function_calling"),
        "supports_vision": flag("supports_vision"),
        "supports_function_calling": flag("supports_function_calling"),
        "supported_openai_params": openai_params(endpoint),
        "configurable_clientside_auth_params": Value::Null,
        "is_public_model_group": false,
    })
}
