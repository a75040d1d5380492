//! `llm-scheduler keys generate|list|delete`: the key management routes of a running proxy from the command
//! line, with the master key.

use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

/// Manage the virtual keys of a running proxy (its /key/* routes, with the master key).
#[derive(Args, Debug)]
pub struct KeysCommand {
    /// The proxy's base URL.
    #[arg(
        long,
        default_value = "http://127.0.0.1:4000",
        env = "LLM_SCHEDULER_URL"
    )]
    pub url: String,
    /// The proxy's master key.
    #[arg(long, env = "LITELLM_MASTER_KEY", hide_env_values = true)]
    pub master_key: String,
    /// What to do.
    #[command(subcommand)]
    pub action: KeysAction,
}

/// A key management call.
#[derive(Subcommand, Debug)]
pub enum KeysAction {
    /// Generate a key and print the answer (the only time its secret is shown).
    Generate {
        /// `key_alias`.
        #[arg(long)]
        alias: Option<String>,
        /// `duration` (`30s`, `30m`, `30h`, `30d`).
        #[arg(long)]
        duration: Option<String>,
        /// `models`, comma separated.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// `rpm_limit`.
        #[arg(long)]
        rpm_limit: Option<u64>,
        /// `tpm_limit`.
        #[arg(long)]
        tpm_limit: Option<u64>,
        /// `max_parallel_requests`.
        #[arg(long)]
        max_parallel_requests: Option<u64>,
        /// `max_budget` (USD).
        #[arg(long)]
        max_budget: Option<f64>,
        /// `priority_floor`.
        #[arg(long)]
        priority_floor: Option<u32>,
        /// `default_priority`.
        #[arg(long)]
        default_priority: Option<u32>,
        /// More fields as a JSON object (e.g. a `config`), merged under the ones above.
        #[arg(long)]
        json: Option<String>,
    },
    /// List the keys' tokens.
    List,
    /// Delete keys (their secrets or tokens).
    Delete {
        /// Keys or tokens.
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

/// Why a `keys` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysCliError {
    /// `--json` is not a JSON object.
    #[error("--json must be a JSON object: {0}")]
    Json(String),
    /// The proxy could not be reached.
    #[error("cannot reach the proxy: {0}")]
    Http(#[from] reqwest::Error),
    /// The proxy refused.
    #[error("the proxy answered {status}: {body}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The error body.
        body: String,
    },
}

/// Runs `command` against the proxy; returns the answer's JSON text.
pub async fn keys_command(command: &KeysCommand) -> Result<String, KeysCliError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = command.url.trim_end_matches('/');
    let request = match &command.action {
        KeysAction::Generate {
            alias,
            duration,
            models,
            rpm_limit,
            tpm_limit,
            max_parallel_requests,
            max_budget,
            priority_floor,
            default_priority,
            json,
        } => {
            let mut body = match json {
                Some(text) => match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(map)) => map,
                    Ok(_) => return Err(KeysCliError::Json("not an object".into())),
                    Err(e) => return Err(KeysCliError::Json(e.to_string())),
                },
                None => Map::new(),
            };
            let mut put = |name: &str, value: Value| {
                if !value.is_null() {
                    body.insert(name.to_owned(), value);
                }
            };
            put("key_alias", json!(alias));
            put("duration", json!(duration));
            if !models.is_empty() {
                put("models", json!(models));
            }
            put("rpm_limit", json!(rpm_limit));
            put("tpm_limit", json!(tpm_limit));
            put("max_parallel_requests", json!(max_parallel_requests));
            put("max_budget", json!(max_budget));
            put("priority_floor", json!(priority_floor));
            put("default_priority", json!(default_priority));
            http.post(format!("{base}/key/generate")).json(&body)
        }
        KeysAction::List => http.get(format!("{base}/key/list")),
        KeysAction::Delete { keys } => http
            .post(format!("{base}/key/delete"))
            .json(&json!({ "keys": keys })),
    };
    let response = request.bearer_auth(&command.master_key).send().await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    if status == 200 {
        Ok(body)
    } else {
        Err(KeysCliError::Refused { status, body })
    }
}
