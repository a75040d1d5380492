//! A scriptable OpenAI-compatible upstream on a loopback port, recording every request it receives.
//!
//! Serves `POST /v1/chat/completions` (JSON or server-sent events), `POST /v1/completions`,
//! `POST /v1/embeddings` and `GET /v1/models`, the same paths without `/v1`, and the Azure OpenAI form
//! `POST /openai/deployments/{deployment}/{chat/completions,completions,embeddings}?api-version=...`, which
//! requires an `api-key` header. Answers are deterministic: the reply text is split into words (one completion
//! token and one stream chunk per word) and `prompt_tokens` is a quarter of the prompt's characters, rounded up,
//! at least 1. Latency, errors, hangs and broken streams are scripted with [`Behavior`] for inference requests
//! (an Azure request without `api-key` is refused before any behaviour is used; `models` always answers at
//! once). HTTP/1.1 only.
//!
//! Anthropic mode: `POST /v1/messages` speaks Anthropic's Messages API (JSON and its named server-sent events,
//! tool use, Anthropic's error bodies; a scripted [`Behavior::service_unavailable`] is Anthropic's 529
//! `overloaded_error`); it requires `x-api-key` and `anthropic-version`. See the `anthropic` module for its
//! deterministic rules.

mod anthropic;
mod behavior;
mod openai;
mod recorder;
mod routes;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

pub use self::behavior::{Behavior, Outcome};
pub use self::recorder::RecordedRequest;

use self::openai::Endpoint;
use self::recorder::{InFlight, Recorder};

/// The reply text of a server that was not given one.
pub const DEFAULT_REPLY: &str = "Hello from the mock upstream";

/// How to start a [`MockUpstream`].
#[derive(Clone, Debug)]
pub struct MockUpstreamConfig {
    /// Interface to bind; default `127.0.0.1`.
    pub host: String,
    /// Port to bind; default 0 (a free port).
    pub port: u16,
    /// Reply text of successful completions; default [`DEFAULT_REPLY`].
    pub reply: String,
    /// Behaviour when no one-shot behaviour is queued; default [`Behavior::ok`].
    pub behavior: Behavior,
    /// Whether requests are recorded; default true. Off for benchmarks (arrivals are still counted).
    pub record: bool,
}

impl Default for MockUpstreamConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 0,
            reply: DEFAULT_REPLY.to_owned(),
            behavior: Behavior::default(),
            record: true,
        }
    }
}

