//! LiteLLM's `config.yaml` as the proxy loads it: `os.environ/` references, `litellm_settings` merged into the
//! router settings, unimplemented keys collected for one warning, type errors naming their key path.

mod connections;
mod environ;
mod error;
mod keypath;
mod merge;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use router::{BackendChoice, ModelListEntry, Router, RouterConfig, RouterError, RouterSettings};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

pub use self::connections::ConnectionSettings;
pub use self::error::ConfigError;
use crate::master_key::MasterKey;
use environ::Environment;
use keypath::KeyPath;
use merge::Moves;

/// Default limit of a request body (`general_settings.max_request_size_mb`).
const DEFAULT_MAX_REQUEST_SIZE_MB: f64 = 10.0;

/// Default time in-flight requests get to finish after a shutdown signal.
const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(30);

/// A loaded, validated config: what the router needs plus the proxy's own settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// `model_list` and `router_settings` (with `litellm_settings` merged in).
    pub router: RouterConfig,
    /// Where queues and usage counters live.
    pub backend: BackendChoice,
    /// `general_settings.master_key` (or `LITELLM_MASTER_KEY`); `None` leaves the proxy open.
    pub master_key: Option<MasterKey>,
    /// Largest accepted request body in bytes.
    pub max_request_size: usize,
    /// Whether `/metrics` needs the master key (`litellm_settings.require_auth_for_metrics_endpoint`, as LiteLLM
    /// reads it; also accepted under `general_settings`). Open by default, as in LiteLLM.
    pub metrics_require_auth: bool,
    /// Whether callers may override routing from the body: `mock_response`, `mock_delay`, `fallbacks`,
    /// `num_retries` ([`router::OVERRIDE_FIELDS`]; `general_settings.allow_client_side_overrides`, default
    /// false: refused with a 403 naming the field).
    pub allow_client_side_overrides: bool,
    /// `litellm_settings.set_verbose`: debug logging.
    pub verbose: bool,
    /// `litellm_settings.json_logs`: JSON log lines.
    pub json_logs: bool,
    /// Keys of the file this project does not implement, as key paths; reported once at startup.
    pub unimplemented_keys: Vec<String>,
    /// Keys of `litellm_settings` that `router_settings` overrode.
    pub overridden_keys: Vec<String>,
    /// How long in-flight requests get to finish after a shutdown signal (CLI `--grace-period`).
    pub grace_period: Duration,
    /// Where the `litellm_settings` keys merged into `router_settings` came from, for error messages.
    moves: Moves,
    /// Timeouts and the cap on open connections of the HTTP server.
    pub connections: ConnectionSettings,
    /// `general_settings.background_health_checks` with `health_check_interval` (default 300 s): how often
    /// every deployment gets a health check; `None` when off.
    pub background_health_checks: Option<Duration>,
}

/// The top level of `config.yaml` (`environment_variables` is taken out before, it only feeds `os.environ/`).
#[derive(Deserialize)]
struct ConfigFile {
    #[serde(default)]
    model_list: Option<Vec<ModelListEntry>>,
    #[serde(default)]
    router_settings: Option<RouterSettings>,
    #[serde(default)]
    litellm_settings: Option<LitellmSettings>,
    #[serde(default)]
    general_settings: Option<GeneralSettings>,
}

/// The `litellm_settings` keys the proxy itself uses (the router's are merged into `router_settings` first).
#[derive(Deserialize, Default)]
struct LitellmSettings {
    #[serde(default)]
    set_verbose: Option<bool>,
    #[serde(default)]
    json_logs: Option<bool>,
    #[serde(default)]
    require_auth_for_metrics_endpoint: Option<bool>,
}

/// `general_settings` keys the proxy implements.
#[derive(Deserialize, Default)]
struct GeneralSettings {
    #[serde(default)]
    master_key: Option<MasterKey>,
    #[serde(default)]
    allow_weak_master_key: Option<bool>,
    #[serde(default)]
    max_request_size_mb: Option<f64>,
    #[serde(default)]
    require_auth_for_metrics_endpoint: Option<bool>,
    #[serde(default)]
    allow_client_side_overrides: Option<bool>,
    #[serde(default)]
    header_read_timeout: Option<f64>,
    #[serde(default)]
    keepalive_timeout: Option<f64>,
    #[serde(default)]
    body_read_timeout: Option<f64>,
    #[serde(default)]
    max_connections: Option<u64>,
    #[serde(default)]
    background_health_checks: Option<bool>,
    #[serde(default)]
    health_check_interval: Option<f64>,
}

