//! `run`: serve the app on a bound listener until the shutdown signal, then drain within the grace period; the
//! accept loop and its cap on open connections.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use router::{RedisFailureMode, RouterError};
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConnectionSettings};
use crate::connection;
use crate::metrics::ConnectionMetrics;
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
/// Logs `listening on http://ADDR` once the router is ready (with a warning first when the configured Redis
/// does not answer: the replica starts anyway and reports not ready until it does). On shutdown it stops
/// accepting connections, marks readiness as failing, shuts the router down (cancelling this replica's queued
/// requests), and gives in-flight requests `config.grace_period` to finish before returning.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let addr = listener.local_addr()?;
    log_config(&config);
    let router = config.build_router().await?;
    if config.backend.is_redis() {
        if let Err(error) = router.ping_backend().await {
            let meanwhile = match router.redis_failure_mode().0 {
                RedisFailureMode::Open => {
                    "requests are admitted with this replica's share of every limit (redis_failure_mode: open)"
                }
                _ => "requests get 503 with Retry-After",
            };
            tracing::warn!(
                backend = %config.backend.describe(),
                %error,
                "Redis does not answer: starting anyway; until it does, /health/readiness reports not ready and \
                 {meanwhile}"
            );
        }
    }
    let state = AppState::new(router.clone(), &config);
    let checks_stop = CancellationToken::new();
    let checks = config
        .background_health_checks
        .map(|every| tokio::spawn(health_checks(state.clone(), every, checks_stop.clone())));
    let key_state = state.clone();
    let connections = state.metrics().connections().clone();
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
    let server = serve(
        listener,
        app(state),
        config.connections,
        connections,
        signal,
    );
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
    checks_stop.cancel();
    if let Some(task) = checks {
        let _ = task.await;
    }
    // The server may have ended on its own at the signal (no connection open): durable jobs running here
    // still get the grace period; a second shutdown hands back those still running.
    if tokio::time::timeout(grace, router.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs_f64(),
            "grace period over; handing back the jobs still running"
        );
    }
    router.shutdown().await;
    key_state.shutdown_key_routers().await;
    tracing::info!("stopped");
    result
}

/// LiteLLM's `background_health_checks`: every deployment checked at once every `every`, the first time at
/// startup; failures cool deployments down (in the router) and `/health` shows the last results.
async fn health_checks(state: AppState, every: Duration, stop: CancellationToken) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        let checks = tokio::select! {
            checks = state.router().check_health() => checks,
            () = stop.cancelled() => return,
        };
        let unhealthy = checks.iter().filter(|c| !c.healthy).count();
        tracing::debug!(checked = checks.len(), unhealthy, "background health check");
        state.record_health_checks(checks);
    }
}

/// Accepts connections until `shutdown` completes, each served by [`connection::serve`], then waits for the
/// open ones to finish their requests and close. Dropping the future drops every connection.
///
/// At most `settings.max_connections` are open: beyond it the server stops accepting, so new connections wait
/// in the listen backlog (the kernel refuses them once it is full) until one closes.
async fn serve(
    listener: TcpListener,
    app: axum::Router,
    settings: ConnectionSettings,
    metrics: ConnectionMetrics,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let mut slot: Option<OwnedSemaphorePermit> = None;
    let mut warned_full: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        if slot.is_none() {
            slot = Arc::clone(&slots).try_acquire_owned().ok();
            if slot.is_none() && warned_full.is_none_or(|at| at.elapsed() >= FULL_WARNING_EVERY) {
                tracing::warn!(
                    max_connections = settings.max_connections,
                    "connection limit reached (general_settings.max_connections): new connections wait until one closes"
                );
                warned_full = Some(Instant::now());
            }
        }
        tokio::select! {
            () = &mut shutdown => break,
            free = Arc::clone(&slots).acquire_owned(), if slot.is_none() => slot = free.ok(),
            accepted = listener.accept(), if slot.is_some() => match accepted {
                Ok((stream, _peer)) => {
                    let Some(slot) = slot.take() else { continue };
                    connections.spawn(connection::serve(
                        stream,
                        app.clone(),
                        settings,
                        metrics.clone(),
                        stop.clone(),
                        slot,
                    ));
                }
                // The client gave up before we took its connection.
                Err(e) if is_connection_error(&e) => {}
                Err(error) => {
                    // Typically out of file descriptors: wait for some to close instead of spinning.
                    tracing::error!(%error, "cannot accept a connection");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => {}
                        () = &mut shutdown => break,
                    }
                }
            },
            Some(ended) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = ended {
                    if error.is_panic() {
                        tracing::error!(%error, "a connection task panicked");
                    }
                }
            }
        }
    }
    drop(listener);
    stop.cancel();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// How often the "connection limit reached" warning repeats while the server stays at the limit.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The pause after an accept error that is not one connection's (e.g. no file descriptors left).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_secs(1);

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
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
    let c = &config.connections;
    tracing::info!(
        header_read_timeout_s = c.header_read_timeout.as_secs_f64(),
        keepalive_timeout_s = c.keepalive_timeout.as_secs_f64(),
        body_read_timeout_s = c.body_read_timeout.as_secs_f64(),
        max_connections = c.max_connections,
        "client connections"
    );
    match &config.master_key {
        Some(_) => tracing::info!("master key set: every API route needs it or a virtual key (/key/generate)"),
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