/// A running mock OpenAI-compatible upstream. Dropping it stops the server and breaks open connections.
///
/// ```no_run
/// # async fn example() -> anyhow::Result<()> {
/// use std::time::Duration;
/// use testkit::{Behavior, MockUpstream};
///
/// let upstream = MockUpstream::start().await?;
/// upstream.push_behavior(Behavior::rate_limited(1)); // the next request gets a 429
/// upstream.set_behavior(Behavior::ok().with_latency(Duration::from_millis(20))); // later ones are slow
/// // ... point a client at upstream.base_url() ...
/// assert!(upstream.wait_for_requests(2, Duration::from_secs(5)).await);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl MockUpstream {
    /// Starts a server with the default configuration on a free port of 127.0.0.1.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(MockUpstreamConfig::default()).await
    }

    /// Starts a server with `config`.
    pub async fn start_with(config: MockUpstreamConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("binding mock upstream to {}:{}", config.host, config.port))?;
        let addr = listener
            .local_addr()
            .context("reading the mock upstream address")?;
        let shared = Arc::new(Shared::new(&config));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept(listener, routes::router(shared.clone()), stopped));
        Ok(Self {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://ADDR`, the root for Azure-style and unversioned paths.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR/v1`, the OpenAI `base_url`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// Sets the behaviour used whenever no one-shot behaviour is queued.
    pub fn set_behavior(&self, behavior: Behavior) {
        self.shared.scripts().default = Arc::new(behavior);
    }

    /// Queues a behaviour for exactly one future inference request; queued behaviours are used in arrival order
    /// before the default applies again.
    pub fn push_behavior(&self, behavior: Behavior) {
        self.shared.scripts().queue.push_back(behavior);
    }

    /// Number of queued one-shot behaviours not used yet.
    pub fn queued_behaviors(&self) -> usize {
        self.shared.scripts().queue.len()
    }

    /// Sets the reply text of successful completions.
    pub fn set_reply(&self, reply: impl Into<String>) {
        self.shared.scripts().reply = Arc::from(reply.into());
    }

    /// Turns request recording on or off (arrivals are counted either way).
    pub fn set_recording(&self, record: bool) {
        self.shared.recorder.set_enabled(record);
    }

    /// The recorded requests, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.recorder.requests()
    }

    /// Number of requests received since start or the last [`clear`](Self::clear), recorded or not.
    pub fn request_count(&self) -> usize {
        self.shared.recorder.count()
    }

    /// Forgets the recorded requests and resets [`request_count`](Self::request_count).
    pub fn clear(&self) {
        self.shared.recorder.clear();
    }

    /// Waits until at least `n` requests have arrived; false if `timeout` passed first.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> bool {
        self.shared.recorder.wait_for(n, timeout).await
    }

    /// Requests between arrival and the end (or drop) of their response body.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.current()
    }

    /// The largest [`in_flight`](Self::in_flight) seen since start or the last [`reset_peak`](Self::reset_peak).
    pub fn peak_in_flight(&self) -> usize {
        self.shared.in_flight.peak()
    }

    /// Restarts peak tracking from the current in-flight count.
    pub fn reset_peak(&self) {
        self.shared.in_flight.reset_peak();
    }

    /// Waits until exactly `n` requests are in flight; false if `timeout` passed first.
    pub async fn wait_for_in_flight(&self, n: usize, timeout: Duration) -> bool {
        self.shared.in_flight.wait_for(n, timeout).await
    }

    /// Stops accepting, breaks every open connection (hanging requests included) and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// State shared by the handle and the request handlers.
#[derive(Debug)]
struct Shared {
    scripts: Mutex<Scripts>,
    recorder: Recorder,
    in_flight: Arc<InFlight>,
    next_id: AtomicU64,
}

/// What the next requests answer.
#[derive(Debug)]
struct Scripts {
    default: Arc<Behavior>,
    queue: VecDeque<Behavior>,
    reply: Arc<str>,
}

impl Shared {
    fn new(config: &MockUpstreamConfig) -> Self {
        Self {
            scripts: Mutex::new(Scripts {
                default: Arc::new(config.behavior.clone()),
                queue: VecDeque::new(),
                reply: Arc::from(config.reply.as_str()),
            }),
            recorder: Recorder::new(config.record),
            in_flight: Arc::default(),
            next_id: AtomicU64::new(1),
        }
    }

    fn scripts(&self) -> MutexGuard<'_, Scripts> {
        // Every update is a single assignment or push, so a poisoned lock still holds consistent data.
        self.scripts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the behaviour for the next inference request and the server's reply text.
    fn next_behavior(&self) -> (Arc<Behavior>, Arc<str>) {
        let mut scripts = self.scripts();
        let behavior = match scripts.queue.pop_front() {
            Some(behavior) => Arc::new(behavior),
            None => scripts.default.clone(),
        };
        (behavior, scripts.reply.clone())
    }

    /// A fresh response id in OpenAI's style.
    fn next_id(&self, endpoint: Endpoint) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        match endpoint {
            Endpoint::Chat => format!("chatcmpl-mock{n}"),
            Endpoint::Completions | Endpoint::Embeddings => format!("cmpl-mock{n}"),
        }
    }
}

/// Accepts connections until `stopped` fires (or its sender is dropped), then drops every connection task.
async fn accept(listener: TcpListener, app: Router, mut stopped: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Stream chunks must leave as soon as they are written.
                    let _ = stream.set_nodelay(true);
                    let service = TowerToHyperService::new(app.clone());
                    connections.spawn(async move {
                        let served = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                        if let Err(error) = served {
                            tracing::debug!(%error, "mock upstream connection ended with an error");
                        }
                    });
                }
                Err(error) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(%error, "mock upstream failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    // Dropping the set aborts every connection, so requests that hang do not keep the server alive.
    drop(connections);
}