impl Config {
    /// Reads and validates `path`, resolving `os.environ/` from the process environment.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// Parses and validates config text, resolving `os.environ/` from the process environment.
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        parse(text, Environment::process)
    }

    /// The router of this config on its backend. Its errors name the key path as the file spells it.
    pub async fn build_router(&self) -> Result<Router, RouterError> {
        Router::new(self.router.clone(), self.backend.backend.clone())
            .await
            .map_err(|e| self.in_file_terms(e))
    }

    /// `err` with its key path as the file spells it: the router validates the merged `router_settings`, and
    /// a key the user wrote under `litellm_settings` (`fallbacks`, `cache_params`, ...) is named there.
    pub fn in_file_terms(&self, err: RouterError) -> RouterError {
        match err {
            RouterError::InvalidConfig { path, message } => RouterError::InvalidConfig {
                path: self.moves.to_original_text(&path),
                message,
            },
            other => other,
        }
    }
}

fn parse(
    text: &str,
    environment: impl FnOnce(BTreeMap<String, String>) -> Environment,
) -> Result<Config, ConfigError> {
    let mut doc: Value =
        serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
    doc.apply_merge()
        .map_err(|e| ConfigError::Yaml(e.to_string()))?;
    let root = match &mut doc {
        Value::Mapping(map) => map,
        Value::Null => return parse_mapping(serde_yaml::Mapping::new(), environment),
        _ => {
            return Err(ConfigError::invalid(
                KeyPath::root(),
                "expected a mapping with model_list, router_settings, litellm_settings, general_settings",
            ))
        }
    };
    let root = std::mem::take(root);
    parse_mapping(root, environment)
}

fn parse_mapping(
    mut root: serde_yaml::Mapping,
    environment: impl FnOnce(BTreeMap<String, String>) -> Environment,
) -> Result<Config, ConfigError> {
    let overrides = match root.remove("environment_variables") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Mapping(vars)) => vars
            .into_iter()
            .map(|(k, v)| {
                let key = environ::key_text(&k);
                match v {
                    Value::String(s) => Ok((key, s)),
                    Value::Number(n) => Ok((key, n.to_string())),
                    Value::Bool(b) => Ok((key, b.to_string())),
                    _ => Err(ConfigError::invalid(
                        KeyPath::root()
                            .key("environment_variables")
                            .key(key.as_str()),
                        "expected a string",
                    )),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ConfigError::invalid(
                "environment_variables",
                "expected a mapping of variable names to values",
            ))
        }
    };
    let env = environment(overrides);

    let mut doc = Value::Mapping(root);
    let mut env_refs = Vec::new();
    environ::resolve(&mut doc, &KeyPath::root(), &env, &mut env_refs)?;

    let moves = merge::litellm_into_router_settings(&mut doc)?;
    let env_refs: Vec<KeyPath> = env_refs.iter().map(|p| moves.to_merged(p)).collect();

    let (file, ignored): (ConfigFile, Vec<KeyPath>) = deserialize_tracked(doc, &env_refs)
        .map_err(|(path, message)| ConfigError::invalid(moves.to_original(&path), message))?;

    let mut unimplemented: Vec<String> = ignored
        .iter()
        .map(|p| moves.to_original(p).to_string())
        .collect();

    let model_list = file.model_list.unwrap_or_default();
    let settings = file.router_settings.unwrap_or_default();
    unimplemented.extend(
        router_extras(&model_list, &settings)
            .iter()
            .map(|p| moves.to_original(p).to_string()),
    );
    unimplemented.sort();
    unimplemented.dedup();

    let litellm = file.litellm_settings.unwrap_or_default();
    let general = file.general_settings.unwrap_or_default();

    let (master_key, key_source) = match general.master_key {
        Some(key) => (Some(key), "general_settings.master_key"),
        None => (
            env.get("LITELLM_MASTER_KEY")
                .filter(|k| !k.trim().is_empty())
                .map(MasterKey::new),
            "LITELLM_MASTER_KEY",
        ),
    };
    if let Some(key) = &master_key {
        if key.is_empty() {
            return Err(ConfigError::invalid(
                key_source,
                "the master key is empty; remove it to run without authentication",
            ));
        }
        if key.is_publicly_known() && !general.allow_weak_master_key.unwrap_or(false) {
            return Err(ConfigError::invalid(
                key_source,
                "this master key is publicly known (it appears in documentation and examples); choose a random \
                 key, or set general_settings.allow_weak_master_key: true for a throwaway local setup",
            ));
        }
    }

    let size_mb = general
        .max_request_size_mb
        .unwrap_or(DEFAULT_MAX_REQUEST_SIZE_MB);
    if !(size_mb.is_finite() && size_mb > 0.0 && size_mb <= 4096.0) {
        return Err(ConfigError::invalid(
            "general_settings.max_request_size_mb",
            format!("expected a number of MiB in (0, 4096], got {size_mb}"),
        ));
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let max_request_size = (size_mb * 1024.0 * 1024.0) as usize;

    let connections = connections::ConnectionKeys {
        header_read_timeout: general.header_read_timeout,
        keepalive_timeout: general.keepalive_timeout,
        body_read_timeout: general.body_read_timeout,
        max_connections: general.max_connections,
    }
    .validate()?;

    let background_health_checks = match general.background_health_checks {
        Some(true) => {
            let secs = general.health_check_interval.unwrap_or(300.0);
            if !(secs.is_finite() && (0.1..=86_400.0).contains(&secs)) {
                return Err(ConfigError::invalid(
                    "general_settings.health_check_interval",
                    format!("expected seconds in [0.1, 86400], got {secs}"),
                ));
            }
            Some(Duration::from_secs_f64(secs))
        }
        _ => None,
    };

    let backend =
        BackendChoice::from_settings(&settings, |name| env.get(name)).map_err(|e| match e {
            RouterError::InvalidConfig { path, message } => ConfigError::invalid(path, message),
            other => ConfigError::invalid("router_settings", other.to_string()),
        })?;

    Ok(Config {
        router: RouterConfig {
            model_list,
            settings,
        },
        backend,
        master_key,
        max_request_size,
        // LiteLLM reads it from `litellm_settings`; `general_settings` is accepted too (litellm_settings wins).
        metrics_require_auth: litellm
            .require_auth_for_metrics_endpoint
            .or(general.require_auth_for_metrics_endpoint)
            .unwrap_or(false),
        allow_client_side_overrides: general.allow_client_side_overrides.unwrap_or(false),
        verbose: litellm.set_verbose.unwrap_or(false),
        json_logs: litellm.json_logs.unwrap_or(false),
        unimplemented_keys: unimplemented,
        overridden_keys: moves.overridden().iter().map(ToString::to_string).collect(),
        grace_period: DEFAULT_GRACE_PERIOD,
        moves,
        connections,
        background_health_checks,
    })
}

