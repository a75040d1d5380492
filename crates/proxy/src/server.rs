//! `run`: serve the app on a bound listener until the shutdown signal, then drain within the grace period.

use std::future::{Future, IntoFuture};
use std::io;
use std::sync::Arc;

use router::RouterError;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::Config;
use crate::routes::app;
use crate::state::AppState;

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The router refused the config or could not reach its backend.
    #[error("cannot start the router: {0}")]
    Router(#[from] RouterError),
    /// The listener failed.
    #[error("server error: {0}")]
    Io(#[from] io::Error),
}

/// Serves `config` on `listener` until `shutdown` completes.
///
/// Logs `listening on http://ADDR` once the router is ready. On shutdown it stops accepting connections,
/// marks readiness as failing, shuts the router down (cancelling this replica's queued requests), and gives
/// in-flight requests `config.grace_period` to finish before returning.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let addr = listener.local_addr()?;
    log_config(&config);
    let router = config.build_router().await?;
    let state = AppState::new(router.clone(), &config);
    tracing::info!("listening on http://{addr}");

    let draining = Arc::new(Notify::new());
    let signal = {
        let state = state.clone();
        let draining = Arc::clone(&draining);
        async move {
            shutdown.await;
            tracing::info!("shutdown signal: no new connections; cancelling queued requests");
            state.begin_shutdown();
            draining.notify_one();
        }
    };
    let server = axum::serve(listener, app(state))
        .with_graceful_shutdown(signal)
        .into_future();
    tokio::pin!(server);
    let grace = config.grace_period;
    let result = tokio::select! {
        result = &mut server => result.map_err(RunError::from),
        () = draining.notified() => {
            // Queued requests are cancelled (their clients get an answer), the rest finish within the grace period.
            let drain = async {
                router.shutdown().await;
                (&mut server).await
            };
            match tokio::time::timeout(grace, drain).await {
                Ok(result) => result.map_err(RunError::from),
                Err(_) => {
                    tracing::warn!(
                        grace_secs = grace.as_secs_f64(),
                        "grace period over; dropping requests still in flight"
                    );
                    Ok(())
                }
            }
        }
    };
    router.shutdown().await;
    tracing::info!("stopped");
    result
}

/// One line per fact at startup; unimplemented keys in ONE warning.
fn log_config(config: &Config) {
    tracing::info!(backend = %config.backend.describe(), "backend");
    let groups: std::collections::BTreeSet<&str> = config
        .router
        .model_list
        .iter()
        .map(|e| e.model_name.as_str())
        .collect();
    tracing::info!(
        deployments = config.router.model_list.len(),
        groups = %groups.into_iter().collect::<Vec<_>>().join(", "),
        "model groups"
    );
    match &config.master_key {
        Some(_) => tracing::info!("master key set: every API route needs it"),
        None => tracing::warn!(
            "no master key (general_settings.master_key): the API is open to anyone who can reach this port"
        ),
    }
    if !config.unimplemented_keys.is_empty() {
        tracing::warn!(
            keys = %config.unimplemented_keys.join(", "),
            "config keys not implemented by llm-scheduler (ignored)"
        );
    }
    if !config.overridden_keys.is_empty() {
        tracing::info!(
            keys = %config.overridden_keys.join(", "),
            "litellm_settings keys overridden by router_settings"
        );
    }
}
