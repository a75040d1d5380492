//! The `llm-scheduler` proxy: an OpenAI-compatible HTTP server in front of the [`router`], configured by LiteLLM's
//! `config.yaml`.
//!
//! Layout:
//! - `config`: loading `config.yaml` ([`Config`]): `os.environ/` references, `litellm_settings` merged into the
//!   router settings, unimplemented keys collected, the backend chosen by the router's
//!   [`router::BackendChoice`] with this config's environment.
//! - `master_key`: the master key ([`MasterKey`]), refused when publicly known, compared in constant time.
//! - `auth`: the request check (the middleware of the protected routes): the master key or a live virtual
//!   key; who the caller is ([`Caller`], [`CallerIdentity`]).
//! - `key_config`: a key's own deployments (`config.model_list`): checked, literal `api_key`s encrypted with
//!   `LITELLM_SALT_KEY`, served by a router of the key's own.
//! - `key_routes`: `/key/generate`, `/key/info`, `/key/update`, `/key/delete`, `/key/list`, and a virtual
//!   key's rules on inference requests (models, priority floor and default, budget, limits, spend).
//! - `request`: reading and validating inference bodies (`priority`, `timeout`, `cache`).
//! - `routes`: [`app`], the axum router and its handlers; response headers.
//! - `messages`: `POST /v1/messages`, Anthropic's Messages API translated to and from a chat completion.
//! - `error`: [`ApiError`], the OpenAI-shaped error every handler answers with.
//! - `metrics`: Prometheus metrics of the edge and the router.
//! - `model_info`: LiteLLM's `/model/info` and `/model_group/info` shapes, without credentials.
//! - `status`: `GET /queue/status`, every group's queue and every deployment's usage from the shared store
//!   (a virtual key sees its own requests).
//! - `ui`: `GET /ui`, the operator's page (HTML, CSS and JS embedded at build time) over `/queue/status`.
//! - `state`: [`AppState`], shared by handlers.
//! - `server`: [`run`], serving until shutdown with a grace period; accepting under `max_connections`.
//! - `connection`: one client connection (HTTP/1.1) with its header, keep-alive and body timeouts
//!   ([`ConnectionSettings`]).
//! - `check`: [`check_config`], the `check-config` subcommand.
//! - `keys_cli`: [`keys_command`], the `keys generate|list|delete` subcommand against a running proxy.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = proxy::Config::load("examples/mock-config.yaml")?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:4000").await?;
//! proxy::run(listener, config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(()) }
//! ```

mod auth;
mod check;
mod config;
mod connection;
mod error;
mod jobs;
mod key_config;
mod key_routes;
mod keys_cli;
mod master_key;
mod messages;
mod metrics;
mod model_info;
mod request;
mod routes;
mod server;
mod state;
mod status;
mod ui;

pub use auth::{Caller, CallerIdentity};
pub use check::{check_config, ConfigReport};
pub use config::{Config, ConfigError, ConnectionSettings};
pub use error::ApiError;
pub use keys_cli::{keys_command, KeysAction, KeysCliError, KeysCommand};
pub use master_key::MasterKey;
pub use routes::{
    app, HEADER_ATTEMPTS, HEADER_CACHE_HIT, HEADER_DEPLOYMENT_ID, HEADER_FALLBACKS,
    HEADER_MODEL_GROUP, HEADER_OVERHEAD_MS, HEADER_QUEUE_WAIT_MS,
};
pub use server::{run, RunError};
pub use state::AppState;