/// Deserializes `value`, collecting keys nobody read and naming the key path of the first type error.
///
/// A value that came from an environment variable is text; when the target wants a number or a boolean there, the
/// text is read as a YAML scalar (`"6379"` becomes 6379) and the document is tried again.
fn deserialize_tracked<T: DeserializeOwned>(
    mut value: Value,
    env_refs: &[KeyPath],
) -> Result<(T, Vec<KeyPath>), (KeyPath, String)> {
    let mut coerced = HashSet::new();
    loop {
        let mut ignored = Vec::new();
        let result = {
            let mut on_ignored = |path: serde_ignored::Path<'_>| {
                ignored.push(KeyPath::from_ignored(&path));
            };
            let de = serde_ignored::Deserializer::new(value.clone(), &mut on_ignored);
            serde_path_to_error::deserialize::<_, T>(de)
        };
        match result {
            Ok(parsed) => return Ok((parsed, ignored)),
            Err(err) => {
                let path = KeyPath::from_serde(err.path());
                if env_refs.contains(&path)
                    && coerced.insert(path.clone())
                    && coerce_scalar(&mut value, &path)
                {
                    continue;
                }
                return Err((path, err.into_inner().to_string()));
            }
        }
    }
}

/// Re-reads the string at `path` as a YAML scalar; true when that changed its type.
fn coerce_scalar(value: &mut Value, path: &KeyPath) -> bool {
    let mut node = value;
    for segment in path.segments() {
        node = match (segment, node) {
            (keypath::Segment::Key(key), Value::Mapping(map)) => match map.get_mut(key.as_str()) {
                Some(next) => next,
                None => return false,
            },
            (keypath::Segment::Index(i), Value::Sequence(items)) => match items.get_mut(*i) {
                Some(next) => next,
                None => return false,
            },
            _ => return false,
        };
    }
    let Value::String(text) = node else {
        return false;
    };
    match serde_yaml::from_str::<Value>(text) {
        Ok(scalar @ (Value::Bool(_) | Value::Number(_))) => {
            *node = scalar;
            true
        }
        _ => false,
    }
}

/// Keys the router's config types kept in their `extra` maps that nothing implements.
fn router_extras(model_list: &[ModelListEntry], settings: &RouterSettings) -> Vec<KeyPath> {
    let mut out = Vec::new();
    let list = KeyPath::root().key("model_list");
    for (i, entry) in model_list.iter().enumerate() {
        let at = list.index(i);
        out.extend(entry.extra.keys().map(|k| at.key(k.as_str())));
        let params = at.key("litellm_params");
        out.extend(
            entry
                .litellm_params
                .extra
                .keys()
                .filter(|k| !router::implements_litellm_param(k))
                .map(|k| params.key(k.as_str())),
        );
    }
    let rs = KeyPath::root().key("router_settings");
    out.extend(settings.extra.keys().map(|k| rs.key(k.as_str())));
    if let Some(args) = &settings.routing_strategy_args {
        let at = rs.key("routing_strategy_args");
        out.extend(args.extra.keys().map(|k| at.key(k.as_str())));
    }
    if let Some(cache) = &settings.cache_kwargs {
        let at = rs.key("cache_kwargs");
        out.extend(cache.extra.keys().map(|k| at.key(k.as_str())));
    }
    out
}

#[cfg(test)]
mod tests;
