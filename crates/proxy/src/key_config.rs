//! A virtual key's own deployments (`config.model_list` of `/key/generate`): checked and stored with literal
//! upstream `api_key`s encrypted, served by a router of the key's own on each replica.
//!
//! A key's groups must not share a name with the proxy's groups: merging a key's deployments into a shared
//! group would let the group's queue hand other callers' requests to the key's private deployment. The key's
//! router keeps its queue and usage under a key prefix of its own (`<prefix>kd:<token prefix>:`), so no other
//! key's router shares them.

use std::collections::HashMap;

use keys::{KeyId, KeyRecord};
use router::{Backend, Router, RouterConfig, RouterSettings};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::state::AppState;

/// The environment variable whose value encrypts literal upstream keys in a key's `config` (LiteLLM's name).
pub(crate) const SALT_ENV: &str = "LITELLM_SALT_KEY";

/// `config` as the key stores it: checked (each group's name unused by the proxy, the deployments valid) and
/// with every literal `api_key` encrypted with [`SALT_ENV`]; a literal with no salt key set is refused.
pub(crate) async fn prepare(state: &AppState, config: &Value) -> Result<Value, ApiError> {
    let Value::Object(map) = config else {
        return Err(ApiError::bad_request(
            "`config` must be an object",
            Some("config"),
        ));
    };
    if let Some(other) = map.keys().find(|k| *k != "model_list") {
        return Err(ApiError::bad_request(
            format!("`config.{other}` is not supported: a key's config holds a `model_list` only"),
            Some("config"),
        ));
    }
    let Some(Value::Array(entries)) = map.get("model_list") else {
        return Err(ApiError::bad_request(
            "`config.model_list` must be a list of deployments",
            Some("config"),
        ));
    };
    if entries.is_empty() {
        return Err(ApiError::bad_request(
            "`config.model_list` must name at least one deployment",
            Some("config"),
        ));
    }
    let salt = std::env::var(SALT_ENV).ok().filter(|s| !s.is_empty());
    let mut stored = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let path = format!("config.model_list[{i}]");
        let Value::Object(entry) = entry else {
            return Err(ApiError::bad_request(
                format!("`{path}` must be an object"),
                Some("config"),
            ));
        };
        match entry.get("model_name") {
            Some(Value::String(name)) if state.serves(name.trim()) => {
                return Err(ApiError::bad_request(
                    format!(
                        "`{path}.model_name` is `{name}`, a model group of the proxy: a key's deployments need \
                         model names of their own (merging them into the proxy's groups is not supported)"
                    ),
                    Some("config"),
                ))
            }
            Some(Value::String(name)) if !name.trim().is_empty() => {}
            _ => {
                return Err(ApiError::bad_request(
                    format!("`{path}.model_name` must be a non-empty string"),
                    Some("config"),
                ))
            }
        }
        let mut entry = entry.clone();
        if let Some(Value::Object(params)) = entry.get_mut("litellm_params") {
            if let Some(key) = params.get_mut("api_key") {
                match key {
                    Value::String(text) if text.starts_with("os.environ/") => {}
                    Value::String(text) => {
                        let Some(salt) = &salt else {
                            return Err(ApiError::bad_request(
                                format!(
                                    "`{path}.litellm_params.api_key` is a literal secret: set {SALT_ENV} on every \
                                     replica to store it encrypted, or give an os.environ/ reference"
                                ),
                                Some("config"),
                            ));
                        };
                        let sealed = keys::seal(salt, text)
                            .map_err(|e| ApiError::internal(e.to_string()))?;
                        *key = Value::String(sealed);
                    }
                    _ => {
                        return Err(ApiError::bad_request(
                            format!("`{path}.litellm_params.api_key` must be a string"),
                            Some("config"),
                        ))
                    }
                }
            }
        }
        stored.push(Value::Object(entry));
    }
    let mut out = Map::new();
    out.insert("model_list".into(), Value::Array(stored));
    let out = Value::Object(out);
    // The deployments must make a router (provider, URLs, limits): build one in memory and drop it.
    let config = router_config(state, &out)?;
    match Router::new(config, Backend::Memory).await {
        Ok(router) => router.shutdown().await,
        Err(e) => {
            return Err(ApiError::bad_request(
                format!("`config` is not a valid model_list: {e}"),
                Some("config"),
            ))
        }
    }
    Ok(out)
}

/// The model groups of a key's config.
pub(crate) fn groups(key: &KeyRecord) -> Vec<String> {
    let mut out: Vec<String> = key
        .config
        .as_ref()
        .and_then(|c| c.get("model_list"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("model_name").and_then(Value::as_str))
        .map(|n| n.trim().to_owned())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The router config of a stored key config: secrets decrypted, the proxy's timeout and retries.
fn router_config(state: &AppState, stored: &Value) -> Result<RouterConfig, ApiError> {
    let mut value = stored.clone();
    let salt = std::env::var(SALT_ENV).ok().filter(|s| !s.is_empty());
    if let Some(Value::Array(entries)) = value.get_mut("model_list") {
        for entry in entries {
            if let Some(Value::String(key)) = entry.pointer_mut("/litellm_params/api_key") {
                if keys::is_sealed(key) {
                    let Some(salt) = &salt else {
                        return Err(ApiError::internal(format!(
                            "a key's config holds an encrypted api_key but {SALT_ENV} is not set on this replica"
                        )));
                    };
                    *key = keys::open(salt, key).map_err(|e| ApiError::internal(e.to_string()))?;
                }
            }
        }
    }
    let mut config = RouterConfig::from_json(value).map_err(|e| {
        ApiError::bad_request(
            format!("`config` is not a valid model_list: {e}"),
            Some("config"),
        )
    })?;
    let proxy = state.router_settings();
    config.settings = RouterSettings {
        timeout: proxy.timeout,
        num_retries: proxy.num_retries,
        usage_window: proxy.usage_window,
        polling_interval: proxy.polling_interval,
        default_priority: proxy.default_priority,
        ..RouterSettings::default()
    };
    Ok(config)
}

/// The routers of keys with their own deployments, one per key and version of its record.
#[derive(Default)]
pub(crate) struct KeyRouters {
    routers: tokio::sync::Mutex<HashMap<KeyId, (u64, Router)>>,
}

impl KeyRouters {
    /// The router of `key`'s own deployments, built on first use (and again after the key changed).
    pub(crate) async fn get(&self, state: &AppState, key: &KeyRecord) -> Result<Router, ApiError> {
        let Some(id) = key.token.clone() else {
            return Err(ApiError::internal("a key record without its token"));
        };
        let Some(stored) = &key.config else {
            return Err(ApiError::internal("the key has no config"));
        };
        // Held while building: builds are rare (once per key and change on each replica).
        let mut routers = self.routers.lock().await;
        if let Some((version, router)) = routers.get(&id) {
            if *version == key.updated_at_ms {
                return Ok(router.clone());
            }
        }
        let config = router_config(state, stored)?;
        let backend = match state.backend() {
            Backend::Memory => Backend::Memory,
            Backend::Redis(redis) => {
                let mut redis = redis.clone();
                redis.key_prefix = format!("{}kd:{}:", redis.key_prefix, &id.as_str()[..16]);
                Backend::Redis(redis)
            }
        };
        let router = Router::new(config, backend)
            .await
            .map_err(|e| ApiError::internal(format!("cannot build the key's deployments: {e}")))?;
        if let Some((_, old)) = routers.insert(id, (key.updated_at_ms, router.clone())) {
            tokio::spawn(async move { old.shutdown().await });
        }
        Ok(router)
    }

    /// Shuts every key's router down (with the proxy).
    pub(crate) async fn shutdown(&self) {
        let routers: Vec<Router> = self
            .routers
            .lock()
            .await
            .drain()
            .map(|(_, (_, r))| r)
            .collect();
        for router in routers {
            router.shutdown().await;
        }
    }
}
